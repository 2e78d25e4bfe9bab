"""The shard set: the one owner of how generated pairs are laid out in storage.

A shard set is a folder or bucket prefix (any fsspec URL) holding
  shard-000000.tar      WebDataset tar, one sample per key, members sorted, fixed mtime
  shard-000000.parquet  per-sample manifest: key, shard, index, seed, class_fractions, mean_entropy, mean_confidence
  shard-000000.json     done marker, written last: count, first and last key, tar bytes and sha256,
                        fingerprint, per-shard sums (and the writer's timings)
  dataset.json          the set's header and statistics (``DatasetInfo``)
A shard exists for readers only once its marker does: a shard is written tar, then manifest, then
marker, and every reader (the student stream, the driver's rerun, ``derive``) lists markers only.

Per sample (key ``SSSSSS-IIIIII``: shard id, index in shard):
  KEY.image.png  the SAR image, 8-bit grayscale PNG (the radiometry of the training data)
  KEY.soft.png   the soft label, K probability maps stacked vertically as one (K*H, W) 8-bit PNG
                 whose K values per pixel sum to exactly 255 (data/shards.py: quantise)
  KEY.json       seed, shard, index, class names, class_fractions, mean_entropy, mean_confidence

This module owns the member names, the key and file names, the marker name pattern, the
``dataset.json`` schema, per-set statistics and the divergence check, and ``ShardSet.derive`` (a new
set made from this one, resumable per shard). The bytes of one member and of one tar are the codec's
(data/shards.py), which only this module imports.

Reading treats every shard as hostile (docs/reliability.md, "Hostile shards"): markers and
dataset.json are type-checked, a tar's size is checked against its marker before it is read (and
its sha256 with verify="sha256"), members are capped in size from the set's ``SampleShape``, PNG
headers are checked before anything inflates, and every sample's record, sizes, class count and
level sums are checked. Every failure is a ShardError; one that spoils a single sample is a
SampleError, and the shard's other samples stay readable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dakter_scale.data import storage
from dakter_scale.data.sar_stats import SarCounts, enl_from_counts, finite_or_none, histogram_distance_counts
from dakter_scale.data.shards import QUANT_LEVELS, SampleError, ShardError, decode_png, dequantise, encode_png, png_shape, quantise, read_tar, write_tar

FORMAT = "dakter-shards/1"  # the shard format; part of every plan's fingerprint, so it changes only with the bytes
DATASET_FILE = "dataset.json"
IMAGE, SOFT, RECORD = "image.png", "soft.png", "json"
MEMBERS = (IMAGE, SOFT, RECORD)  # what every sample of a shard holds
_MEMBER_SET = frozenset(MEMBERS)
_RAW_KEYS = frozenset(("__key__", "__url__", *MEMBERS))  # a raw sample as read_tar yields it
MARKER_RE = re.compile(r"^shard-(\d{6,})\.json$")  # a done marker's file name: shard_name(s, "json")
MANIFEST_RE = re.compile(r"^shard-(\d{6,})\.parquet$")  # a shard's manifest: shard_name(s, "parquet")
CHECKED = "__record__"  # a sample's parsed, checked record, as ShardSet.read_checked leaves it in the sample
KEY_RE = re.compile(r"^(\d{6,})-(\d{6,})$")  # a sample key: sample_key(shard, index)
SHARD_PREFIX = "shard-"
IN_PROGRESS, COMPLETE, INCOMPLETE = "in progress", "complete", "incomplete"  # DatasetInfo.status
MIN_MEAN_CONFIDENCE = 0.5  # below this the soft labels are closer to uniform than to a segmentation
# SAR statistics warn when the generated ENL is outside this factor of the training images' or the
# grey-level histograms differ by more than this total variation (synthesis.enl_ratio_threshold,
# synthesis.histogram_threshold; chosen from the sampler frontier, docs/RESULTS.md)
ENL_RATIO_WARNING, HISTOGRAM_TV_WARNING = 2.0, 0.25
SAR = "sar"  # a marker's and a training record's SAR statistics (data/sar_stats.SarCounts as JSON)


def shard_name(shard: int, ext: str = "tar") -> str:
    return f"{SHARD_PREFIX}{shard:06d}.{ext}"


def sample_key(shard: int, index: int) -> str:
    return f"{shard:06d}-{index:06d}"


def parse_key(key: str) -> tuple[int, int]:
    match = KEY_RE.match(key) if isinstance(key, str) else None
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
        return {IMAGE: 2 * self.height * (self.width + 1) + 4096, SOFT: 2 * self.num_classes * self.height * (self.width + 1) + 4096, RECORD: record, "*": record}

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
        return _DECODER.decode(data.decode() if isinstance(data, (bytes, bytearray)) else data)  # UnicodeDecodeError is a ValueError
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
            and type(record["shard"]) is type(record["index"]) is type(record["seed"]) is type(record["num_classes"]) is int
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
        raise SampleError(f"sample {key}: {RECORD} names sample {record['key']!r} (shard {record['shard']}, index {record['index']})")
    k = record["num_classes"]
    if shape is not None and k != shape.num_classes:
        raise SampleError(f"sample {key}: {k} classes, the set has {shape.num_classes}")
    fractions = record["class_fractions"]
    if k < 1 or len(fractions) != k or not {type(v) for v in fractions} <= {int, float} or not math.isfinite(math.fsum(fractions)):
        raise SampleError(f"sample {key}: {RECORD} class_fractions is not {k} finite numbers")
    if not 0 <= record["mean_confidence"] <= 1 or record["mean_entropy"] < 0:
        raise SampleError(f"sample {key}: {RECORD} mean_confidence {record['mean_confidence']} or mean_entropy {record['mean_entropy']} out of range")
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


def decode_sample(sample: dict[str, Any], levels: bool = False, shape: SampleShape | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
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
        raise SampleError(f"sample {key}: soft-label levels sum to {sums[i, j]} at pixel ({i}, {j}), not {QUANT_LEVELS}")
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
        raise SampleError(f"sample {key} " + (f"lacks {', '.join(missing)}" if missing else f"holds an unexpected member {extra[0]!r}"))
    record = parse_record(sample[RECORD], key, shape)
    for member, want in ((IMAGE, (shape.height, shape.width)), (SOFT, (shape.num_classes * shape.height, shape.width))):
        try:
            got = png_shape(sample[member])
        except ShardError as e:
            raise SampleError(f"sample {key}: {member}: {e}") from None
        if got != want:
            raise SampleError(f"sample {key}: {member} is {got[0]}x{got[1]}, the set's ({shape}) is {want[0]}x{want[1]}")
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


def manifest_rows(keys: Sequence[str], seeds: Sequence[int], stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Manifest rows of a batch of pairs from their keys, seeds and soft_labels.sample_stats(q)."""
    rows = []
    for j, (key, seed) in enumerate(zip(keys, seeds)):
        shard, index = parse_key(key)
        rows.append(
            {
                "key": key,
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


def shard_marker(shard: int, rows: list[dict[str, Any]], tar_bytes: int, sha256: str, fingerprint: str | None, sar: SarCounts | None = None) -> dict[str, Any]:
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
    of the right type, another shard's id, or sums that are not finite numbers."""
    if not isinstance(marker, dict):
        return f"marker is a JSON {type(marker).__name__}, not an object"
    if not _integer(marker.get("count")) or marker["count"] < 0:
        return f"marker records no pair count (count {marker.get('count')!r})"
    if not _integer(marker.get("tar_bytes")) or marker["tar_bytes"] < 0:
        return f"marker records no tar size (tar_bytes {marker.get('tar_bytes')!r})"
    if not isinstance(marker.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", marker["sha256"]):
        return f"marker records no sha256 (sha256 {marker.get('sha256')!r})"
    if "shard" in marker and marker["shard"] != shard:
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


# -- per-set statistics and divergence ----------------------------------------------------------


def marker_stats(markers: dict[int, dict], num_classes: int) -> dict:
    """Dataset statistics (pairs, class fractions, mean confidence and entropy) from shard markers."""
    count = marker_count(markers.values())
    if count == 0:
        return {}
    fractions = np.zeros(num_classes)
    for m in markers.values():
        fractions += np.asarray(m["sum_class_fractions"], dtype=np.float64)
    out = {
        "pairs": count,
        "class_fractions": (fractions / count).tolist(),
        "mean_confidence": sum(m["sum_mean_confidence"] for m in markers.values()) / count,
        "mean_entropy": sum(m["sum_mean_entropy"] for m in markers.values()) / count,
    }
    sar = [SarCounts.from_json(m[SAR]) for m in markers.values() if SAR in m]
    if sar and len(sar) == len(markers) and len({c.window for c in sar}) == 1:  # every shard counted, alike
        total = sar[0]
        for c in sar[1:]:
            total = total.merge(c)
        out[SAR] = {**total.summary(), **total.to_json()}
    return out


def divergence(
    generated: dict,
    train_fractions: list[float] | None,
    threshold: float,
    train_sar: dict | None = None,
    enl_ratio: float = ENL_RATIO_WARNING,
    histogram_tv: float = HISTOGRAM_TV_WARNING,
    against: str = "the training data's",
) -> tuple[dict, list[str]]:
    """Compare the generated set with the training data; return the numbers and loud warnings.

    Warns when the total variation between the generated and training class pixel fractions,
    0.5 * sum_k |g_k - t_k|, exceeds `threshold`, when the mean max-probability of the soft labels
    is below MIN_MEAN_CONFIDENCE (the training labels are one-hot: max-probability 1), and, when the
    model folder recorded the training images' SAR statistics (`train_sar`), when the generated
    images' ENL is more than `enl_ratio` times or less than 1 / `enl_ratio` times the training
    images' (speckle smoothed away, or added) or their grey-level histograms differ by total
    variation above `histogram_tv`."""
    if not generated:
        return {}, []
    warnings = []
    out: dict[str, Any] = {"threshold": threshold, "min_mean_confidence": MIN_MEAN_CONFIDENCE, "mean_confidence": generated["mean_confidence"]}
    if train_fractions:
        name = "training" if against == "the training data's" else "target"
        tv = 0.5 * float(np.abs(np.asarray(generated["class_fractions"]) - np.asarray(train_fractions)).sum())
        out["class_fraction_tv"] = tv
        if tv > threshold:
            warnings.append(
                f"generated class pixel fractions differ from {against} by total variation {tv:.3f} > {threshold}: "
                f"generated {_fmt(generated['class_fractions'])} vs {name} {_fmt(train_fractions)}"
            )
    if generated["mean_confidence"] < MIN_MEAN_CONFIDENCE:
        warnings.append(
            f"mean max-probability of the soft labels is {generated['mean_confidence']:.3f} < {MIN_MEAN_CONFIDENCE}: "
            "the labels are close to uniform (a diverged or under-trained sampler)"
        )
    sar_warnings, out[SAR] = _sar_divergence(generated.get(SAR), train_sar, enl_ratio, histogram_tv)
    warnings += sar_warnings
    out["diverged"] = bool(warnings)
    return out, warnings


def _sar_divergence(generated: dict | None, train: dict | None, enl_ratio: float, histogram_tv: float) -> tuple[list[str], dict]:
    """The SAR part of the divergence check: (warnings, numbers), or a note saying why it was skipped."""
    if not train or SarCounts.problem(train):
        return [], {"note": "not checked: the model folder records no training-image SAR statistics (trained before they were recorded)"}
    if not generated:
        return [], {"note": "not checked: the shards record no SAR statistics (written before they were recorded, or derived)"}
    real, gen = SarCounts.from_json(train), SarCounts.from_json(generated)
    enl_real, enl_gen = enl_from_counts(real.enl), enl_from_counts(gen.enl)
    hist = histogram_distance_counts(gen.histogram, real.histogram) if gen.histogram.sum() and real.histogram.sum() else {"tv": math.nan, "w1": math.nan}
    numbers = {
        "enl_generated": finite_or_none(enl_gen),
        "enl_training": finite_or_none(enl_real),
        "enl_ratio_threshold": enl_ratio,
        "histogram_tv": finite_or_none(hist["tv"]),
        "histogram_w1": finite_or_none(hist["w1"]),
        "histogram_tv_threshold": histogram_tv,
    }
    warnings = []
    if real.window != gen.window:
        numbers["note"] = f"ENL not compared: windows of {gen.window} and {real.window} px"
    elif not (math.isfinite(enl_gen) and math.isfinite(enl_real) and enl_real > 0):
        numbers["note"] = "ENL not compared: no all-sea window in the generated or the training images"
    elif not 1 / enl_ratio <= enl_gen / enl_real <= enl_ratio:
        warnings.append(
            f"generated images have an equivalent number of looks of {enl_gen:.2f} against {enl_real:.2f} for the training images "
            f"(outside a factor {enl_ratio:g}): the speckle was {'smoothed away' if enl_gen > enl_real else 'strengthened'}"
        )
    if math.isfinite(hist["tv"]) and hist["tv"] > histogram_tv:
        warnings.append(f"generated grey-level histogram differs from the training images' by total variation {hist['tv']:.3f} > {histogram_tv} (1-Wasserstein {hist['w1']:.1f} grey levels)")
    return warnings, numbers


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


# -- dataset.json -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """``dataset.json``: what a shard set is, how it was made, and its statistics.

    ``format`` is the shard format version (FORMAT); a file of another version is refused. Every
    field but ``format`` is optional: a field left None is not written, so a set written by an older
    version (fewer fields) reads and writes back the same JSON, and keys this version does not know
    (e.g. ``relabel`` of sets written while relabelling existed) are kept in ``extra`` and written back.
    """

    format: str | None = FORMAT
    status: str | None = None  # IN_PROGRESS, COMPLETE or INCOMPLETE
    count: int | None = None  # pairs in finished shards
    fingerprint: str | None = None  # what makes the shards' bytes (synth.plan.fingerprint, or a derived set's own)
    classes: list[str] | None = None
    resolution: int | None = None
    # the plan
    planned: int | None = None
    samples_per_shard: int | None = None
    num_shards: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    seed_rule: str | None = None
    # the model and the sampler
    model: str | None = None  # the model folder
    model_hash: str | None = None
    b: float | None = None
    prediction_type: str | None = None
    radiometry: str | None = None
    sampler: str | None = None
    steps: int | None = None
    sampling: dict | None = None  # config.SamplingConfig as a dict
    code_version: str | None = None
    # statistics: the training data's, the set's (marker_stats), and their comparison (divergence)
    train_stats: dict | None = None
    generated_stats: dict | None = None
    divergence: dict | None = None
    warnings: list[str] | None = None
    # how a derived set was made from its source (synth/filter.py)
    filter: dict | None = None
    # targeted synthesis (synth/targeted.py): {"version", "spec", "route", "shares", "training",
    # "achieved", "met", "cost", ...}; absent in sets written without a target (and before it existed)
    target: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def check_settings(self) -> dict[str, Any]:
        """How this set's divergence was checked (threshold, the training images' SAR statistics and
        the SAR limits), as ShardSet.finish's keywords: a set derived from it (filtered) is checked the same way."""
        div = self.divergence or {}
        sar = div.get(SAR) or {}
        return {
            "threshold": float(div.get("threshold", 0.1)),
            "train_sar": (self.train_stats or {}).get(SAR),
            "enl_ratio": float(sar.get("enl_ratio_threshold", ENL_RATIO_WARNING)),
            "histogram_tv": float(sar.get("histogram_tv_threshold", HISTOGRAM_TV_WARNING)),
        }

    def replace(self, **changes: Any) -> "DatasetInfo":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra" and getattr(self, f.name) is not None}
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, obj: Any, where: str = DATASET_FILE) -> "DatasetInfo":
        """Read a dataset.json object; a wrong format version or a field of the wrong type is a ShardError naming `where`."""
        if not isinstance(obj, dict):
            raise ShardError(f"{where}: not a JSON object")
        if obj.get("format") not in (None, FORMAT):
            raise ShardError(f"{where}: shard format {obj['format']!r} is not {FORMAT!r}, the one this code reads")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for name, types in _FIELD_TYPES.items():
            value = obj.get(name)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise ShardError(f"{where}: {name} must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
        classes = obj.get("classes")
        if classes is not None and (not classes or not all(isinstance(c, str) for c in classes)):
            raise ShardError(f"{where}: classes must be a non-empty list of names, got {classes!r}")
        for name in ("resolution", "count", "samples_per_shard", "num_shards"):
            if obj.get(name) is not None and obj[name] < (1 if name == "resolution" else 0):
                raise ShardError(f"{where}: {name} must be {'>= 1' if name == 'resolution' else '>= 0'}, got {obj[name]}")
        if obj.get("b") is not None and not math.isfinite(obj["b"]):
            raise ShardError(f"{where}: b must be a finite number, got {obj['b']}")
        values = {k: v for k, v in obj.items() if k in known}
        return cls(**{"format": None, **values}, extra={k: v for k, v in obj.items() if k not in known})


_FIELD_TYPES = {
    "status": (str,),
    "count": (int,),
    "fingerprint": (str,),
    "classes": (list,),
    "resolution": (int,),
    "planned": (int,),
    "samples_per_shard": (int,),
    "num_shards": (int,),
    "batch_size": (int,),
    "seed": (int,),
    "b": (int, float),
    "steps": (int,),
    "sampling": (dict,),
    "train_stats": (dict,),
    "generated_stats": (dict,),
    "divergence": (dict,),
    "warnings": (list,),
    "filter": (dict,),
    "target": (dict,),
}


def stats_lines(info: DatasetInfo) -> list[str]:
    """The set's class fractions and confidence beside the training data's, for a run's summary."""
    gen, train, div = info.generated_stats, info.train_stats or {}, info.divergence or {}
    if not gen:
        return []
    out = [f"  class pixel fractions  generated {_fmt(gen['class_fractions'])}  (all {gen['pairs']} pairs in the dataset)"]
    target = info.target or {}
    if target.get("reference"):  # a targeted set is compared with its target's class mix
        out.append(f"                         training  {_fmt(train['class_fractions'])}")
        out.append(f"                         target    {_fmt(target['reference'])}  total variation {div.get('class_fraction_tv', float('nan')):.3f} (warn > {div.get('threshold')})")
    elif train.get("class_fractions"):
        out.append(f"                         training  {_fmt(train['class_fractions'])}  total variation {div.get('class_fraction_tv', float('nan')):.3f} (warn > {div.get('threshold')})")
    out.append(f"  mean max-probability   generated {gen['mean_confidence']:.3f}, training 1 (hard labels) (warn < {MIN_MEAN_CONFIDENCE})")
    sar = div.get(SAR) or {}
    if "enl_generated" in sar:
        enl = ", ".join(f"{name} {'–' if v is None else f'{v:.2f}'}" for name, v in (("generated", sar["enl_generated"]), ("training", sar["enl_training"])))
        out.append(f"  ENL (sea windows)      {enl} (warn outside a factor {sar['enl_ratio_threshold']:g})")
        if sar["histogram_tv"] is not None:
            out.append(f"  grey-level histogram   total variation {sar['histogram_tv']:.3f}, 1-Wasserstein {sar['histogram_w1']:.1f} grey levels (warn > {sar['histogram_tv_threshold']})")
    if sar.get("note"):
        out.append(f"  SAR statistics: {sar['note']}")
    if target.get("shares"):
        achieved = target.get("achieved") or {}
        parts = [f"{name} {achieved.get(name, float('nan')):.4f} (target {share:.4f})" for name, share in target["shares"].items()]
        out.append(f"  class target {target.get('spec')} by {target.get('route')}: " + ", ".join(parts) + ("  met" if target.get("met") else "  NOT MET"))
        if target.get("cost"):
            out.append(f"  cost: {target['cost'].get('pairs_drawn_per_kept_pair', float('nan')):.2f} pairs drawn per pair kept")
    if info.warnings:
        out.append(f"  WARNING: the generated data diverges from the training data ({len(info.warnings)} warning(s) above)")
    return out


# -- the set ------------------------------------------------------------------------------------


class ShardSet:
    """A shard set at an fsspec URL (a local folder, s3://bucket/prefix, ...): its header, its
    finished shards, writing a shard, reading one back with its checks, and deriving a new set."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = storage.url_to_fs(url)

    def __repr__(self) -> str:
        return f"ShardSet({self.url!r})"

    def path(self, name: str) -> str:
        return storage.join(self.root, name)

    def tar_url(self, shard: int) -> str:
        return storage.full_url(self.fs, self.path(shard_name(shard, "tar")))

    # -- dataset.json

    def info(self) -> DatasetInfo | None:
        """The set's dataset.json, or None when it has none."""
        path = self.path(DATASET_FILE)
        self.fs.invalidate_cache(self.root)
        if not self.fs.exists(path):
            return None
        where = storage.full_url(self.fs, path)
        try:
            obj = load_json(self.fs.cat_file(path))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN
            raise ShardError(f"{where}: not valid JSON ({e})") from None
        return DatasetInfo.from_json(obj, where)

    def write_info(self, info: DatasetInfo) -> None:
        storage.write_json(self.fs, self.path(DATASET_FILE), info.to_json())

    def finish(
        self,
        header: DatasetInfo,
        markers: dict[int, dict],
        *,
        threshold: float,
        reference: Sequence[float] | None = None,
        train_sar: dict | None = None,
        enl_ratio: float = ENL_RATIO_WARNING,
        histogram_tv: float = HISTOGRAM_TV_WARNING,
        against: str = "the training data's",
        status: str = COMPLETE,
        samples_per_shard: int | None = None,
        add_warnings: Sequence[str] = (),
        keep_warnings: bool = False,
        **fields: Any,
    ) -> tuple[DatasetInfo, list[str]]:
        """Write the dataset.json of a set whose shards are written, the one way every tool finishes a
        set (synthesis, the filter, targeted synthesis): `header` with the pair count of `markers` (the
        set's own, trusted), their statistics (marker_stats), the divergence check of those against
        `reference` (default: the header's training class fractions) and `train_sar` (divergence),
        `status`, the divergence's warnings followed by `add_warnings` (keep_warnings: the header's own
        list, as a filtered set has always carried its source's), and `fields`. samples_per_shard: a set
        derived from another, planned as the pairs it holds in shards of this size. Returns (the header
        written, the divergence's warnings)."""
        count = marker_count(markers.values())
        generated = marker_stats(markers, len(header.classes or []))
        fractions = reference or (header.train_stats or {}).get("class_fractions")
        div, warnings = divergence(generated, fractions, threshold, train_sar, enl_ratio, histogram_tv, against)
        if samples_per_shard is not None:
            fields.update(planned=count, samples_per_shard=samples_per_shard, num_shards=-(-count // samples_per_shard))
        kept = header.warnings if keep_warnings else warnings + list(add_warnings)
        info = header.replace(status=status, count=count, generated_stats=generated, divergence=div, warnings=kept, **fields)
        self.write_info(info)
        return info, warnings

    # -- side files: what a tool keeps beside the shards (the filter's scores, a study's throughput)

    def _side(self, name: str) -> str:
        if "/" in name or name in (DATASET_FILE, "") or name.startswith((SHARD_PREFIX, "lock-", ".")):
            raise ValueError(f"{name!r} is not a side file's name: the shard set owns shard-*, dataset.json and lock-*")  # an invariant of the callers
        return self.path(name)

    def write_side(self, name: str, data: bytes) -> None:
        """A file beside the shards, written atomically (storage.write_bytes), at any fsspec URL."""
        storage.write_bytes(self.fs, self._side(name), data)

    def read_side(self, name: str) -> bytes | None:
        """A side file's bytes, or None when the set has none of that name."""
        path = self._side(name)
        self.fs.invalidate_cache(self.root)
        return self.fs.cat_file(path) if self.fs.exists(path) else None

    # -- listing and markers

    def listing(self) -> dict[str, dict]:
        """{name: info} of the files directly under the set's root, read fresh from storage."""
        return storage.list_dir(self.fs, self.root)

    def read_markers(self, listing: dict[str, dict] | None = None) -> tuple[dict[int, ShardInfo], dict[int, str]]:
        """(finished shards by id, unreadable markers by id with the reason). Markers are the files
        whose whole name is a marker's (MARKER_RE), each checked by marker_problem."""
        listing = self.listing() if listing is None else listing
        names = sorted(n for n, entry in listing.items() if MARKER_RE.match(n) and entry.get("type") != "directory")
        blobs = self.fs.cat([self.path(n) for n in names]) if names else {}
        done: dict[int, ShardInfo] = {}
        unreadable: dict[int, str] = {}
        for path, blob in blobs.items():
            shard = int(MARKER_RE.match(posixpath.basename(path)).group(1))
            try:
                marker = load_json(blob)
            except ValueError:
                unreadable[shard] = "marker is not valid JSON"
                continue
            problem = marker_problem(marker, shard)
            if problem:
                unreadable[shard] = problem
            else:
                done[shard] = ShardInfo(shard, self.tar_url(shard), marker["count"], marker)
        return dict(sorted(done.items())), dict(sorted(unreadable.items()))

    def marker_url(self, shard: int) -> str:
        return storage.full_url(self.fs, self.path(shard_name(shard, "json")))

    def done(self) -> list[ShardInfo]:
        """Every finished shard (its marker exists), in shard order. An unreadable marker is a ShardError."""
        done, unreadable = self.read_markers()
        if unreadable:
            shard, reason = next(iter(unreadable.items()))
            raise ShardError(f"{self.marker_url(shard)}: {reason}")
        return list(done.values())

    def check(self, info: ShardInfo, listing: dict[str, dict], fingerprint: str | None, verify: str = "size") -> str | None:
        """What is wrong with a finished shard against its marker, or None: another fingerprint, a
        missing tar or manifest, a tar of another size (or, with verify="sha256", another hash)."""
        m, tar_name = info.marker, shard_name(info.shard, "tar")
        if m.get("fingerprint") not in (None, fingerprint):
            return f"marker's fingerprint {m.get('fingerprint')} is not the dataset's {fingerprint}"
        if tar_name not in listing:
            return "marker present but the tar is missing"
        if int(listing[tar_name].get("size", -1)) != int(m["tar_bytes"]):
            return f"marker present but the tar has {listing[tar_name].get('size')} bytes, the marker records {m['tar_bytes']}"
        if shard_name(info.shard, "parquet") not in listing:
            return "marker present but the parquet manifest is missing"
        if verify == "sha256" and self._sha256(self.path(tar_name)) != m["sha256"]:
            return "marker present but the tar's sha256 differs from the marker's"
        return None

    def _sha256(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()

    def remove_marker(self, shard: int) -> None:
        """Make a shard not done (before rewriting it, so that no reader trusts it meanwhile)."""
        path = self.path(shard_name(shard, "json"))
        if self.fs.exists(path):
            self.fs.rm(path)

    def clear(self) -> None:
        """Remove every shard and dataset.json, markers first, so no reader trusts a shard being removed."""
        listing = self.listing()
        for name in sorted(listing, key=lambda n: (not MARKER_RE.match(n), n)):
            if name.startswith(SHARD_PREFIX) or name == DATASET_FILE:
                self.fs.rm(self.path(name), recursive=listing[name].get("type") == "directory")

    def remove_temporaries(self, min_age: float = 0.0) -> list[str]:
        """The temporary files killed local writers left (shards', dataset.json's, the lock's) that
        nothing has written to for min_age seconds (0: all; only when no writer can be active)."""
        if not storage.is_local(self.fs):
            return []
        return storage.remove_temporaries(self.fs, self.root, prefixes=(SHARD_PREFIX, DATASET_FILE, "lock-"), min_age=min_age)

    # -- writing

    def write_tar(self, shard: int, samples: Iterable[tuple[str, dict[str, bytes]]]) -> tuple[int, str]:
        """Stream a shard's encoded samples (key order) into its tar; (bytes, sha256). Not done yet: see finish_shard."""
        with storage.open_atomic(self.fs, self.path(shard_name(shard, "tar"))) as f:
            return write_tar(f, samples)

    def finish_shard(
        self, shard: int, rows: list[dict[str, Any]], tar_bytes: int, sha256: str, fingerprint: str | None, extra: dict | None = None, sar: SarCounts | None = None
    ) -> dict:
        """After write_tar: the manifest, then, last, the done marker (with `extra` fields and the
        shard's SAR statistics). Returns the marker.

        Locally each file is fsynced, and its folder after the rename, before the next is written
        (storage.open_atomic), so after a power loss a marker never stands beside a short tar or
        manifest; on object stores a completed upload is already durable."""
        self.write_parquet(shard_name(shard, "parquet"), manifest_table(rows))
        marker = {**shard_marker(shard, rows, tar_bytes, sha256, fingerprint, sar), **(extra or {})}
        storage.write_json(self.fs, self.path(shard_name(shard, "json")), marker)
        return marker

    def write_shard(self, shard: int, samples: list[tuple[str, dict[str, bytes]]], rows: list[dict[str, Any]], fingerprint: str | None) -> dict:
        """Write one whole shard of encoded samples: tar, manifest, marker. Returns the marker."""
        nbytes, sha = self.write_tar(shard, samples)
        return self.finish_shard(shard, rows, nbytes, sha, fingerprint)

    def write_parquet(self, name: str, table: pa.Table) -> None:
        """A Parquet file beside the shards (a manifest, or e.g. the filter's scores: a side file)."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(self.fs, self.path(name) if MANIFEST_RE.match(name) else self._side(name), buf.getvalue())

    # -- reading

    def sample_shape(self, infos: Sequence[ShardInfo] | None = None, header: DatasetInfo | None = None) -> SampleShape:
        """What every sample of this set must be: the resolution and classes of dataset.json (`header`,
        read here when not given), and what it lacks from the first shard (in `infos`, default done())
        whose first sample has a well-formed image and soft label (its headers only: nothing inflates;
        its class count agreeing with the shard's marker). Every other shard must then agree."""
        header = self.info() if header is None else header
        k = len(header.classes) if header and header.classes else None
        if header and header.resolution and k:
            return SampleShape(header.resolution, header.resolution, k)
        problems = []
        for info in self.done() if infos is None else infos:
            try:
                with fsspec.open(info.tar, "rb") as stream:
                    sample = next(read_tar(stream, info.tar), None)
                if sample is None or IMAGE not in sample or SOFT not in sample:
                    raise ShardError("its first sample lacks an image or a soft label")
                h, w = png_shape(sample[IMAGE])
                stacked, width = png_shape(sample[SOFT])
                marker_k = len(info.marker.get("sum_class_fractions") or []) or None
                shard_k = k or marker_k or stacked // h
                if width != w or stacked != shard_k * h or (marker_k or shard_k) != shard_k:
                    raise ShardError(f"its first sample's image ({h}x{w}) and soft label ({stacked}x{width}) do not hold {shard_k} class maps")
                if header and header.resolution and (h, w) != (header.resolution,) * 2:
                    raise ShardError(f"its first sample is {h}x{w}, dataset.json says {header.resolution} px")
                return SampleShape(h, w, shard_k)
            except Exception as e:  # a missing object, a hostile first sample: try the next shard
                problems.append(f"shard {info.tar}: {e}")
        raise ShardError(f"{self.url}: no finished shard to learn the sample size from" + (f" ({problems[0]})" if problems else ""))

    def read_checked(self, info: ShardInfo, shape: SampleShape, verify: str = "size") -> Iterator[dict | SampleError]:
        """The raw samples ({"__key__", "__url__", member: bytes}) of one finished shard, in key order,
        each checked against `shape` (check_sample, its parsed record left under CHECKED for
        decode_sample and read_record), with a SampleError in line for each bad one.

        Before anything is read, the tar's size (from the opened object) must be its marker's
        tar_bytes, and with verify="sha256" its hash the marker's (a first pass over the object);
        while reading, members are capped (SampleShape.member_limit) and keys must belong to this
        shard, below its count, in increasing order. The shard's own problems raise a ShardError
        naming it: the size or hash, a torn, corrupt or oversized tar, another count than its marker's
        (bad samples count), after the samples read before the damage.
        """
        if verify not in ("size", "sha256"):
            raise ValueError(f"verify must be size or sha256, got {verify!r}")
        expected = info.marker.get("tar_bytes")
        with fsspec.open(info.tar, "rb") as stream:
            size = getattr(stream, "size", None)  # local: fstat; object stores: the size the open reported
            size = size if isinstance(size, int) else self.fs.size(self.path(shard_name(info.shard, "tar")))
            if expected is not None and size != expected:
                raise ShardError(f"shard {info.tar}: the tar has {size} bytes, its marker records {expected}")
            if verify == "sha256":
                digest = hashlib.sha256()
                for chunk in iter(lambda: stream.read(1 << 22), b""):
                    digest.update(chunk)
                if digest.hexdigest() != info.marker.get("sha256"):
                    raise ShardError(f"shard {info.tar}: the tar's sha256 differs from its marker's")
                stream.seek(0)
            seen, previous, error = 0, -1, None  # previous: the index of the last good key
            torn: SampleError | None = None  # a sample lacking members: reported unless the tar's own error explains it
            try:
                for sample in read_tar(stream, info.tar, shape.member_limits()):
                    seen += 1
                    key = sample["__key__"]
                    if torn is not None:
                        yield torn
                        torn = None
                    if not _MEMBER_SET <= sample.keys():
                        torn = SampleError(f"shard {info.tar}: sample {key} lacks {', '.join(m for m in MEMBERS if m not in sample)}")
                        continue
                    try:
                        index = previous + 1
                        if key != sample_key(info.shard, index):  # not the next key, as written: which is it?
                            shard, index = parse_key(key)
                            if shard != info.shard or index >= info.count:
                                raise SampleError(f"sample {key}: not one of shard {info.shard}'s {info.count} keys")
                            if index <= previous:  # a repeated key would train a pair twice
                                raise SampleError(f"sample {key}: out of key order (a repeated or misplaced key)")
                        elif index >= info.count:
                            raise SampleError(f"sample {key}: not one of shard {info.shard}'s {info.count} keys")
                        previous = index
                        sample[CHECKED] = check_sample(sample, shape)
                    except ShardError as e:
                        yield SampleError(f"shard {info.tar}: {e}")
                        continue
                    yield sample
                if torn is not None:
                    yield torn
            except ShardError as e:
                error = f"shard {info.tar}: {e}"
        if error is None and seen != info.count:
            error = f"shard {info.tar}: holds {seen} samples, its marker records {info.count}"
        if error:
            raise ShardError(error)

    def read(self, info: ShardInfo, shape: SampleShape | None = None, verify: str = "size") -> Iterator[dict]:
        """The good samples of one finished shard (read_checked; `shape` default: the set's). Bad
        samples are skipped; after the last sample, a ShardError reports the shard's own problem, or
        else the first bad sample."""
        first_bad = None
        for sample in self.read_checked(info, shape or self.sample_shape(), verify):
            if isinstance(sample, SampleError):
                first_bad = first_bad or sample
            else:
                yield sample
        if first_bad is not None:
            raise first_bad

    def samples(self) -> Iterator[dict]:
        """Every raw sample of every finished shard, in key order."""
        infos = self.done()
        shape = self.sample_shape(infos) if infos else None
        for info in infos:
            yield from self.read(info, shape)

    def manifest(self) -> pa.Table:
        """The per-sample manifest of all finished shards as one Arrow table."""
        tables = []
        for info in self.done():
            with self.fs.open(self.path(shard_name(info.shard, "parquet")), "rb") as f:
                tables.append(pq.read_table(f))
        return pa.concat_tables(tables) if tables else manifest_table([])

    # -- a set made from this one

    def derive(
        self,
        destination: str,
        transform: Callable[[str, dict], dict],
        fingerprint: str,
        samples_per_shard: int,
        keys: Sequence[str] | None = None,
    ) -> dict[int, dict]:
        """Write a new set at `destination` from this set's pairs `keys` (default: all), in that order,
        renumbered into shards of samples_per_shard. Image and soft-label members are copied byte for
        byte; each pair's JSON record gains transform(source_key, record) and its new key.

        Resumable per shard: a destination that holds this derivation (its dataset.json has this
        fingerprint and shard size) keeps every shard whose marker has this fingerprint and the
        planned count, and only the source shards that the missing ones need are read again; a
        destination holding anything else is cleared first. dataset.json is left "in progress" with
        the set's identity: the caller writes the finished header. Returns the markers by shard.
        """
        sources = {info.shard: info for info in self.done()}
        shape = self.sample_shape(list(sources.values())) if sources else None
        keys = list(keys) if keys is not None else [sample_key(i.shard, j) for i in sources.values() for j in range(i.count)]
        layout = [keys[i : i + samples_per_shard] for i in range(0, len(keys), samples_per_shard)]
        dst = ShardSet(destination)
        try:
            existing = dst.info()
        except ShardError:
            existing = None
        if existing is None or existing.fingerprint != fingerprint or existing.samples_per_shard != samples_per_shard:
            dst.clear()
        source = self.info() or DatasetInfo()
        dst.write_info(DatasetInfo(status=IN_PROGRESS, fingerprint=fingerprint, samples_per_shard=samples_per_shard, classes=source.classes, resolution=source.resolution))

        finished, unreadable = dst.read_markers()
        markers: dict[int, dict] = {}
        for shard, info in finished.items():
            if shard < len(layout) and info.marker.get("fingerprint") == fingerprint and info.count == len(layout[shard]):
                markers[shard] = info.marker
        for shard in sorted(set(finished) | set(unreadable)):  # stale: not done any more before anything is written
            if shard not in markers:
                dst.remove_marker(shard)

        todo = {key: shard for shard, shard_keys in enumerate(layout) if shard not in markers for key in shard_keys}
        waiting: dict[int, dict[str, dict]] = {}
        for source_shard in sorted({parse_key(k)[0] for k in todo}):
            if source_shard not in sources:
                raise ShardError(f"{self.url}: shard {source_shard} is not finished (no marker), but pairs to derive are in it")
            for sample in self.read(sources[source_shard], shape):
                shard = todo.get(sample["__key__"])
                if shard is None:
                    continue
                waiting.setdefault(shard, {})[sample["__key__"]] = sample
                if len(waiting[shard]) == len(layout[shard]):
                    markers[shard] = dst._write_derived(shard, [waiting[shard][k] for k in layout[shard]], transform, fingerprint)
                    del waiting[shard]
        if waiting:
            shard = min(waiting)
            missing = [k for k in layout[shard] if k not in waiting[shard]]
            raise ShardError(f"{self.url} holds no pair {missing[0]} ({len(missing)} of the pairs to derive are missing)")
        return dict(sorted(markers.items()))

    def _write_derived(self, shard: int, samples: list[dict], transform: Callable[[str, dict], dict], fingerprint: str) -> dict:
        members, rows = [], []
        for index, sample in enumerate(samples):
            key = sample_key(shard, index)
            record = read_record(sample)
            record = dict(record, **transform(sample["__key__"], record), key=key, shard=shard, index=index)
            members.append((key, {IMAGE: sample[IMAGE], SOFT: sample[SOFT], RECORD: _record_bytes(record)}))
            rows.append(manifest_row(record))
        return self.write_shard(shard, members, rows, fingerprint)
