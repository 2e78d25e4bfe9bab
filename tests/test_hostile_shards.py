"""Hostile shards: a real shard set written by the project's own writer (tests/shardgen.py), then
copies damaged the way an attacker or a broken tool would (issue 15). Every case, under
student.on_bad_shard=warn, is read with a warning and a count (the sample, the rest of the shard,
or the whole shard skipped, as docs/reliability.md states); under raise it stops with one line that
names the shard. The job runs train with warn and exit 2 with one line under raise; the zlib bomb's
peak memory is measured in a subprocess."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dakter_scale.data.shardset import SampleShape, ShardSet
from dakter_scale.data.shardset import codec as shards
from dakter_scale.data.stream import BAD_SHARDS, GeneratedStream, StreamError

from conftest import ROOT, job
from shardgen import TINY_STUDENT, job_env, write_dataset

SIZE, K = 32, 5
COUNTS = [4, 4, 4]  # 12 pairs; the cases damage shard 1 (sample 000001-000001 where it is one sample)
KEY = "000001-000001"


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "shards"
    write_dataset(str(root), COUNTS, size=SIZE)
    return root


# -- building hostile copies -------------------------------------------------------------------------


def members_of(tar: Path) -> list[tuple[str, dict[str, bytes]]]:
    """A shard's samples read with the stock tarfile (independent of the reader under test)."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            key, ext = m.name.split(".", 1)
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = t.extractfile(m).read()
    return samples


def fix_marker(root: Path, shard: int, data: bytes, **changes) -> None:
    """Make the marker agree with the tar's bytes, as a writer that lies consistently would."""
    marker = root / f"shard-{shard:06d}.json"
    old = json.loads(marker.read_text())
    marker.write_text(json.dumps(dict(old, tar_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), **changes)))


def rewrite(root: Path, shard: int, change) -> None:
    """Rewrite a shard's tar with the project's tar writer after change(samples) -> samples; the marker follows."""
    tar = root / f"shard-{shard:06d}.tar"
    buf = io.BytesIO()
    shards.write_tar(buf, change(members_of(tar)))
    tar.write_bytes(buf.getvalue())
    fix_marker(root, shard, buf.getvalue())


def set_member(shard: int, index: int, ext: str, data: bytes | None):
    def change(samples):
        key, members = samples[index]
        members = dict(members)
        if data is None:
            del members[ext]
        else:
            members[ext] = data
        return samples[:index] + [(key, members)] + samples[index + 1 :]

    return change


def record(root: Path, shard: int = 1, index: int = 1) -> dict:
    return json.loads(dict(members_of(root / f"shard-{shard:06d}.tar"))[f"{shard:06d}-{index:06d}"]["json"])


def png(w: int, h: int, idat: bytes, depth: int = 8, colour: int = 0) -> bytes:
    """A PNG with this header and these compressed pixel data, CRCs correct."""

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def zlib_bomb(mib: int) -> bytes:
    """A valid zlib stream that inflates to `mib` MiB of zeros, ~1 KB per MiB: one 1 MiB block
    compressed after a full flush repeats byte for byte; the adler32 of n zeros is (n mod 65521) << 16 | 1."""
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    middle = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush(zlib.Z_FINISH)[:-4]
    return first + middle * (mib - 1) + tail + struct.pack(">I", (((mib << 20) % 65521) << 16) | 1)


