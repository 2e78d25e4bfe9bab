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
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import posixpath
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from dakter_scale.data import storage
from dakter_scale.data.shards import ShardError, decode_png, dequantise, encode_png, quantise, read_tar, write_tar

FORMAT = "dakter-shards/1"  # the shard format; part of every plan's fingerprint, so it changes only with the bytes
DATASET_FILE = "dataset.json"
IMAGE, SOFT, RECORD = "image.png", "soft.png", "json"
MEMBERS = (IMAGE, SOFT, RECORD)  # what every sample of a shard holds
MARKER_RE = re.compile(r"^shard-(\d{6,})\.json$")  # a done marker's file name: shard_name(s, "json")
SHARD_PREFIX = "shard-"
IN_PROGRESS, COMPLETE, INCOMPLETE = "in progress", "complete", "incomplete"  # DatasetInfo.status
MIN_MEAN_CONFIDENCE = 0.5  # below this the soft labels are closer to uniform than to a segmentation


def shard_name(shard: int, ext: str = "tar") -> str:
    return f"{SHARD_PREFIX}{shard:06d}.{ext}"


def sample_key(shard: int, index: int) -> str:
    return f"{shard:06d}-{index:06d}"


def parse_key(key: str) -> tuple[int, int]:
    try:
        s, i = key.split("-")
        return int(s), int(i)
    except ValueError:
        raise ShardError(f"sample key {key!r} is not SHARD-INDEX") from None


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


def decode_sample(sample: dict[str, Any], levels: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """Inverse of encode_sample over a sample dict whose values are bytes (webdataset without a decoder).

    Returns image uint8 (H, W), q float32 (K, H, W) summing to 1 (or, with levels=True, the stored
    uint8 levels summing to 255: dequantise them), and the metadata.
    """
    key = sample.get("__key__", "?")
    try:
        meta = json.loads(sample[RECORD])
        image = decode_png(sample[IMAGE])
        stacked = decode_png(sample[SOFT])
    except KeyError as e:
        raise ShardError(f"sample {key}: missing member {e.args[0]!r}") from None
    except (OSError, ValueError, zlib.error, struct.error) as e:
        raise ShardError(f"sample {key}: undecodable member ({e})") from None
    k = int(meta["num_classes"])
    h, w = image.shape
    if stacked.shape != (k * h, w):
        raise ShardError(f"sample {key}: soft label of shape {stacked.shape} does not hold {k} maps of {h}x{w}")
    stacked = stacked.reshape(k, h, w)
    return image, (stacked if levels else dequantise(stacked)), meta


def read_record(sample: dict[str, Any]) -> dict[str, Any]:
    """A raw sample's JSON record alone (no image decoding)."""
    return json.loads(sample[RECORD])


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


def shard_marker(shard: int, rows: list[dict[str, Any]], tar_bytes: int, sha256: str, fingerprint: str | None) -> dict[str, Any]:
    """The done marker of a written shard: what it holds, its tar's size and hash, the manifest sums."""
    return {
        "shard": shard,
        "count": len(rows),
        "first_key": rows[0]["key"],
        "last_key": rows[-1]["key"],
        "tar_bytes": tar_bytes,
        "sha256": sha256,
        "fingerprint": fingerprint,
        **manifest_sums(rows),
    }


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
    return {
        "pairs": count,
        "class_fractions": (fractions / count).tolist(),
        "mean_confidence": sum(m["sum_mean_confidence"] for m in markers.values()) / count,
        "mean_entropy": sum(m["sum_mean_entropy"] for m in markers.values()) / count,
    }


def divergence(generated: dict, train_fractions: list[float] | None, threshold: float) -> tuple[dict, list[str]]:
    """Compare the generated set with the training data; return the numbers and loud warnings.

    Warns when the total variation between the generated and training class pixel fractions,
    0.5 * sum_k |g_k - t_k|, exceeds `threshold`, or when the mean max-probability of the soft labels
    is below MIN_MEAN_CONFIDENCE (the training labels are one-hot: max-probability 1)."""
    if not generated:
        return {}, []
    warnings = []
    out: dict[str, Any] = {"threshold": threshold, "min_mean_confidence": MIN_MEAN_CONFIDENCE, "mean_confidence": generated["mean_confidence"]}
    if train_fractions:
        tv = 0.5 * float(np.abs(np.asarray(generated["class_fractions"]) - np.asarray(train_fractions)).sum())
        out["class_fraction_tv"] = tv
        if tv > threshold:
            warnings.append(
                f"generated class pixel fractions differ from the training data's by total variation {tv:.3f} > {threshold}: "
                f"generated {_fmt(generated['class_fractions'])} vs training {_fmt(train_fractions)}"
            )
    if generated["mean_confidence"] < MIN_MEAN_CONFIDENCE:
        warnings.append(
            f"mean max-probability of the soft labels is {generated['mean_confidence']:.3f} < {MIN_MEAN_CONFIDENCE}: "
            "the labels are close to uniform (a diverged or under-trained sampler)"
        )
    out["diverged"] = bool(warnings)
    return out, warnings


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
    extra: dict = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

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
}


