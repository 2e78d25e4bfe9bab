"""The shard codec: bytes <-> arrays for one pair's members, and a tar written and read as a stream.

Only the shard set package (data/shardset/) uses this module; it knows nothing of member names, keys, markers or storage
(those are the shard set's). Here:
  * soft-label quantisation: K probability maps -> uint8 levels summing to exactly 255 per pixel
    (largest-remainder rounding), so decoded probabilities sum to 1 and err by less than 1/255;
  * PNG: 8-bit grayscale, one IDAT, filter None, written here and read back with one bounded
    zlib call; the reader accepts that form only (the header is checked before anything inflates);
  * tars: written deterministically (members sorted, mtime 0) and read front to back by a lean
    reader (``read_tar``) that needs no seeking, so both stream to and from any fsspec URL; every
    member's size is checked against a cap before it is read.

Everything read is treated as hostile: a malformed input is a ShardError (SampleError when only
one sample is affected), never another exception, and no input makes the reader hold more than
the caps below (a member's cap, and for a PNG the raw size its checked header allows).
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import tarfile
import zlib
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import numpy as np
import torch

from dakter_scale.errors import UserError

QUANT_LEVELS = 255
MAX_MEMBER_BYTES = 256 << 20  # no tar member, and no PNG's raw pixel data, is read past this, whatever the set
MAX_HEADER_BYTES = 64 << 10  # a GNU long name or PAX header


class ShardError(UserError, ValueError):
    """A shard or sample that does not follow the schema; the message names it (the shard's URL,
    the sample's key) and says what is wrong. The one error type of every check on read."""


class SampleError(ShardError):
    """One sample of a shard is bad (a member missing, too large, undecodable, of another size or
    class count, soft-label levels not summing to 255, a malformed JSON record); the shard's other
    samples can still be read."""


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
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
        + _chunk(b"IEND", b"")
    )


def png_shape(data: bytes) -> tuple[int, int]:
    """(height, width) of a PNG member from its header, before anything is inflated.

    A ShardError unless it is the form encode_png writes: an IHDR first, 8-bit grayscale, standard
    compression and filter method, not interlaced, and at most MAX_MEMBER_BYTES of raw pixel data.
    """
    if len(data) < 33 or data[:8] != _PNG_SIGNATURE or data[8:16] != b"\0\0\0\x0dIHDR":
        raise ShardError("not a PNG (no signature and header)")
    w, h, depth, colour, compression, method, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (depth, colour, compression, method, interlace) != (8, 0, 0, 0, 0):
        raise ShardError(
            f"PNG is {depth}-bit colour type {colour}{' interlaced' if interlace else ''}, not the shard format's 8-bit grayscale (colour type 0)"
        )
    if not w or not h or h * (w + 1) > MAX_MEMBER_BYTES:
        raise ShardError(f"PNG of {h}x{w} pixels is empty or larger than any shard member may be")
    return h, w


def decode_png(data: bytes, shape: tuple[int, int] | None = None) -> np.ndarray:
    """PNG bytes -> uint8 (H, W), for the PNGs encode_png writes (8-bit grayscale, filter None).

    The header is checked first (png_shape; with `shape`, its (H, W) must be that), then the pixel
    data is inflated into at most H * (W + 1) + 1 bytes: a zlib bomb stops there. There is no
    fallback to Pillow: a shard's PNGs come from encode_png alone, and anything else is a ShardError.
    """
    h, w = png_shape(data)
    if shape is not None and (h, w) != tuple(shape):
        raise ShardError(f"PNG is {h}x{w}, the set's are {shape[0]}x{shape[1]}")
    idat, pos = [], 8
    while True:
        if pos + 12 > len(data):
            raise ShardError("PNG ends without its IEND chunk")
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, end = data[pos + 4 : pos + 8], pos + 12 + n
        if end > len(data):
            raise ShardError(f"PNG chunk {tag!r} is cut short")
        if tag == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + n])
        elif tag == b"IEND":
            break
        pos = end
    if not idat:
        raise ShardError("PNG holds no pixel data (no IDAT chunk)")
    expected = h * (w + 1)  # a filter-type byte, then the row
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(b"".join(idat), expected + 1)  # bounded: one byte past the image tells a bomb
    except zlib.error as e:
        raise ShardError(f"PNG pixel data do not inflate ({e})") from None
    if len(raw) != expected or not inflate.eof:
        more = len(raw) > expected or (not inflate.eof and inflate.unconsumed_tail)
        raise ShardError(
            f"PNG pixel data inflate to {'more' if more else 'fewer'} than the {expected} bytes its {h}x{w} header allows"
        )
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(h, w + 1)
    if np.count_nonzero(rows[:, 0]):
        raise ShardError("PNG rows use a filter other than None (not written by the shard writer)")
    return rows[:, 1:]


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
_OCTAL = re.compile(rb"[0-7]*")