def soft_levels(k: int = K, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """Valid levels (K, H, W) summing to 255: all on class 0."""
    levels = np.zeros((k, h, w), dtype=np.uint8)
    levels[0] = 255
    return levels


def pil_png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG") if mode else Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def tar_header_patch(root: Path, shard: int, member: int, field: slice, value: bytes) -> None:
    """Overwrite a field of a member's tar header and recompute its checksum (a well-formed lie)."""
    tar = root / f"shard-{shard:06d}.tar"
    data = bytearray(tar.read_bytes())
    with tarfile.open(tar) as t:
        offset = t.getmembers()[member].offset
    header = bytearray(data[offset : offset + 512])
    header[field] = value.ljust(field.stop - field.start, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[offset : offset + 512] = header
    tar.write_bytes(bytes(data))
    fix_marker(root, shard, bytes(data))


def json_change(**fields):
    def build(root):
        r = record(root)
        for name, value in fields.items():
            if value is _DROP:
                r.pop(name)
            else:
                r[name] = value
        rewrite(root, 1, set_member(1, 1, "json", json.dumps(r).encode()))

    return build


_DROP = object()
BOMB_MIB = 2048  # 2 GiB inflated, ~2 MB compressed: the case


def edit_bytes(path: Path, change) -> None:
    """Change a file's bytes in place, its marker left as it was."""
    path.write_bytes(change(path.read_bytes()))


def _with_marker(change):
    def build(root):
        marker = root / "shard-000001.json"
        marker.write_text(change(json.loads(marker.read_text())))

    return build


def _other_resolution(root: Path) -> None:
    (root / "dataset.json").unlink()
    other = root.parent / "other"
    write_dataset(str(other), [1, 1, 4], size=16)
    for ext in ("tar", "parquet", "json"):
        shutil.copy(other / f"shard-000002.{ext}", root / f"shard-000002.{ext}")


def _filter_type_one(root: Path) -> None:
    rows = np.zeros((SIZE, SIZE + 1), dtype=np.uint8)
    rows[:, 0] = 1  # filter type Sub on every row
    rewrite(root, 1, set_member(1, 1, "image.png", png(SIZE, SIZE, zlib.compress(rows.tobytes()))))


def _levels_not_255(root: Path) -> None:
    levels = soft_levels()
    levels[0, 3, 4] = 254
    rewrite(root, 1, set_member(1, 1, "soft.png", shards.encode_png(levels.reshape(K * SIZE, SIZE))))


def _four_classes(root: Path) -> None:
    r = dict(record(root), num_classes=4, class_fractions=[0.25] * 4)
    change = set_member(1, 1, "soft.png", shards.encode_png(soft_levels(4).reshape(4 * SIZE, SIZE)))
    rewrite(root, 1, lambda s: set_member(1, 1, "json", json.dumps(r).encode())(change(s)))


def _corrupt_idat(root: Path) -> None:
    image = shards.encode_png(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
    bad = bytearray(image)
    bad[60:64] = bytes(4)  # inside the compressed pixel data; the chunk's length and size unchanged
    rewrite(root, 1, set_member(1, 1, "image.png", bytes(bad)))


def _same_size_tamper(root: Path) -> None:
    """A change no per-sample check can see (a record's statistic, digits swapped), marker left as it was."""
    tar = root / "shard-000001.tar"
    data = tar.read_bytes()
    start = data.index(b'"mean_entropy": ') + len(b'"mean_entropy": ')
    digits = data[start : start + 4]
    tar.write_bytes(data[:start] + b"0.25" + data[start + 4 :])
    assert len(tar.read_bytes()) == len(data) and digits != b"0.25"


# (id, build(root), how much is lost, what the notice says, the file the notice names)
SAMPLE, REST, REST_AFTER, SHARD, HEADER = "sample", "rest of shard", "rest after the sample", "whole shard", "header"
TAR1 = "shard-000001.tar"
CASES = [
    # one sample: the shard's other samples are read
    (
        "png-bomb-within-cap",
        lambda r: rewrite(r, 1, set_member(1, 1, "image.png", png(SIZE, SIZE, zlib_bomb(1)))),
        SAMPLE,
        "PNG pixel data inflate to more than the 1056 bytes",
        TAR1,
    ),
    (
        "png-header-huge",
        lambda r: rewrite(r, 1, set_member(1, 1, "image.png", png(65535, 65535, zlib.compress(b"\0" * 64)))),
        SAMPLE,
        "PNG of 65535x65535 pixels is empty or larger",
        TAR1,
    ),
    (
        "png-rgb",
        lambda r: rewrite(r, 1, set_member(1, 1, "image.png", pil_png(np.zeros((SIZE, SIZE, 3), np.uint8), "RGB"))),
        SAMPLE,
        "PNG is 8-bit colour type 2",
        TAR1,
    ),
    (
        "png-16-bit",
        lambda r: rewrite(
            r, 1, set_member(1, 1, "image.png", png(SIZE, SIZE, zlib.compress(bytes(SIZE * (2 * SIZE + 1))), depth=16))
        ),
        SAMPLE,
        "PNG is 16-bit colour type 0",
        TAR1,
    ),
    ("png-filter-sub", _filter_type_one, SAMPLE, "PNG rows use a filter other than None", TAR1),
    ("png-corrupt-data", _corrupt_idat, SAMPLE, f"sample {KEY}: PNG", TAR1),
    (
        "png-not-a-png",
        lambda r: rewrite(r, 1, set_member(1, 1, "image.png", b"GIF89a" + bytes(100))),
        SAMPLE,
        "not a PNG",
        TAR1,
    ),
    (
        "image-other-size",
        lambda r: rewrite(r, 1, set_member(1, 1, "image.png", shards.encode_png(np.zeros((16, 16), np.uint8)))),
        SAMPLE,
        "image.png is 16x16, the set's (32x32 px, 5 classes) is 32x32",
        TAR1,
    ),
    (
        "soft-other-size",
        lambda r: rewrite(
            r, 1, set_member(1, 1, "soft.png", shards.encode_png(soft_levels(K, SIZE, 16).reshape(K * SIZE, 16)))
        ),
        SAMPLE,
        "soft.png is 160x16",
        TAR1,
    ),
    (
        "soft-fewer-maps",
        lambda r: rewrite(
            r, 1, set_member(1, 1, "soft.png", shards.encode_png(soft_levels(4).reshape(4 * SIZE, SIZE)))
        ),
        SAMPLE,
        "soft.png is 128x32",
        TAR1,
    ),
    ("other-class-count", _four_classes, SAMPLE, "4 classes, the set has 5", TAR1),
    ("levels-not-255", _levels_not_255, SAMPLE, "soft-label levels sum to 254 at pixel (3, 4), not 255", TAR1),
    (
        "json-list",
        lambda r: rewrite(r, 1, set_member(1, 1, "json", b"[1, 2]")),
        SAMPLE,
        "json is a JSON list, not an object",
        TAR1,
    ),
    (
        "json-invalid",
        lambda r: rewrite(r, 1, set_member(1, 1, "json", b"{not json")),
        SAMPLE,
        "json is not valid JSON",
        TAR1,
    ),
    (
        "json-not-utf8",
        lambda r: rewrite(r, 1, set_member(1, 1, "json", b'{"key": "\xff"}')),
        SAMPLE,
        "json is not valid JSON",
        TAR1,
    ),
    (
        "json-deep",
        lambda r: rewrite(r, 1, set_member(1, 1, "json", b"[" * 5000 + b"]" * 5000)),
        SAMPLE,
        "json is not valid JSON (nested too deeply)",
        TAR1,
    ),
    ("json-missing-field", json_change(mean_confidence=_DROP), SAMPLE, "json lacks 'mean_confidence'", TAR1),
    (
        "json-string-number",
        json_change(mean_confidence="0.9"),
        SAMPLE,
        "field 'mean_confidence' is '0.9', not a finite number",
        TAR1,
    ),
    (
        "json-nan",
        json_change(mean_confidence=float("nan")),
        SAMPLE,
        "json is not valid JSON (NaN is not a number)",
        TAR1,
    ),
    (
        "json-overflow",
        lambda r: rewrite(
            r,
            1,
            set_member(
                1, 1, "json", json.dumps(record(r)).replace('"mean_entropy": ', '"mean_entropy": 1e999, "x": ').encode()
            ),
        ),
        SAMPLE,
        "field 'mean_entropy' is inf",
        TAR1,
    ),
    ("json-bool-shard", json_change(shard=True), SAMPLE, "field 'shard' is True, not an integer", TAR1),
    ("json-confidence-range", json_change(mean_confidence=1.5), SAMPLE, "mean_confidence 1.5 or mean_entropy", TAR1),
    (
        "json-fractions",
        json_change(class_fractions=[0.2, "x", 0.2, 0.2, 0.2]),
        SAMPLE,
        "class_fractions is not 5 finite numbers",
        TAR1,
    ),
    ("json-other-key", json_change(key="000001-000003"), SAMPLE, "json names sample '000001-000003'", TAR1),
    (
        "member-missing",
        lambda r: rewrite(r, 1, set_member(1, 1, "soft.png", None)),
        SAMPLE,
        f"sample {KEY} lacks soft.png",
        TAR1,
    ),
    (
        "member-unexpected",
        lambda r: rewrite(r, 1, set_member(1, 1, "txt", b"hello")),
        SAMPLE,
        f"sample {KEY} holds an unexpected member 'txt'",
        TAR1,
    ),
    (
        "key-repeated",
        lambda r: rewrite(r, 1, lambda s: s[:3] + [s[1]]),
        SAMPLE,
        f"sample {KEY}: out of key order",
        TAR1,
    ),
    (
        "key-of-another-shard",
        lambda r: rewrite(r, 1, lambda s: s[:1] + [("000000-000001", s[1][1])] + s[2:]),
        SAMPLE,
        "sample 000000-000001: not one of shard 1's 4 keys",
        TAR1,
    ),
    (
        "key-past-count",
        lambda r: rewrite(r, 1, lambda s: s[:3] + [("000001-000007", s[3][1])]),
        SAMPLE,
        "sample 000001-000007: not one of shard 1's 4 keys",
        TAR1,
    ),
    # the rest of the shard, after the samples before the damage
    (
        "png-bomb-2GiB",
        lambda r: rewrite(r, 1, set_member(1, 1, "image.png", png(SIZE, SIZE, zlib_bomb(BOMB_MIB)))),
        REST,
        "tar member 000001-000001.image.png holds 21",
        TAR1,
    ),
    (
        "json-oversized",
        lambda r: rewrite(r, 1, set_member(1, 1, "json", b'{"x": "' + b"a" * (1 << 20) + b'"}')),
        REST,
        "tar member 000001-000001.json holds 1048585 bytes, more than the 17664",
        TAR1,
    ),
    (
        "member-reserved-name",
        lambda r: rewrite(r, 1, set_member(1, 1, "__record__", b"{}")),
        REST,
        "tar member 000001-000001.__record__ has a reserved extension",
        TAR1,
    ),
    (
        "member-twice",
        lambda r: rewrite(r, 1, lambda s: s[:2] + [s[1]] + s[3:]),
        REST_AFTER,
        "tar holds 000001-000001.image.png twice",
        TAR1,
    ),
    (
        "tar-size-not-a-number",
        lambda r: tar_header_patch(r, 1, 3, slice(124, 136), b"zzzzzzzzzzz"),
        REST,
        "where a number belongs",
        TAR1,
    ),
    (
        "tar-name-not-utf8",
        lambda r: tar_header_patch(r, 1, 3, slice(0, 100), b"\xff\xfe.json"),
        REST,
        "tar member name is not UTF-8",
        TAR1,
    ),
    (
        "tar-bit-flip-sha256",
        lambda r: edit_bytes(r / TAR1, lambda b: b[:3082] + b"X" + b[3083:]),
        SHARD,
        "the tar's sha256 differs",
        TAR1,
    ),
    # the whole shard
    (
        "tar-truncated",
        lambda r: edit_bytes(r / TAR1, lambda b: b[:5000]),
        SHARD,
        "the tar has 5000 bytes, its marker records",
        TAR1,
    ),
    (
        "tar-appended",
        lambda r: edit_bytes(r / TAR1, lambda b: b + bytes(1024)),
        SHARD,
        "bytes, its marker records",
        TAR1,
    ),
    ("tar-missing", lambda r: (r / TAR1).unlink(), SHARD, "FileNotFoundError", TAR1),
    ("marker-invalid-json", _with_marker(lambda m: "{broken"), SHARD, "marker is not valid JSON", "shard-000001.json"),
    ("marker-list", _with_marker(lambda m: "[1]"), SHARD, "marker is a JSON list, not an object", "shard-000001.json"),
    (
        "marker-count-string",
        _with_marker(lambda m: json.dumps(dict(m, count="4"))),
        SHARD,
        "marker records no pair count",
        "shard-000001.json",
    ),
    (
        "marker-count-negative",
        _with_marker(lambda m: json.dumps(dict(m, count=-1))),
        SHARD,
        "marker records no pair count",
        "shard-000001.json",
    ),
    (
        "marker-no-tar-size",
        _with_marker(lambda m: json.dumps({k: v for k, v in m.items() if k != "tar_bytes"})),
        SHARD,
        "marker records no tar size",
        "shard-000001.json",
    ),
    (
        "marker-sha-not-hex",
        _with_marker(lambda m: json.dumps(dict(m, sha256=7))),
        SHARD,
        "marker records no sha256",
        "shard-000001.json",
    ),
    (
        "marker-other-shard",
        _with_marker(lambda m: json.dumps(dict(m, shard=2))),
        SHARD,
        "marker names shard 2",
        "shard-000001.json",
    ),
    (
        "marker-nan-sum",
        _with_marker(lambda m: json.dumps(dict(m, sum_mean_confidence=float("nan")))),
        SHARD,
        "marker is not valid JSON",
        "shard-000001.json",
    ),
    (
        "marker-sums-strings",
        _with_marker(lambda m: json.dumps(dict(m, sum_class_fractions=["a"]))),
        SHARD,
        "sum_class_fractions is not a list of finite numbers",
        "shard-000001.json",
    ),
    (
        "marker-count-larger",
        _with_marker(lambda m: json.dumps(dict(m, count=5))),
        "count",
        "holds 4 samples, its marker records 5",
        TAR1,
    ),
    # the header: ignored under warn (the shape comes from the shards), named under raise
    (
        "dataset-json-invalid",
        lambda r: (r / "dataset.json").write_text("{not json"),
        HEADER,
        "dataset.json: not valid JSON",
        "dataset.json",
    ),
    (
        "dataset-json-list",
        lambda r: (r / "dataset.json").write_text("[]"),
        HEADER,
        "dataset.json: not a JSON object",
        "dataset.json",
    ),
    (
        "dataset-json-resolution-string",
        lambda r: (r / "dataset.json").write_text(
            json.dumps(dict(json.loads((r / "dataset.json").read_text()), resolution="32"))
        ),
        HEADER,
        "resolution must be int, got '32'",
        "dataset.json",
    ),
    (
        "dataset-json-classes-numbers",
        lambda r: (r / "dataset.json").write_text(
            json.dumps(dict(json.loads((r / "dataset.json").read_text()), classes=[1, 2]))
        ),
        HEADER,
        "classes must be a non-empty list of names",
        "dataset.json",
    ),
    (
        "dataset-json-nan",
        lambda r: (r / "dataset.json").write_text('{"b": NaN}'),
        HEADER,
        "dataset.json: not valid JSON",
        "dataset.json",
    ),
]
LOST = {SAMPLE: 1, REST: 3, REST_AFTER: 2, SHARD: 4, "count": 0, HEADER: 0}  # pairs of the 12 not delivered


def hostile(clean: Path, tmp_path: Path, build) -> str:
    root = tmp_path / "shards"
    shutil.copytree(clean, root)
    build(root)
    return str(root)


def read_pass(url: str, **kw) -> tuple[list[str], list[str]]:
    """(keys, bad-shard notices) of one pass in the main process."""
    keys, notices = [], []
    for item in GeneratedStream(url, seed=3, shuffle_buffer=3, passes=1, **kw):
        notices += item.get(BAD_SHARDS, [])
        if item["key"] is not None:
            keys.append(item["key"])
    return keys, notices


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_shard_is_skipped_and_counted_under_warn(clean, tmp_path, case):
    name, build, lost, says, names = case
    url = hostile(clean, tmp_path, build)
    verify = "sha256" if name.endswith("sha256") else "size"
    keys, notices = read_pass(url, on_bad_shard="warn", verify=verify)
    assert len(keys) == 12 - LOST[lost] and len(set(keys)) == len(keys), (keys, notices)
    assert len(notices) == 1 and says in notices[0] and names in notices[0], notices
    assert "\n" not in notices[0]
    if lost == SAMPLE:
        assert KEY not in keys or name in (
            "key-repeated",
            "key-past-count",
        )  # the bad one; the repeat's first copy is good


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_shard_stops_the_stream_with_one_named_line_under_raise(clean, tmp_path, case):
    name, build, _, says, names = case
    url = hostile(clean, tmp_path, build)
    verify = "sha256" if name.endswith("sha256") else "size"
    with pytest.raises(StreamError) as caught:
        read_pass(url, on_bad_shard="raise", verify=verify)
    message = str(caught.value)
    assert says in message and f"{url}/{names}" in message and "\n" not in message and "on_bad_shard=raise" in message


def test_a_same_size_change_passes_the_size_check_and_is_caught_by_sha256(clean, tmp_path):
    """Only the digest sees a change that keeps the size and every sample valid: verify=sha256 skips the shard."""
    url = hostile(clean, tmp_path, _same_size_tamper)
    keys, notices = read_pass(url, verify="size")
    assert len(keys) == 12 and notices == []  # the documented limit of the size check
    keys, notices = read_pass(url, verify="sha256")
    assert (
        len(keys) == 8
        and len(notices) == 1
        and notices[0] == f"shard {url}/{TAR1}: the tar's sha256 differs from its marker's"
    )


def test_on_object_storage_the_size_and_digest_are_checked_too(s3_bucket):
    """The tar's size comes from the object store's open; sha256 reads the object, then again from its start."""
    import fsspec

    url = f"{s3_bucket}/hostile"
    write_dataset(url, COUNTS, size=SIZE)
    fs = fsspec.filesystem("s3")
    tar = f"{url}/{TAR1}".removeprefix("s3://")
    data = fs.cat_file(tar)
    start = data.index(b'"mean_entropy": ') + len(b'"mean_entropy": ')
    fs.pipe_file(
        tar, data[:start] + (b"0.25" if data[start : start + 4] != b"0.25" else b"0.26") + data[start + 4 :]
    )  # same size
    keys, notices = read_pass(url)
    assert len(keys) == 12 and notices == []
    keys, notices = read_pass(url, verify="sha256")
    assert len(keys) == 8 and notices == [f"shard {url}/{TAR1}: the tar's sha256 differs from its marker's"]
    fs.pipe_file(tar, data[:5000])
    keys, notices = read_pass(url)
    assert len(keys) == 8 and notices == [f"shard {url}/{TAR1}: the tar has 5000 bytes, its marker records {len(data)}"]


def test_stray_marker_like_names_are_never_read_as_markers(clean, tmp_path):
    """Only a file whose whole name is shard-NNNNNN.json is a marker: copies and look-alikes beside
    it are ignored (the issue's stray file was read as shard 1 again: 48 samples instead of 40)."""
    root = Path(hostile(clean, tmp_path, lambda r: None))
    marker = (root / "shard-000001.json").read_text()
    for stray in (
        "old-shard-000001.json",
        "shard-000001.json.bak",
        "copy of shard-000001.json",
        "shard-000001.json.tmp-0123456789ab",
        "shard-0000001.json.orig",
        "Shard-000001.json",
    ):
        (root / stray).write_text(marker)
    (root / "shard-000007.json").mkdir()  # a folder with a marker's name
    (root / "shard-000007.json" / "x").write_text(marker)
    (root / "sub").mkdir()
    (root / "sub" / "shard-000001.json").write_text(marker)
    keys, notices = read_pass(str(root))
    assert sorted(keys) == sorted(f"{s:06d}-{i:06d}" for s in range(3) for i in range(4)) and notices == []
    assert [d.shard for d in ShardSet(str(root)).done()] == [0, 1, 2]


def test_an_oversized_marker_or_header_is_refused_unread(clean, tmp_path):
    """A marker above MAX_MARKER_BYTES is an unreadable shard named with its size (the others are read);
    a dataset.json above MAX_HEADER_BYTES is one ShardError; neither is loaded whole."""
    from dakter_scale.data.shardset import ShardError
    from dakter_scale.data.shardset.records import MAX_HEADER_BYTES, MAX_MARKER_BYTES

    root = Path(hostile(clean, tmp_path, lambda r: None))
    marker = json.loads((root / "shard-000001.json").read_text())
    (root / "shard-000001.json").write_text(json.dumps(dict(marker, padding="x" * MAX_MARKER_BYTES)))
    done, unreadable = ShardSet(str(root)).read_markers()
    size = (root / "shard-000001.json").stat().st_size
    assert (
        sorted(done) == [0, 2]
        and unreadable[1] == f"marker is {size} bytes, more than a marker holds ({MAX_MARKER_BYTES}): not read"
    )
    header = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps(dict(header, padding="x" * MAX_HEADER_BYTES)))
    with pytest.raises(ShardError, match=f"more than {MAX_HEADER_BYTES} bytes, more than a dataset.json holds"):
        ShardSet(str(root)).info()


def test_without_dataset_json_the_first_shard_sets_the_shape_and_every_shard_must_agree(clean, tmp_path):
    url = hostile(clean, tmp_path, _other_resolution)
    assert ShardSet(url).sample_shape() == SampleShape(SIZE, SIZE, K)  # from shard 0's first sample and its marker
    keys, notices = read_pass(url, on_bad_shard="warn")
    assert len(keys) == 8 and not any(k.startswith("000002") for k in keys)
    assert len(notices) == 4 and all(
        "shard-000002.tar" in n and "image.png is 16x16, the set's (32x32 px, 5 classes) is 32x32" in n for n in notices
    )
    with pytest.raises(StreamError, match=r"shard-000002\.tar: sample 000002-000000: image\.png is 16x16"):
        read_pass(url, on_bad_shard="raise")


def test_a_nan_confidence_never_slips_past_min_confidence(clean, tmp_path):
    """NaN < c is False: the issue's NaN mean_confidence passed student.min_confidence. Now the record is refused."""
    url = hostile(clean, tmp_path, json_change(mean_confidence=float("nan")))
    keys, notices = read_pass(url, min_confidence=0.95)  # every clean pair's is ~0.9: all filtered out
    assert keys == [] and len(notices) == 1 and "NaN is not a number" in notices[0]


def test_the_codec_alone_bounds_a_bomb_and_refuses_other_pngs():
    """decode_png without the tar's caps: the header decides how much may inflate."""
    bomb = png(SIZE, SIZE, zlib_bomb(64))
    with pytest.raises(shards.ShardError, match="inflate to more than the 1056 bytes its 32x32 header allows"):
        shards.decode_png(bomb)
    with pytest.raises(shards.ShardError, match="inflate to fewer"):
        shards.decode_png(png(SIZE, SIZE, zlib.compress(bytes(10))))
    with pytest.raises(shards.ShardError, match="PNG is 32x32, the set's are 16x16"):
        shards.decode_png(shards.encode_png(np.zeros((SIZE, SIZE), np.uint8)), (16, 16))
    with pytest.raises(shards.ShardError, match="colour type 0"):  # palette
        shards.decode_png(png(4, 4, zlib.compress(bytes(20)), colour=3))


@pytest.mark.parametrize("size", [b"-1", b"+1", b"1_0"])
def test_a_tar_size_that_only_int_parses_never_reads_past_a_member_cap(size):
    """A size field of "-1" (int() parses it, tar does not) must be refused from the header: read(-1)
    would pull the rest of the object, however large, into memory past every member cap."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(f"{KEY}.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    data = bytearray(buf.getvalue())
    header = data[:512]
    header[124:136] = size.ljust(11, b" ") + b"\0"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[:512] = header
    data += bytes(1 << 20)  # what a read(-1) would take in one call

    class Reads(io.BytesIO):
        largest = 0

        def read(self, n=-1):
            out = super().read(n)
            Reads.largest = max(Reads.largest, len(out))
            return out

    with pytest.raises(shards.ShardError, match="where a number belongs"):
        list(shards.read_tar(Reads(bytes(data)), "x.tar", {"json": 100, "*": 100}))
    assert Reads.largest <= 512


# -- the bomb's peak memory ----------------------------------------------------------------------------

MEASURE = r"""
import json, resource, sys
from dakter_scale.data.shardset import SampleError, ShardSet, decode_sample
from dakter_scale.data.stream import BAD_SHARDS, GeneratedStream

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

def one_pass(url):
    n = bad = 0
    for item in GeneratedStream(url, shuffle_buffer=3, passes=1):
        bad += len(item.get(BAD_SHARDS, []))
        n += item["key"] is not None
    return n, bad

clean, bombed, bomb_png = sys.argv[1:4]
assert one_pass(clean) == (12, 0)
base = peak_mb()
stream = one_pass(bombed)
after_stream = peak_mb()
sample = dict(next(iter(ShardSet(clean).samples())), **{"image.png": open(bomb_png, "rb").read()})
try:
    decode_sample(sample)
    refused = None
except SampleError as e:
    refused = str(e)
after_decode = peak_mb()
print(json.dumps({"baseline_mb": base, "stream": stream, "stream_peak_mb": after_stream, "decode_refused": refused, "decode_peak_mb": after_decode}))
"""


def test_the_2_gib_bomb_stays_within_a_stated_memory_bound(clean, tmp_path):
    """The issue's bomb (a ~2 MB image.png inflating to 2 GiB) raised the loader's peak from 0.55 to
    4.65 GB. Bound: < 300 MB above the peak of a clean pass, both through the stream (the member
    cap refuses it before reading) and handed straight to decode_sample (the inflate stops one byte
    past the 32x32 image the header allows)."""
    bomb = png(SIZE, SIZE, zlib_bomb(BOMB_MIB))
    assert 2_000_000 < len(bomb) < 2_300_000
    url = hostile(clean, tmp_path, lambda r: rewrite(r, 1, set_member(1, 1, "image.png", bomb)))
    (tmp_path / "bomb.png").write_bytes(bomb)
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(clean), url, str(tmp_path / "bomb.png")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=job_env(PYTHONPATH=str(ROOT)),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"bomb peak memory: {got}")
    assert got["stream"] == [9, 1]
    assert "inflate to more than the 1056 bytes" in got["decode_refused"]
    assert got["stream_peak_mb"] - got["baseline_mb"] < 300
    assert got["decode_peak_mb"] - got["baseline_mb"] < 300


# -- the student job -----------------------------------------------------------------------------------


def _zoo(clean_url: str, tmp_path: Path) -> Path:
    """8 shards of 4: 0 and 7 clean, 1-6 each hostile in another way, and dataset.json not JSON."""
    root = tmp_path / "zoo"
    write_dataset(str(root), [4] * 8, size=SIZE)
    rewrite(root, 1, set_member(1, 1, "image.png", pil_png(np.zeros((SIZE, SIZE, 3), np.uint8), "RGB")))
    levels = soft_levels()
    levels[1, 0, 0] = 7
    rewrite(root, 2, set_member(2, 1, "soft.png", shards.encode_png(levels.reshape(K * SIZE, SIZE))))
    r = json.loads(dict(members_of(root / "shard-000003.tar"))["000003-000001"]["json"])
    rewrite(root, 3, set_member(3, 1, "json", json.dumps(dict(r, mean_confidence=float("nan"))).encode()))
    rewrite(root, 4, set_member(4, 1, "image.png", png(SIZE, SIZE, zlib_bomb(BOMB_MIB))))
    (root / "shard-000005.tar").write_bytes((root / "shard-000005.tar").read_bytes()[:5000])
    (root / "shard-000006.json").write_text("{broken")
    return root


def _student(tmp_path: Path, name: str, synthetic: Path, policy: str) -> subprocess.CompletedProcess:
    argv = job("train_student.py") + [
        "--out",
        str(tmp_path / name),
        "--synthetic",
        str(synthetic),
        "--ratio",
        "100",
        "--max-steps",
        "10",
        *TINY_STUDENT,
        f"student.on_bad_shard={policy}",
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False, env=job_env(), cwd=ROOT)


@pytest.mark.slow  # two student job runs (~15 s): each kind, under warn and raise, is checked in-process by default
def test_the_student_job_trains_past_every_kind_under_warn_and_stops_with_one_line_under_raise(clean, tmp_path):
    zoo = _zoo(str(clean), tmp_path)
    (zoo / "dataset.json").write_text("{not json")
    r = _student(tmp_path, "warn", zoo, "warn")
    assert r.returncode == 0, r.stderr[-3000:]
    bad = json.loads((tmp_path / "warn" / "student.json").read_text())["bad_shards"]
    expected = [
        f"{zoo}/dataset.json: not valid JSON",
        f"{zoo}/shard-000006.json: marker is not valid JSON",
        f"shard {zoo}/shard-000001.tar: sample 000001-000001: image.png: PNG is 8-bit colour type 2",
        f"shard {zoo}/shard-000002.tar: sample 000002-000001: soft-label levels sum to 262 at pixel (0, 0)",
        f"shard {zoo}/shard-000003.tar: sample 000003-000001: json is not valid JSON (NaN is not a number)",
        f"shard {zoo}/shard-000004.tar: tar member 000004-000001.image.png holds",
        f"shard {zoo}/shard-000005.tar: the tar has 5000 bytes",
    ]
    assert len(bad) == len(expected) and all(any(b.startswith(e) for b in bad) for e in expected), bad
    assert f"{len(expected)} bad shard(s) or sample(s) skipped while streaming" in r.stderr
    assert "Traceback" not in r.stderr

    r = _student(tmp_path, "raise-header", zoo, "raise")  # the header is read first
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: {zoo}/dataset.json: not valid JSON")

    shutil.copy(clean / "dataset.json", zoo / "dataset.json")  # then the markers, before any step
    r = _student(tmp_path, "raise-marker", zoo, "raise")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        r.stderr.strip().splitlines()[-1]
        == f"error: {zoo}/shard-000006.json: marker is not valid JSON (student.on_bad_shard=raise; use warn to skip bad shards)"
    )

    (zoo / "shard-000006.json").unlink()
    r = _student(tmp_path, "raise-sample", zoo, "raise")  # then whichever bad shard or sample the readers meet first
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: shard {zoo}/shard-00000") and last.endswith(
        "(student.on_bad_shard=raise; use warn to skip bad shards)"
    )


def test_a_manifest_that_is_not_its_shards_is_one_line_naming_it(clean, tmp_path):
    """Selection reads the class fractions from the manifest: one of another row count, another
    shard's keys, or none at all is refused naming the file, not read as the shard's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dakter_scale.data.shardset import ShardError

    root = Path(hostile(clean, tmp_path, lambda r: None))
    whole = ShardSet(str(root)).manifest()
    assert whole.num_rows == 12
    table = pq.read_table(root / "shard-000001.parquet")
    pq.write_table(table.slice(0, 3), root / "shard-000001.parquet")
    with pytest.raises(ShardError, match=r"shard-000001.parquet: 3 rows, the marker counts 4 pairs"):
        ShardSet(str(root)).manifest()
    keys = pa.array([k.replace("000001-", "000002-") for k in table.column("key").to_pylist()])
    pq.write_table(table.set_column(table.column_names.index("key"), "key", keys), root / "shard-000001.parquet")
    with pytest.raises(ShardError, match=r"shard-000001.parquet: holds key 000002-000000 of another shard"):
        ShardSet(str(root)).manifest()
    (root / "shard-000001.parquet").unlink()
    with pytest.raises(ShardError, match=r"shard-000001.parquet: missing"):
        ShardSet(str(root)).manifest()


def test_a_manifest_whose_rows_lie_is_one_line_naming_it(clean, tmp_path):
    """The right count and shard's keys, but a key twice, a key past the count, a NaN class fraction, a
    row of other length, a column of another type: each refused naming the file (a ragged row reached
    numpy's "inhomogeneous shape" in selection, a repeated key an IndexError in derive)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dakter_scale.data.shardset import ShardError

    root = Path(hostile(clean, tmp_path, lambda r: None))
    path = root / "shard-000001.parquet"
    table = pq.read_table(path)
    keys = table.column("key").to_pylist()
    fractions = table.column("class_fractions").to_pylist()

    def with_column(name, values, kind=None):
        return table.set_column(
            table.column_names.index(name), name, pa.array(values, type=kind or table.schema.field(name).type)
        )

    cases = {
        "repeated key": (with_column("key", [keys[0]] + keys[:-1]), r"its keys are not the shard's 4 keys, each once"),
        "key past the count": (
            with_column("key", keys[:-1] + ["000001-000009"]),
            r"its keys are not the shard's 4 keys",
        ),
        "NaN fraction": (
            with_column("class_fractions", [[np.nan] + f[1:] for f in fractions]),
            r"class fractions that are not finite and >= 0",
        ),
        "negative fraction": (
            with_column("class_fractions", [[-0.5] + f[1:] for f in fractions]),
            r"class fractions that are not finite and >= 0",
        ),
        "ragged row": (
            with_column("class_fractions", [fractions[0][:2]] + fractions[1:]),
            r"class fractions of rows of \[2, \d\] classes",
        ),
        "NaN confidence": (
            with_column("mean_confidence", [np.nan] * 4),
            r"a mean_confidence that is not a finite number",
        ),
        "text seeds": (with_column("seed", ["a", "b", "c", "d"], pa.string()), r"not a manifest of this format"),
    }
    for name, (bad, message) in cases.items():
        pq.write_table(bad, path)
        with pytest.raises(ShardError, match=r"shard-000001\.parquet: " + message):
            ShardSet(str(root)).manifest()
    pq.write_table(table, path)
    assert ShardSet(str(root)).manifest().num_rows == 12
