"""The instance bank's format: instances cut from generated pairs, kept as a shard set.

An instance bank (synth/bank.py writes it) is an ordinary shard set (data/shardset/: tars, manifests,
done markers, dataset.json; the stock webdataset reader reads it) whose samples are instances, not
pairs. This module is the one owner of what an instance sample holds:

  KEY.image.png  the source pair's image at the instance's pixels (its region), 0 elsewhere
  KEY.soft.png   the source pair's soft label at the region (the levels copied), all sea (class 0) elsewhere
  KEY.json       the shard set's record fields (``seed``: the source pair's seed, so the pair, and the
                 instance cut from it, can be rebuilt from (seed, shard, index) of the source set; the
                 class fractions, entropy and confidence of the region) and ``instance``:
                   class      the class name
                   bbox       [y0, x0, h, w] of the region in the pair
                   mask       the region within its bbox: numpy.packbits of the (h, w) bool array, row
                              major, base64
                   core       pixels of the confident component (the region holds it and its soft edge)
                   area       pixels of the region
                   sea        the source pair's sea level (median image value where its label is sea)
                   judge      the real-only judge's agreement with the instance (IoU, synth/bank.py)
                   source_key, component   the source pair's key and the component's number in it

dataset.json carries ``instances`` (BANK_FORMAT, the source set, the judge, the cut's settings, the
per-class counts). Bank records are hostile input like any shard's: the shard set checks the members,
PNG headers, sizes, class count and levels (ShardSet.read_checked); ``parse_instance`` checks the
instance fields (class, bbox inside the image, mask of exactly its size, area, numbers finite and in
range) and a bad record is a BankError naming the sample.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dakter_scale.data.shardset import (
    SampleError,
    SampleShape,
    ShardError,
    ShardSet,
    decode_sample,
    dequantise,
    encode_sample,
)
from dakter_scale.errors import UserError

BANK_FORMAT = "dakter-instances/1"
INSTANCE = "instance"  # the record's field holding the instance
BANK_FIELD = "instances"  # dataset.json's field describing the bank
MAX_NAME = 64  # characters of a class name or source key


class BankError(UserError, ValueError):
    """An instance bank that cannot be read or used; the message names the bank (and the sample)."""


@dataclass(frozen=True)
class Instance:
    """One banked instance, cropped to its bbox: what copy-paste pastes (core.compose.paste_soft)."""

    key: str  # its key in the bank
    cls: int  # class index
    image: np.ndarray  # (h, w) uint8
    q: np.ndarray  # (K, h, w) float32 soft label
    region: np.ndarray  # (h, w) bool: the pixels pasted
    sea: float  # its pair's sea level
    record: dict  # the "instance" fields as stored

    def donor(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The form core.compose.paste_soft takes."""
        return self.image, self.q, self.region, self.sea


def pack_mask(region: np.ndarray) -> str:
    return base64.b64encode(np.packbits(np.asarray(region, bool), axis=None).tobytes()).decode()


def bbox(region: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of a non-empty (H, W) bool array."""
    ys, xs = np.nonzero(region)
    return int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def encode_instance(
    key: str,
    image: np.ndarray,
    levels: np.ndarray,
    region: np.ndarray,
    classes: list[str],
    fields: dict[str, Any],
    meta: dict[str, Any],
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """One instance as a shard sample: (members, manifest row). image (H, W) uint8 and levels (K, H, W)
    uint8 are the source pair's; region (H, W) bool the instance's pixels. fields: the instance's
    record (class, core, sea, judge, source_key, component); meta: the record's seed. Its bbox, mask and
    area, and the region's statistics, are computed here."""
    k = levels.shape[0]
    canvas = np.where(region, image, 0).astype(np.uint8)
    soft = np.zeros_like(levels)
    soft[0] = 255
    soft[:, region] = levels[:, region]
    y0, x0, h, w = bbox(region)
    q = dequantise(levels[:, region])  # (K, n) over the region
    fractions = np.bincount(np.argmax(q, axis=0), minlength=k)[:k] / q.shape[1]
    entropy = -(np.where(q > 0, q * np.log(np.maximum(q, 1e-12)), 0.0)).sum(axis=0)
    shard, index = ShardSet.parse_key(key)
    row = {
        "key": key,
        "shard": shard,
        "index": index,
        "seed": int(meta["seed"]),
        "class_fractions": [float(v) for v in fractions],
        "mean_entropy": float(entropy.mean()),
        "mean_confidence": float(q.max(axis=0).mean()),
    }
    record = dict(
        fields,
        bbox=[y0, x0, h, w],
        mask=pack_mask(region[y0 : y0 + h, x0 : x0 + w]),
        area=int(np.count_nonzero(region)),
    )
    members = encode_sample(key, canvas, dequantise(soft), dict(row, classes=list(classes), **{INSTANCE: record}))
    return members, row


def _number(value: Any, low: float, high: float) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )


