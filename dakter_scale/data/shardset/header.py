"""dataset.json: the set's header (DatasetInfo), typed and versioned; older files read and write
back unchanged."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from dakter_scale.data.shardset.codec import ShardError
from dakter_scale.data.shardset.records import (
    CLASS_SHARE_RATIO_WARNING,
    COMPLETE,
    DATASET_FILE,
    ENL_RATIO_WARNING,
    FORMAT,
    HISTOGRAM_TV_WARNING,
    MIN_MEAN_CONFIDENCE,
    SAR,
)

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
    # where it was read from, for messages (from_json's `where`); never written, never compared
    where: str = field(default=DATASET_FILE, compare=False, repr=False)

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def check_settings(self) -> dict[str, Any]:
        """How this set's divergence was checked (threshold, the training images' SAR statistics, the
        SAR limits and the rare-class factor), as ShardSet.finish's keywords: a set derived from it
        (filtered) is checked the same way. A set written before a limit was recorded gets its default.
        A value of the wrong type (a hostile or hand-edited source) is a ShardError naming the file and field."""
        div = self.divergence or {}
        sar = self._section(div, SAR)
        shares = self._section(div, "class_shares")
        return {
            "threshold": self._limit(div, "threshold", 0.1),
            "train_sar": (self.train_stats or {}).get(SAR),
            "enl_ratio": self._limit(sar, "enl_ratio_threshold", ENL_RATIO_WARNING, f"{SAR}.", positive=True),
            "histogram_tv": self._limit(sar, "histogram_tv_threshold", HISTOGRAM_TV_WARNING, f"{SAR}."),
            "class_share_ratio": self._limit(
                shares, "ratio_threshold", CLASS_SHARE_RATIO_WARNING, "class_shares.", positive=True
            ),
        }

    def _section(self, div: dict, name: str) -> dict:
        value = div.get(name)
        if value is not None and not isinstance(value, dict):
            raise ShardError(f"{self.where}: divergence.{name} must be an object, got {value!r}")
        return value or {}

    def _limit(self, section: dict, name: str, default: float, prefix: str = "", positive: bool = False) -> float:
        """A threshold of the divergence check as a float; `positive`: a ratio, used as a divisor."""
        value = section.get(name, default)
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or (positive and value <= 0)
        ):
            kind = "a positive finite number" if positive else "a finite number"
            raise ShardError(f"{self.where}: divergence.{prefix}{name} must be {kind}, got {value!r}")
        return float(value)

    def summary_lines(self) -> list[str]:
        """The set's class fractions and confidence beside the training data's, for a run's summary."""
        gen, train, div = self.generated_stats, self.train_stats or {}, self.divergence or {}
        if not gen:
            return []
        out = [
            f"  class pixel fractions  generated {format_fractions(gen['class_fractions'])}  (all {gen['pairs']} pairs in the dataset)"
        ]
        target = self.target or {}
        if target.get("reference"):  # a targeted set is compared with its target's class mix
            out.append(f"                         training  {format_fractions(train['class_fractions'])}")
            out.append(
                f"                         target    {format_fractions(target['reference'])}  total variation {div.get('class_fraction_tv', float('nan')):.3f} (warn > {div.get('threshold')})"
            )
        elif train.get("class_fractions"):
            out.append(
                f"                         training  {format_fractions(train['class_fractions'])}  total variation {div.get('class_fraction_tv', float('nan')):.3f} (warn > {div.get('threshold')})"
            )
        shares = div.get("class_shares") or {}
        if shares.get("checked"):  # the class furthest under its reference share
            worst = min(shares["checked"], key=lambda c: c["generated"] / c["reference"])
            out.append(
                f"  class share ratio      {worst.get('name') or 'class ' + str(worst['class'])} {worst['generated'] / worst['reference']:.2f}: "
                f"generated {100 * worst['generated']:.2f} %, reference {100 * worst['reference']:.2f} % of pixels "
                f"(the lowest of the classes >= {100 * shares['floor']:g} %; warn < 1/{shares['ratio_threshold']:g})"
            )
        out.append(
            f"  mean max-probability   generated {gen['mean_confidence']:.3f}, training 1 (hard labels) (warn < {MIN_MEAN_CONFIDENCE})"
        )
        sar = div.get(SAR) or {}
        if "enl_generated" in sar:
            enl = ", ".join(
                f"{name} {'–' if v is None else f'{v:.2f}'}"
                for name, v in (("generated", sar["enl_generated"]), ("training", sar["enl_training"]))
            )
            out.append(f"  ENL (sea windows)      {enl} (warn outside a factor {sar['enl_ratio_threshold']:g})")
            if sar["histogram_tv"] is not None:
                out.append(
                    f"  grey-level histogram   total variation {sar['histogram_tv']:.3f}, 1-Wasserstein {sar['histogram_w1']:.1f} grey levels (warn > {sar['histogram_tv_threshold']})"
                )
        if sar.get("note"):
            out.append(f"  SAR statistics: {sar['note']}")
        if target.get("shares"):
            achieved = target.get("achieved") or {}
            parts = [
                f"{name} {achieved.get(name, float('nan')):.4f} (target {share:.4f})"
                for name, share in target["shares"].items()
            ]
            out.append(
                f"  class target {target.get('spec')} by {target.get('route')}: "
                + ", ".join(parts)
                + ("  met" if target.get("met") else "  NOT MET")
            )
            if target.get("cost"):
                out.append(
                    f"  cost: {target['cost'].get('pairs_drawn_per_kept_pair', float('nan')):.2f} pairs drawn per pair kept"
                )
        if self.warnings:
            out.append(
                f"  WARNING: the generated data diverges from the training data ({len(self.warnings)} warning(s) above)"
            )
        return out

    def replace(self, **changes: Any) -> "DatasetInfo":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("extra", "where") and getattr(self, f.name) is not None
        }
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, obj: Any, where: str = DATASET_FILE) -> "DatasetInfo":
        """Read a dataset.json object; a wrong format version or a field of the wrong type is a ShardError naming `where`."""
        if not isinstance(obj, dict):
            raise ShardError(f"{where}: not a JSON object")
        if obj.get("format") not in (None, FORMAT):
            raise ShardError(f"{where}: shard format {obj['format']!r} is not {FORMAT!r}, the one this code reads")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "where"}
        for name, types in _FIELD_TYPES.items():
            value = obj.get(name)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                raise ShardError(f"{where}: {name} must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
        classes = obj.get("classes")
        if classes is not None and (not classes or not all(isinstance(c, str) for c in classes)):
            raise ShardError(f"{where}: classes must be a non-empty list of names, got {classes!r}")
        for name in ("resolution", "count", "samples_per_shard", "num_shards"):
            if obj.get(name) is not None and obj[name] < (1 if name == "resolution" else 0):
                raise ShardError(
                    f"{where}: {name} must be {'>= 1' if name == 'resolution' else '>= 0'}, got {obj[name]}"
                )
        if obj.get("b") is not None and not math.isfinite(obj["b"]):
            raise ShardError(f"{where}: b must be a finite number, got {obj['b']}")
        values = {k: v for k, v in obj.items() if k in known}
        return cls(**{"format": None, **values}, extra={k: v for k, v in obj.items() if k not in known}, where=where)


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


def format_fractions(values) -> str:
    """Class fractions as a short list for a log line: [0.9012, 0.0500, ...]."""
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