def derived_stats(markers: dict[int, dict], source: DatasetInfo) -> tuple[dict, dict, list[str]]:
    """(generated_stats, divergence, warnings) of a set made from `source` (e.g. filtered), from its
    own shard markers, against the same training data and threshold."""
    generated = marker_stats(markers, len(source.classes or []))
    threshold = float((source.divergence or {}).get("threshold", 0.1))
    div, warnings = divergence(generated, (source.train_stats or {}).get("class_fractions"), threshold)
    return generated, div, warnings


def stats_lines(info: DatasetInfo) -> list[str]:
    """The set's class fractions and confidence beside the training data's, for a run's summary."""
    gen, train, div = info.generated_stats, info.train_stats or {}, info.divergence or {}
    if not gen:
        return []
    out = [f"  class pixel fractions  generated {_fmt(gen['class_fractions'])}  (all {gen['pairs']} pairs in the dataset)"]
    if train.get("class_fractions"):
        out.append(f"                         training  {_fmt(train['class_fractions'])}  total variation {div.get('class_fraction_tv', float('nan')):.3f} (warn > {div.get('threshold')})")
    out.append(f"  mean max-probability   generated {gen['mean_confidence']:.3f}, training 1 (hard labels) (warn < {MIN_MEAN_CONFIDENCE})")
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
            obj = storage.read_json(self.fs, path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ShardError(f"{where}: not valid JSON ({e})") from None
        return DatasetInfo.from_json(obj, where)

    def write_info(self, info: DatasetInfo) -> None:
        storage.write_json(self.fs, self.path(DATASET_FILE), info.to_json())

    # -- listing and markers

    def listing(self) -> dict[str, dict]:
        """{name: info} of the files directly under the set's root, read fresh from storage."""
        return storage.list_dir(self.fs, self.root)

    def read_markers(self, listing: dict[str, dict] | None = None) -> tuple[dict[int, ShardInfo], dict[int, str]]:
        """(finished shards by id, unreadable markers by id with the reason)."""
        listing = self.listing() if listing is None else listing
        names = sorted(n for n in listing if MARKER_RE.match(n))
        blobs = self.fs.cat([self.path(n) for n in names]) if names else {}
        done: dict[int, ShardInfo] = {}
        unreadable: dict[int, str] = {}
        for path, blob in blobs.items():
            shard = int(MARKER_RE.match(posixpath.basename(path)).group(1))
            try:
                marker = json.loads(blob)
                done[shard] = ShardInfo(shard, self.tar_url(shard), int(marker["count"]), marker)
            except (json.JSONDecodeError, UnicodeDecodeError):
                unreadable[shard] = "marker is not valid JSON"
            except (KeyError, TypeError, ValueError):
                unreadable[shard] = "marker records no pair count"
        return dict(sorted(done.items())), dict(sorted(unreadable.items()))

    def done(self) -> list[ShardInfo]:
        """Every finished shard (its marker exists), in shard order. An unreadable marker is a ShardError."""
        done, unreadable = self.read_markers()
        if unreadable:
            shard, reason = next(iter(unreadable.items()))
            raise ShardError(f"{storage.full_url(self.fs, self.path(shard_name(shard, 'json')))}: {reason}")
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

    def remove_temporaries(self) -> list[str]:
        """The temporary files killed local writers left (call when no writer is active)."""
        return storage.remove_temporaries(self.fs, self.root, prefix=SHARD_PREFIX) if storage.is_local(self.fs) else []

    # -- writing

    def write_tar(self, shard: int, samples: Iterable[tuple[str, dict[str, bytes]]]) -> tuple[int, str]:
        """Stream a shard's encoded samples (key order) into its tar; (bytes, sha256). Not done yet: see finish_shard."""
        with storage.open_atomic(self.fs, self.path(shard_name(shard, "tar"))) as f:
            return write_tar(f, samples)

    def finish_shard(self, shard: int, rows: list[dict[str, Any]], tar_bytes: int, sha256: str, fingerprint: str | None, extra: dict | None = None) -> dict:
        """After write_tar: the manifest, then, last, the done marker (with `extra` fields). Returns the marker.

        Locally each file is fsynced, and its folder after the rename, before the next is written
        (storage.open_atomic), so after a power loss a marker never stands beside a short tar or
        manifest; on object stores a completed upload is already durable."""
        self.write_parquet(shard_name(shard, "parquet"), manifest_table(rows))
        marker = {**shard_marker(shard, rows, tar_bytes, sha256, fingerprint), **(extra or {})}
        storage.write_json(self.fs, self.path(shard_name(shard, "json")), marker)
        return marker

    def write_shard(self, shard: int, samples: list[tuple[str, dict[str, bytes]]], rows: list[dict[str, Any]], fingerprint: str | None) -> dict:
        """Write one whole shard of encoded samples: tar, manifest, marker. Returns the marker."""
        nbytes, sha = self.write_tar(shard, samples)
        return self.finish_shard(shard, rows, nbytes, sha, fingerprint)

    def write_parquet(self, name: str, table: pa.Table) -> None:
        """A Parquet file beside the shards (a manifest, or e.g. the filter's scores)."""
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(self.fs, self.path(name), buf.getvalue())

    # -- reading

    def read(self, info: ShardInfo) -> Iterator[dict]:
        """The raw samples ({"__key__", "__url__", member: bytes}) of one finished shard, in key order.

        Whole samples are yielded as they are read; then a ShardError naming the shard reports the
        first problem: a torn or corrupt tar, a sample lacking a member (skipped), or another count
        of samples than its marker records. Errors opening or reading the object are raised as they come.
        """
        problems: list[str] = []
        seen = 0
        with fsspec.open(info.tar, "rb") as stream:
            try:
                for sample in read_tar(stream, info.tar):
                    missing = [m for m in MEMBERS if m not in sample]
                    if missing:
                        problems.append(f"sample {sample['__key__']} lacks {', '.join(missing)}")
                        continue
                    seen += 1
                    yield sample
            except ShardError as e:  # the tar's own error names the cause: report it first
                problems.insert(0, str(e))
        if not problems and seen != info.count:
            problems.append(f"holds {seen} samples, its marker records {info.count}")
        if problems:
            raise ShardError(f"shard {info.tar}: {problems[0]}")

    def samples(self) -> Iterator[dict]:
        """Every raw sample of every finished shard, in key order."""
        for info in self.done():
            yield from self.read(info)

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
            for sample in self.read(sources[source_shard]):
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
