"""A set's health: its statistics from the shard markers (class fractions, confidence, entropy,
SAR counts) and the divergence check against the training data or a target's class mix (the summary
lines that show them are DatasetInfo.summary_lines)."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from dakter_scale.data.sar_stats import SarCounts, enl_from_counts, finite_or_none, histogram_distance_counts
from dakter_scale.data.shardset.codec import ShardError
from dakter_scale.data.shardset.header import format_fractions
from dakter_scale.data.shardset.records import (
    CLASS_SHARE_FLOOR,
    CLASS_SHARE_RATIO_WARNING,
    ENL_RATIO_WARNING,
    HISTOGRAM_TV_WARNING,
    MIN_MEAN_CONFIDENCE,
    SAR,
    marker_count,
    shard_name,
)

# -- per-set statistics and divergence ----------------------------------------------------------


def marker_stats(markers: dict[int, dict], num_classes: int, where: Callable[[int], str] | None = None) -> dict:
    """Dataset statistics (pairs, class fractions, mean confidence and entropy) from shard markers.
    A marker without the sums, or with one class-fraction sum per class of another class count, is a
    ShardError naming the marker (where(shard); default its file name) and the field."""
    count = marker_count(markers.values())
    if count == 0:
        return {}
    for shard, m in markers.items():
        problem = sums_problem(m, num_classes)
        if problem:
            raise ShardError(f"{where(shard) if where else shard_name(shard, 'json')}: {problem}")
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


def sums_problem(marker: dict, num_classes: int) -> str | None:
    """What keeps a marker's sums out of marker_stats, or None (marker_problem has checked their types
    where present; not that they are present, nor the number of classes)."""
    for name in ("sum_class_fractions", "sum_mean_confidence", "sum_mean_entropy"):
        if name not in marker:
            return f"{name} is missing"
    sums = marker["sum_class_fractions"]
    if not isinstance(sums, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sums):
        return "sum_class_fractions is not a list of numbers"
    if len(sums) != num_classes:
        return f"sum_class_fractions has {len(sums)} values, not one per class ({num_classes})"
    for name in ("sum_mean_confidence", "sum_mean_entropy"):
        if not isinstance(marker[name], (int, float)) or isinstance(marker[name], bool):
            return f"{name} is {marker[name]!r}, not a number"
    return None


def divergence(
    generated: dict,
    train_fractions: list[float] | None,
    threshold: float,
    train_sar: dict | None = None,
    enl_ratio: float = ENL_RATIO_WARNING,
    histogram_tv: float = HISTOGRAM_TV_WARNING,
    against: str = "the training data's",
    *,
    class_share_ratio: float = CLASS_SHARE_RATIO_WARNING,
    classes: Sequence[str] | None = None,
) -> tuple[dict, list[str]]:
    """Compare the generated set with the training data; return the numbers and loud warnings.

    Warns when the total variation between the generated and training class pixel fractions,
    0.5 * sum_k |g_k - t_k|, exceeds `threshold`, when the mean max-probability of the soft labels
    is below MIN_MEAN_CONFIDENCE (the training labels are one-hot: max-probability 1), and, when the
    model folder recorded the training images' SAR statistics (`train_sar`), when the generated
    images' ENL is more than `enl_ratio` times or less than 1 / `enl_ratio` times the training
    images' (speckle smoothed away, or added) or their grey-level histograms differ by total
    variation above `histogram_tv`. Every class holding at least CLASS_SHARE_FLOOR of the reference's
    pixels warns when its generated share is under its reference share divided by `class_share_ratio`:
    a vanishing rare class moves the total variation by its own small share only (named from
    `classes` when given, else by index)."""
    if not generated:
        return {}, []
    warnings = []
    out: dict[str, Any] = {
        "threshold": threshold,
        "min_mean_confidence": MIN_MEAN_CONFIDENCE,
        "mean_confidence": generated["mean_confidence"],
    }
    if train_fractions:
        name = "training" if against == "the training data's" else "target"
        tv = 0.5 * float(np.abs(np.asarray(generated["class_fractions"]) - np.asarray(train_fractions)).sum())
        out["class_fraction_tv"] = tv
        if tv > threshold:
            warnings.append(
                f"generated class pixel fractions differ from {against} by total variation {tv:.3f} > {threshold}: "
                f"generated {format_fractions(generated['class_fractions'])} vs {name} {format_fractions(train_fractions)}"
            )
    share_warnings, out["class_shares"] = _class_share_divergence(
        generated["class_fractions"], train_fractions, class_share_ratio, classes, against
    )
    warnings += share_warnings
    if generated["mean_confidence"] < MIN_MEAN_CONFIDENCE:
        warnings.append(
            f"mean max-probability of the soft labels is {generated['mean_confidence']:.3f} < {MIN_MEAN_CONFIDENCE}: "
            "the labels are close to uniform (a diverged or under-trained sampler)"
        )
    sar_warnings, out[SAR] = _sar_divergence(generated.get(SAR), train_sar, enl_ratio, histogram_tv)
    warnings += sar_warnings
    out["diverged"] = bool(warnings)
    return out, warnings


def _class_share_divergence(
    generated: Sequence[float],
    reference: Sequence[float] | None,
    ratio: float,
    classes: Sequence[str] | None,
    against: str,
) -> tuple[list[str], dict]:
    """The rare-class part of the divergence check: (warnings, numbers). Only a class under-produced
    warns: producing more of a rare class than the reference is what balancing and class targets do."""
    numbers: dict[str, Any] = {"ratio_threshold": ratio, "floor": CLASS_SHARE_FLOOR, "checked": []}
    if not reference:
        numbers["note"] = "not checked: no reference class fractions"
        return [], numbers
    where = against.removesuffix("'s")  # "the training data's" -> "in the training data"
    warnings = []
    for k, (gen, ref) in enumerate(zip(generated, reference)):
        if ref < CLASS_SHARE_FLOOR:
            continue
        name = classes[k] if classes and k < len(classes) else None
        numbers["checked"].append({"class": k, "name": name, "generated": float(gen), "reference": float(ref)})
        if gen < ref / ratio:
            warnings.append(
                f"generated pairs hold {name or f'class {k}'} at {100 * gen:.2f} % of pixels against {100 * ref:.2f} % "
                f"in {where} (under a factor {ratio:g}): the sampler is losing this class"
            )
    return warnings, numbers


def _sar_divergence(
    generated: dict | None, train: dict | None, enl_ratio: float, histogram_tv: float
) -> tuple[list[str], dict]:
    """The SAR part of the divergence check: (warnings, numbers), or a note saying why it was skipped."""
    if not train or SarCounts.problem(train):
        return [], {
            "note": "not checked: the model folder records no training-image SAR statistics (trained before they were recorded)"
        }
    if not generated:
        return [], {
            "note": "not checked: the shards record no SAR statistics (written before they were recorded, or derived)"
        }
    real, gen = SarCounts.from_json(train), SarCounts.from_json(generated)
    enl_real, enl_gen = enl_from_counts(real.enl), enl_from_counts(gen.enl)
    hist = (
        histogram_distance_counts(gen.histogram, real.histogram)
        if gen.histogram.sum() and real.histogram.sum()
        else {"tv": math.nan, "w1": math.nan}
    )
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
        warnings.append(
            f"generated grey-level histogram differs from the training images' by total variation {hist['tv']:.3f} > {histogram_tv} (1-Wasserstein {hist['w1']:.1f} grey levels)"
        )
    return warnings, numbers