def _integer(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_instance(sample: dict, shape: SampleShape, classes: list[str]) -> Instance:
    """A checked instance sample (from ShardSet.read) -> Instance, cropped to its bbox; every field is
    checked as hostile (module docstring): a SampleError names the sample and the field."""
    key = sample.get("__key__", "?")
    image, levels, meta = decode_sample(sample, levels=True, shape=shape)
    rec = meta.get(INSTANCE)

    def bad(what: str) -> SampleError:
        return SampleError(f"sample {key}: instance {what}")

    if not isinstance(rec, dict):
        raise bad(f"record is missing or not an object (field {INSTANCE!r})")
    name = rec.get("class")
    if not isinstance(name, str) or len(name) > MAX_NAME or name not in classes[1:]:
        raise bad(f"class {str(name)[:MAX_NAME]!r} is not one of {', '.join(classes[1:])}")
    box = rec.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_integer(v, 0, 1 << 20) for v in box)):
        raise bad(f"bbox {str(box)[:80]} is not four integers")
    y0, x0, h, w = box
    if h < 1 or w < 1 or y0 + h > shape.height or x0 + w > shape.width:
        raise bad(f"bbox {box} is not inside the {shape.height}x{shape.width} image")
    text = rec.get("mask")
    size = (h * w + 7) // 8
    if not isinstance(text, str) or len(text) != 4 * ((size + 2) // 3):
        raise bad(f"mask is not the base64 of {size} bytes")
    try:
        bits = np.frombuffer(base64.b64decode(text, validate=True), np.uint8)
    except (binascii.Error, ValueError):
        raise bad("mask is not base64") from None
    if bits.size != size:
        raise bad(f"mask holds {bits.size} bytes, its bbox needs {size}")
    flat = np.unpackbits(bits)
    if flat[h * w :].any():
        raise bad("mask sets bits past its bbox")
    region = flat[: h * w].reshape(h, w).astype(bool)
    area = int(region.sum())
    if not _integer(rec.get("area"), 1, h * w) or rec["area"] != area:
        raise bad(f"area {rec.get('area')!r} is not the mask's {area} pixels")
    if not _integer(rec.get("core"), 1, area):
        raise bad(f"core {rec.get('core')!r} is not a pixel count in [1, {area}]")
    if not _number(rec.get("sea"), 0, 255) or not _number(rec.get("judge"), 0, 1):
        raise bad(f"sea {rec.get('sea')!r} or judge {rec.get('judge')!r} out of range")
    source = rec.get("source_key")
    if not isinstance(source, str) or len(source) > MAX_NAME or not _integer(rec.get("component"), 1, 1 << 20):
        raise bad("provenance (source_key, component) is malformed")
    try:
        ShardSet.parse_key(source)
    except ShardError:
        raise bad(f"source_key {source!r} is not SHARD-INDEX") from None
    window = (slice(y0, y0 + h), slice(x0, x0 + w))
    return Instance(
        key,
        classes.index(name),
        image[window].copy(),
        dequantise(levels[(slice(None),) + window]),
        region,
        float(rec["sea"]),
        rec,
    )


def bank_info(url: str) -> dict:
    """A bank's dataset.json as a dict, its ``instances`` record checked for the format; BankError otherwise."""
    try:
        info = ShardSet(url).info()
    except ShardError as e:
        raise BankError(f"instance bank {url}: {e}") from None
    record = (info.extra or {}).get(BANK_FIELD) if info is not None else None
    if not isinstance(record, dict) or record.get("format") != BANK_FORMAT:
        raise BankError(
            f"{url} is not an instance bank (its dataset.json has no {BANK_FIELD!r} record of format {BANK_FORMAT}); build one with jobs/bank_instances.py"
        )
    if not info.classes or not info.resolution:
        raise BankError(f"instance bank {url}: dataset.json names no classes or resolution")
    return info.to_json()


def read_bank(url: str, classes: list[str], limit: int = 0, resolution: int | None = None) -> list[Instance]:
    """The first `limit` instances of a bank in key order (0: all), each checked (parse_instance).
    A bank of other classes or (given) another resolution than the data's, a bad shard or a bad record
    is a BankError naming it: a bank is read whole before training, so it is refused rather than partly
    used, and its instances would be pasted at another scale."""
    info = bank_info(url)
    if list(info["classes"]) != list(classes):
        raise BankError(f"instance bank {url} has classes {info['classes']}, the data {list(classes)}")
    if resolution is not None and info["resolution"] != resolution:
        raise BankError(
            f"instance bank {url} was cut from {info['resolution']} px pairs, the data is {resolution} px: "
            "its instances would be pasted at another scale"
        )
    bank = ShardSet(url)
    shape = SampleShape(info["resolution"], info["resolution"], len(classes))
    out: list[Instance] = []
    try:
        for shard in bank.done():
            if shard.marker.get("fingerprint") != info.get("fingerprint"):
                raise BankError(f"instance bank {url}: shard {shard.shard} is not this bank's (another fingerprint)")
            # read_checked, not read: read reports a bad sample only at the shard's end, after the limit
            for sample in bank.read_checked(shard, shape):
                if isinstance(sample, SampleError):
                    raise sample
                out.append(parse_instance(sample, shape, list(classes)))
                if limit and len(out) >= limit:
                    return out
    except ShardError as e:
        raise BankError(f"instance bank {url}: {e}") from None
    return out
