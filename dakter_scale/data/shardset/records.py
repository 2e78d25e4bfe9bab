"""A shard set's names and records, read as hostile: member, key, file and marker names, the
constants of the format, one sample's record (parse_record: every field's type and range) and its
encoding and decoding, the per-sample manifest and the per-shard done marker (marker_problem)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import torch

from dakter_scale.data.sar_stats import SAR, SarCounts
from dakter_scale.data.shardset.codec import (
    QUANT_LEVELS,
    SampleError,
    ShardError,
    decode_png,
    dequantise,
    encode_png,
    png_shape,
    quantise,
)

FORMAT = "dakter-shards/1"  # the shard format; part of every plan's fingerprint, so it changes only with the bytes
DATASET_FILE = "dataset.json"
IMAGE, SOFT, RECORD = "image.png", "soft.png", "json"
MEMBERS = (IMAGE, SOFT, RECORD)  # what every sample of a shard holds
_MEMBER_SET = frozenset(MEMBERS)
_RAW_KEYS = frozenset(("__key__", "__url__", *MEMBERS))  # a raw sample as read_tar yields it
MARKER_RE = re.compile(r"^shard-(\d{6,})\.json$")  # a done marker's file name: shard_name(s, "json")
# The most a marker and a header can hold (about 6 KB and 17 KB at 64 px): a set from elsewhere with a
# larger one is refused unread, not loaded whole into memory.
MAX_MARKER_BYTES = 1 << 20
MAX_HEADER_BYTES = 16 << 20
MANIFEST_RE = re.compile(r"^shard-(\d{6,})\.parquet$")  # a shard's manifest: shard_name(s, "parquet")
CHECKED = "__record__"  # a sample's parsed, checked record, as ShardSet.read_checked leaves it in the sample
KEY_RE = re.compile(r"(\d{6,})-(\d{6,})")  # a sample key: sample_key(shard, index), matched whole (fullmatch)
SHARD_PREFIX = "shard-"
IN_PROGRESS, COMPLETE, INCOMPLETE = "in progress", "complete", "incomplete"  # DatasetInfo.status
MIN_MEAN_CONFIDENCE = 0.5  # below this the soft labels are closer to uniform than to a segmentation
# SAR statistics warn when the generated ENL is outside this factor of the training images' or the
# grey-level histograms differ by more than this total variation (synthesis.enl_ratio_threshold,
# synthesis.histogram_threshold; chosen from the sampler frontier, docs/journal/results-history.md)
ENL_RATIO_WARNING, HISTOGRAM_TV_WARNING = 2.0, 0.25
# a class whose generated share is under its reference share divided by this factor warns
# (synthesis.class_share_ratio_threshold): a total variation cannot see a class of 0.3 % vanish, and
# progressive distillation erases the rarest class that way (docs/synthesis.md, "Divergence warning").
# Classes under CLASS_SHARE_FLOOR of the reference's pixels are not checked: their share is too noisy to judge.
CLASS_SHARE_RATIO_WARNING, CLASS_SHARE_FLOOR = 3.0, 0.001


def shard_name(shard: int, ext: str = "tar") -> str:
    return f"{SHARD_PREFIX}{shard:06d}.{ext}"


def sample_key(shard: int, index: int) -> str:
    return f"{shard:06d}-{index:06d}"


def parse_key(key: str) -> tuple[int, int]:
    match = KEY_RE.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise ShardError(f"sample key {key!r} is not SHARD-INDEX")
    return int(match.group(1)), int(match.group(2))


# -- what every sample of a set is ------------------------------------------------------------------


@dataclass(frozen=True)
class SampleShape:
    """What every sample of a set must be: an image of height x width, a soft label of num_classes
    maps of that size. From dataset.json, or the set's first sample (``ShardSet.sample_shape``)."""

    height: int
    width: int
    num_classes: int

    def member_limits(self) -> dict[str, int]:
        """The most bytes a member may hold, by extension ("*": any other), for read_tar: twice a PNG's
        raw pixel data plus 4 KiB (deflate at its worst adds 5 bytes per 16 KiB; the writer's PNGs
        are far smaller), and for the JSON record 16 KiB plus 256 bytes per class. Unknown members
        get the record's cap (and are refused as unexpected)."""
        record = (16 << 10) + 256 * self.num_classes
        return {
            IMAGE: 2 * self.height * (self.width + 1) + 4096,
            SOFT: 2 * self.num_classes * self.height * (self.width + 1) + 4096,
            RECORD: record,
            "*": record,
        }

    def __str__(self) -> str:
        return f"{self.height}x{self.width} px, {self.num_classes} classes"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)  # one decoder: json.loads with an option builds one per call


