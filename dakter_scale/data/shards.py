"""The shard codec: bytes <-> arrays for one pair's members, and a tar written and read as a stream.

Only data/shardset.py uses this module; it knows nothing of member names, keys, markers or storage
(those are the shard set's). Here:
  * soft-label quantisation: K probability maps -> uint8 levels summing to exactly 255 per pixel
    (largest-remainder rounding), so decoded probabilities sum to 1 and err by less than 1/255;
  * PNG: 8-bit grayscale, one IDAT, filter None, written here and read back with one zlib call;
  * tars: written deterministically (members sorted, mtime 0) and read front to back by a lean
    reader (``read_tar``) that needs no seeking, so both stream to and from any fsspec URL.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
import zlib
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np
import torch
from PIL import Image

from dakter_scale.errors import UserError

QUANT_LEVELS = 255


class ShardError(UserError, ValueError):
    """A shard or sample that does not follow the schema; the message names it."""


# -- soft-label quantisation ------------------------------------------------------------------


def quantise(q: torch.Tensor | np.ndarray) -> np.ndarray:
    """(K, H, W) probabilities -> uint8 levels summing to exactly 255 per pixel (largest remainder)."""
    q = torch.as_tensor(q, dtype=torch.float64)
    q = q.clamp_min(0)
    q = q / q.sum(dim=0, keepdim=True).clamp_min(1e-12)
    scaled = q * QUANT_LEVELS
    base = scaled.floor()
    remainder = scaled - base
    need = (QUANT_LEVELS - base.sum(dim=0)).round().long()  # in [0, K-1]
    rank = remainder.argsort(dim=0, descending=True).argsort(dim=0)
    levels = base + (rank < need.unsqueeze(0)).to(base.dtype)
    return levels.to(torch.uint8).numpy()


def dequantise(levels: np.ndarray) -> np.ndarray:
    """uint8 levels (K, H, W) -> float32 probabilities."""
    return levels.astype(np.float32) / QUANT_LEVELS


# -- PNG -----------------------------------------------------------------------------------------


# PNGs are written here rather than by Pillow: 8-bit grayscale, one IDAT, every row with filter
# type 0 (None). They are ordinary PNGs (Pillow, webdataset's decoder, any viewer read them), and
# the reader below decodes them with one zlib call: 3-4x faster than Pillow at 64 px, which is
# what lets the streaming loader outrun a folder of PNG/NPY files. Sizes are within 8 % of
# Pillow's adaptive filtering (speckle barely compresses; soft labels are long runs).

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W) -> PNG bytes; deterministic (same array, same bytes)."""
    h, w = array.shape
    rows = np.zeros((h, w + 1), dtype=np.uint8)  # column 0: the row's filter type, 0 = None
    rows[:, 1:] = array
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, grayscale, deflate, no interlace
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _chunk(b"IEND", b"")


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 array: a fast path for the 8-bit grayscale, filter-None PNGs written by
    encode_png, Pillow for anything else."""
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR":
        w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
        if depth == 8 and colour == 0 and interlace == 0:
            idat, pos = [], 8
            while pos + 8 <= len(data):
                (n,) = struct.unpack(">I", data[pos : pos + 4])
                tag = data[pos + 4 : pos + 8]
                if tag == b"IDAT":
                    idat.append(data[pos + 8 : pos + 8 + n])
                elif tag == b"IEND":
                    break
                pos += 12 + n
            raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
            if raw.size == h * (w + 1):
                rows = raw.reshape(h, w + 1)
                if not rows[:, 0].any():
                    return rows[:, 1:]
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im, dtype=np.uint8)


# -- tars: write ------------------------------------------------------------------------------


class _HashingWriter:
    """A write-only file wrapper that counts and hashes what passes through."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        self.f.write(data)
        return len(data)

    def flush(self) -> None:
        pass


def write_tar(f: BinaryIO, samples: Iterable[tuple[str, dict[str, bytes]]]) -> tuple[int, str]:
    """Stream samples into a tar (no seeking, so it can go straight to object storage).

    Members are written in key order as given with extensions sorted, mtime 0, uid/gid 0, mode 0644:
    the same samples give the same bytes. Returns (bytes written, sha256 hex).
    """
    writer = _HashingWriter(f)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            for ext in sorted(members):
                data = members[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return writer.bytes, writer.sha256.hexdigest()


# -- tars: read -------------------------------------------------------------------------------

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)


def _tar_number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 (sizes past 8 GiB)
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def read_tar(stream: Any, url: str) -> Iterator[dict]:
    """The samples of a WebDataset tar read front to back: {"__key__", "__url__", ext: bytes}.

    The same grouping as webdataset (key = file name up to its first dot, consecutive members
    form a sample) in a lean reader rather than webdataset's tar expander, which is built on
    Python's tarfile: that costs about 7x more per sample here (a large share of the loader's
    time). USTAR, GNU long names and PAX paths are read; other member types (directories, links)
    are skipped. A torn or corrupt tar raises ShardError: a header whose checksum does not add up,
    a member cut short, or an end without the end-of-archive block (a cut exactly between members,
    which tarfile, and so webdataset, reads as a valid shorter archive).
    """
    current: dict | None = None
    long_name: str | None = None
    error: str | None = None
    while True:
        header = stream.read(_BLOCK)
        if len(header) < _BLOCK:
            error = "tar ends without its end-of-archive block" if not header else "tar ends inside a member header"
            break
        if header == _ZERO_BLOCK:
            break
        # The checksum counts the 8 checksum bytes as spaces (8 * 32 = 256).
        if _tar_number(header[148:156]) != int(np.frombuffer(header, dtype=np.uint8).sum(dtype=np.int64)) - sum(header[148:156]) + 256:
            error = "tar member header fails its checksum (corrupt data)"
            break
        size = _tar_number(header[124:136])
        data = stream.read(size)
        pad = -size % _BLOCK
        if len(data) < size or (pad and len(stream.read(pad)) < pad):
            error = "tar ends inside a member"
            break
        kind = header[156:157]
        if kind == b"L":  # GNU long name of the next member
            long_name = data.split(b"\0", 1)[0].decode()
            continue
        if kind == b"x":  # PAX extended header: only the path matters here
            for record in data.decode().splitlines():
                key, _, value = record.partition(" ")[2].partition("=")
                if key == "path":
                    long_name = value
            continue
        if kind not in (b"0", b"\0", b"7"):
            continue
        name = long_name or header[:100].split(b"\0", 1)[0].decode()
        if not long_name and header[257:262] == b"ustar" and header[345] != 0:
            name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
        long_name = None
        folder, _, base = name.rpartition("/")
        stem, dot, ext = base.partition(".")
        if not dot:
            continue
        key = f"{folder}/{stem}" if folder else stem
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key, "__url__": url}
        ext = ext.lower()
        if ext in current:
            error = f"tar holds {name} twice"
            break
        current[ext] = data
    if current is not None:
        yield current  # whole members before any damage; a sample missing some is the caller's to refuse
    if error:
        raise ShardError(error)