def _tar_number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 (sizes past 8 GiB)
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    # Octal digits only: int() would also take "-1" (a size of -1 reads the rest of the stream past
    # every member cap), "+7" and "7_7".
    if not _OCTAL.fullmatch(digits):
        raise ShardError(f"tar member header holds {field!r} where a number belongs (corrupt data)")
    return int(digits or b"0", 8)


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ShardError(f"tar {what} is not UTF-8 (corrupt data)") from None


def read_tar(stream: Any, url: str, limits: Mapping[str, int] | None = None) -> Iterator[dict]:
    """The samples of a WebDataset tar read front to back: {"__key__", "__url__", ext: bytes}.

    The same grouping as webdataset (key = file name up to its first dot, consecutive members
    form a sample) in a lean reader rather than webdataset's tar expander, which is built on
    Python's tarfile: that costs about 7x more per sample here (a large share of the loader's
    time). USTAR, GNU long names and PAX paths are read; other member types (directories, links)
    are skipped. `limits[ext]` is the most bytes a member with that extension may hold (limits["*"]:
    any other; default and ceiling MAX_MEMBER_BYTES), checked from its header before its data is read.

    A torn, corrupt or oversized tar raises ShardError: a header whose checksum does not add up, a
    member larger than its cap, a member cut short, or an end without the end-of-archive block (a
    cut exactly between members, which tarfile, and so webdataset, reads as a valid shorter archive).
    """
    current: dict | None = None
    long_name: str | None = None
    error: str | None = None
    try:
        while (member := _next_member(stream, limits, long_name)) is not None:
            kind, name, ext, data = member
            if kind == b"L":  # GNU long name of the next member
                long_name = _text(data.split(b"\0", 1)[0], "long name")
                continue
            if kind == b"x":  # PAX extended header: only the path matters here
                long_name = _pax_path(data, long_name)
                continue
            long_name = None
            key = _sample_key(name) if kind in (b"0", b"\0", b"7") else None  # directories, links: skipped
            if key is None:
                continue
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            if ext in current or ext.startswith("__"):  # "__key__", "__url__": the reader's own keys
                raise ShardError(
                    f"tar holds {name} twice" if ext in current else f"tar member {name} has a reserved extension"
                )
            current[ext] = data
    except ShardError as e:
        error = str(e)
    if current is not None:
        yield current  # whole members before any damage; a sample missing some is the caller's to refuse
    if error:
        raise ShardError(error)


def _next_member(
    stream: Any, limits: Mapping[str, int] | None, long_name: str | None
) -> tuple[bytes, str, str, bytes] | None:
    """The next member of a tar: (type flag, name, extension, data); None at the end-of-archive block.
    A torn or corrupt header, an oversized member or one cut short is a ShardError."""
    header = stream.read(_BLOCK)
    if len(header) < _BLOCK:
        raise ShardError(
            "tar ends without its end-of-archive block" if not header else "tar ends inside a member header"
        )
    if header == _ZERO_BLOCK:
        return None
    # The checksum counts the 8 checksum bytes as spaces (8 * 32 = 256).
    if (
        _tar_number(header[148:156])
        != int(np.add.reduce(np.frombuffer(header, dtype=np.uint8), dtype=np.int64)) - sum(header[148:156]) + 256
    ):
        raise ShardError("tar member header fails its checksum (corrupt data)")
    size, kind = _tar_number(header[124:136]), header[156:157]
    if kind in (b"L", b"x"):
        name, ext, cap = "a long-name header", "", MAX_HEADER_BYTES
    else:
        name = long_name or _text(header[:100].split(b"\0", 1)[0], "member name")
        if not long_name and header[257:262] == b"ustar" and header[345] != 0:
            name = _text(header[345:500].split(b"\0", 1)[0], "member name") + "/" + name
        ext = name.rpartition("/")[2].partition(".")[2].lower()
        cap = (
            min(limits.get(ext) or limits.get("*", MAX_MEMBER_BYTES), MAX_MEMBER_BYTES) if limits else MAX_MEMBER_BYTES
        )
    if size > cap:
        raise ShardError(f"tar member {name} holds {size} bytes, more than the {cap} such a member may hold")
    data = stream.read(size)
    pad = -size % _BLOCK
    if len(data) < size or (pad and len(stream.read(pad)) < pad):
        raise ShardError("tar ends inside a member")
    return kind, name, ext, data


def _pax_path(data: bytes, long_name: str | None) -> str | None:
    """The path a PAX extended header gives the next member, else long_name as it was."""
    for record in _text(data, "PAX header").splitlines():
        key, _, value = record.partition(" ")[2].partition("=")
        if key == "path":
            long_name = value
    return long_name


def _sample_key(name: str) -> str | None:
    """A member's sample key: its name up to the first dot of its base name; None without a dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, _ = base.partition(".")
    if not dot:
        return None
    return f"{folder}/{stem}" if folder else stem