def load_json(data: bytes | str) -> Any:
    """JSON as the shard set reads it (UTF-8): NaN and Infinity refused (ValueError), as is nesting too deep to parse."""
    try:
        return _DECODER.decode(
            data.decode() if isinstance(data, (bytes, bytearray)) else data
        )  # UnicodeDecodeError is a ValueError
    except RecursionError:
        raise ValueError("nested too deeply") from None


# A sample's JSON record: every writer (synth/worker.py, tests/shardgen.py, derive) writes these,
# each a type or a check.
RECORD_FIELDS: dict[str, Any] = {
    "key": str,
    "shard": _integer,
    "index": _integer,
    "seed": _integer,
    "num_classes": _integer,
    "class_fractions": list,
    "mean_entropy": _number,
    "mean_confidence": _number,
}
_KINDS = {str: "a string", list: "a list", _integer: "an integer", _number: "a finite number"}


def parse_record(data: bytes, key: str, shape: SampleShape | None = None) -> dict[str, Any]:
    """A sample's JSON record, checked: an object with every RECORD_FIELDS field of its type, finite
    numbers, the sample's own key, shard and index, and (with `shape`) its class count."""
    try:
        record = load_json(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError among them
        raise SampleError(f"sample {key}: {RECORD} is not valid JSON ({e})") from None
    if not isinstance(record, dict):
        raise SampleError(f"sample {key}: {RECORD} is a JSON {type(record).__name__}, not an object")
    try:  # the common case in one expression (this runs per sample); the loop below names what is wrong
        well_typed = (
            type(record["key"]) is str
            and type(record["shard"])
            is type(record["index"])
            is type(record["seed"])
            is type(record["num_classes"])
            is int
            and type(record["class_fractions"]) is list
            and type(record["mean_entropy"]) in (int, float)
            and type(record["mean_confidence"]) in (int, float)
            and math.isfinite(record["mean_entropy"] + record["mean_confidence"])
        )
    except KeyError:
        well_typed = False
    if not well_typed:
        for name, kind in RECORD_FIELDS.items():
            if name not in record:
                raise SampleError(f"sample {key}: {RECORD} lacks {name!r}")
            if not (isinstance(record[name], kind) if isinstance(kind, type) else kind(record[name])):
                raise SampleError(f"sample {key}: {RECORD} field {name!r} is {record[name]!r}, not {_KINDS[kind]}")
    if record["key"] != key or sample_key(record["shard"], record["index"]) != key:
        raise SampleError(
            f"sample {key}: {RECORD} names sample {record['key']!r} (shard {record['shard']}, index {record['index']})"
        )
    k = record["num_classes"]
    if shape is not None and k != shape.num_classes:
        raise SampleError(f"sample {key}: {k} classes, the set has {shape.num_classes}")
    fractions = record["class_fractions"]
    if (
        k < 1
        or len(fractions) != k
        or not {type(v) for v in fractions} <= {int, float}
        or not math.isfinite(math.fsum(fractions))
    ):
        raise SampleError(f"sample {key}: {RECORD} class_fractions is not {k} finite numbers")
    if not 0 <= record["mean_confidence"] <= 1 or record["mean_entropy"] < 0:
        raise SampleError(
            f"sample {key}: {RECORD} mean_confidence {record['mean_confidence']} or mean_entropy {record['mean_entropy']} out of range"
        )
    return record


# -- one sample ---------------------------------------------------------------------------------


def _record_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


def encode_sample(key: str, image: np.ndarray, q: torch.Tensor | np.ndarray, meta: dict[str, Any]) -> dict[str, bytes]:
    """Serialise one pair. image: uint8 (H, W). q: (K, H, W) probabilities. meta: JSON-able dict."""
    parse_key(key)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ShardError(f"sample {key}: image must be uint8 (H, W), got {image.dtype} {image.shape}")
    levels = quantise(q)
    k, h, w = levels.shape
    if (h, w) != image.shape:
        raise ShardError(f"sample {key}: soft label {(h, w)} and image {image.shape} differ in size")
    return {
        IMAGE: encode_png(image),
        SOFT: encode_png(levels.reshape(k * h, w)),
        RECORD: _record_bytes(dict(meta, key=key, num_classes=k)),
    }


def decode_sample(
    sample: dict[str, Any], levels: bool = False, shape: SampleShape | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Inverse of encode_sample over a sample dict whose values are bytes (webdataset without a decoder).

    Returns image uint8 (H, W), q float32 (K, H, W) summing to 1 (or, with levels=True, the stored
    uint8 levels summing to 255: dequantise them), and the metadata. Everything is checked (a
    SampleError names the sample): the record (parse_record), the PNG headers before inflating, the
    sizes and class count (against `shape` when given, else the record's and the image's own), and
    the levels, which must sum to 255 at every pixel.
    """
    key = sample.get("__key__", "?")
    if not _MEMBER_SET <= sample.keys():
        raise SampleError(f"sample {key}: missing member {min(_MEMBER_SET - sample.keys())!r}")
    meta = _record(sample, key, shape)
    k = meta["num_classes"]
    try:
        image = decode_png(sample[IMAGE], (shape.height, shape.width) if shape else None)
        h, w = image.shape
        stacked = decode_png(sample[SOFT], (k * h, w))
    except SampleError:
        raise
    except ShardError as e:
        raise SampleError(f"sample {key}: {e}") from None
    stacked = stacked.reshape(k, h, w)
    sums = np.add.reduce(stacked, axis=0, dtype=np.uint16)  # the ufunc itself: ndarray.sum/.any add a Python call each
    if np.count_nonzero(sums != QUANT_LEVELS):
        i, j = np.argwhere(sums != QUANT_LEVELS)[0]
        raise SampleError(
            f"sample {key}: soft-label levels sum to {sums[i, j]} at pixel ({i}, {j}), not {QUANT_LEVELS}"
        )
    return image, (stacked if levels else dequantise(stacked)), meta


def read_record(sample: dict[str, Any], shape: SampleShape | None = None) -> dict[str, Any]:
    """A raw sample's JSON record alone (no image decoding), checked (parse_record)."""
    key = sample.get("__key__", "?")
    if RECORD not in sample:
        raise SampleError(f"sample {key}: missing member {RECORD!r}")
    return _record(sample, key, shape)


def _record(sample: dict[str, Any], key: str, shape: SampleShape | None) -> dict[str, Any]:
    checked = sample.get(CHECKED)
    if checked is not None and (shape is None or checked["num_classes"] == shape.num_classes):
        return checked  # parsed and checked by read_checked
    return parse_record(sample[RECORD], key, shape)


def check_sample(sample: dict[str, Any], shape: SampleShape) -> dict[str, Any]:
    """The checks that need no inflating: exactly the three members, the record, and the PNG
    headers' sizes and form; returns the record. A SampleError names the sample; decode_sample does the rest."""
    key = sample["__key__"]
    names = {name for name in sample if not name.startswith("__")} if sample.keys() != _RAW_KEYS else _MEMBER_SET
    if names != _MEMBER_SET:
        missing, extra = sorted(set(MEMBERS) - names), sorted(names - set(MEMBERS))
        raise SampleError(
            f"sample {key} "
            + (f"lacks {', '.join(missing)}" if missing else f"holds an unexpected member {extra[0]!r}")
        )
    record = parse_record(sample[RECORD], key, shape)
    for member, want in ((IMAGE, (shape.height, shape.width)), (SOFT, (shape.num_classes * shape.height, shape.width))):
        try:
            got = png_shape(sample[member])
        except ShardError as e:
            raise SampleError(f"sample {key}: {member}: {e}") from None
        if got != want:
            raise SampleError(
                f"sample {key}: {member} is {got[0]}x{got[1]}, the set's ({shape}) is {want[0]}x{want[1]}"
            )
    return record


# -- manifests and markers ----------------------------------------------------------------------

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int32()),
        ("index", pa.int32()),
        ("seed", pa.uint64()),
        ("class_fractions", pa.list_(pa.float32())),
        ("mean_entropy", pa.float32()),
        ("mean_confidence", pa.float32()),
    ]
)


def manifest_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Per-sample manifest rows -> an Arrow table with MANIFEST_SCHEMA."""
    return pa.table({name: [r[name] for r in rows] for name in MANIFEST_SCHEMA.names}, schema=MANIFEST_SCHEMA)


def manifest_rows(
    shard: int, indices: Sequence[int], seeds: Sequence[int], stats: dict[str, Any]
) -> list[dict[str, Any]]:
    """Manifest rows of a batch of pairs of a shard from their indices in it, their seeds and
    soft_labels.sample_stats(q); each row's "key" names the sample."""
    rows = []
    for j, (index, seed) in enumerate(zip(indices, seeds)):
        rows.append(
            {
                "key": sample_key(shard, index),
                "shard": shard,
                "index": index,
                "seed": int(seed),
                "class_fractions": [float(v) for v in stats["class_fractions"][j]],
                "mean_entropy": float(stats["mean_entropy"][j]),
                "mean_confidence": float(stats["mean_confidence"][j]),
            }
        )
    return rows


def manifest_row(record: dict[str, Any]) -> dict[str, Any]:
    """A sample's manifest row from its JSON record (which holds every manifest field)."""
    return {name: (int(record[name]) if name == "seed" else record[name]) for name in MANIFEST_SCHEMA.names}


def manifest_sums(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The done marker's per-shard sums over manifest rows (dataset statistics add them up)."""
    return {
        "sum_class_fractions": np.array([r["class_fractions"] for r in rows], dtype=np.float64).sum(axis=0).tolist(),
        "sum_mean_confidence": float(sum(r["mean_confidence"] for r in rows)),
        "sum_mean_entropy": float(sum(r["mean_entropy"] for r in rows)),
    }


def shard_marker(
    shard: int,
    rows: list[dict[str, Any]],
    tar_bytes: int,
    sha256: str,
    fingerprint: str | None,
    sar: SarCounts | None = None,
) -> dict[str, Any]:
    """The done marker of a written shard: what it holds, its tar's size and hash, the manifest sums,
    and the SAR statistics of its images when the writer counted them."""
    marker = {
        "shard": shard,
        "count": len(rows),
        "first_key": rows[0]["key"],
        "last_key": rows[-1]["key"],
        "tar_bytes": tar_bytes,
        "sha256": sha256,
        "fingerprint": fingerprint,
        **manifest_sums(rows),
    }
    if sar is not None:
        marker[SAR] = sar.to_json()
    return marker


def marker_problem(marker: Any, shard: int) -> str | None:
    """What makes a done marker unusable, or None: not an object, no pair count, tar size or sha256
    of the right type, another shard's id (or one that is no int: ``true`` and ``1.0`` equal 1 in
    Python), or sums that are not finite numbers."""
    if not isinstance(marker, dict):
        return f"marker is a JSON {type(marker).__name__}, not an object"
    if not _integer(marker.get("count")) or marker["count"] < 0:
        return f"marker records no pair count (count {marker.get('count')!r})"
    if not _integer(marker.get("tar_bytes")) or marker["tar_bytes"] < 0:
        return f"marker records no tar size (tar_bytes {marker.get('tar_bytes')!r})"
    if not isinstance(marker.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", marker["sha256"]):
        return f"marker records no sha256 (sha256 {marker.get('sha256')!r})"
    if "shard" in marker and (not _integer(marker["shard"]) or marker["shard"] != shard):  # true == 1.0 == 1
        return f"marker names shard {marker['shard']!r}"
    if not isinstance(marker.get("fingerprint"), (str, type(None))):
        return f"marker's fingerprint {marker['fingerprint']!r} is not a string"
    sums = marker.get("sum_class_fractions", [])
    if not isinstance(sums, list) or not all(_number(v) for v in sums):
        return "marker's sum_class_fractions is not a list of finite numbers"
    for name in ("sum_mean_confidence", "sum_mean_entropy"):
        if name in marker and not _number(marker[name]):
            return f"marker's {name} is {marker[name]!r}, not a finite number"
    if SAR in marker and (problem := SarCounts.problem(marker[SAR])):
        return f"marker's {SAR} statistics: {problem}"
    return None


def marker_count(markers: Iterable[dict]) -> int:
    """Pairs in the shards of these markers."""
    return sum(int(m["count"]) for m in markers)


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard: its id, its tar's full URL, its pair count, and its marker."""

    shard: int
    tar: str
    count: int
    marker: dict
