"""Targeted synthesis: n generated pairs whose pooled per-class pixel shares meet a class target.

``jobs/synthesize.py ... --class-target oil:3x,ship:3x`` (the grammar and the arithmetic are
synth/target.py's). Three routes, compared in docs/journal/results-history.md ("Targeted synthesis"):

selection    Draw more pairs than needed with the joint model, by the ordinary plan (pair seeds,
             shards, resumable) into a draw set beside the output (OUT_all by default); keep the n
             whose pooled class_fractions (the manifest's) meet the target (target.select); write them
             as a new set with ShardSet.derive (image and soft label copied byte for byte, each record
             gaining source_key). Before any sampling, the draw the real training masks' per-image
             shares imply is the first try, and a target they cannot meet within max_draw_factor is
             refused. After each draw, the draw's own (measured) acceptance decides the next: it grows,
             reusing its finished shards, until the selection meets the target, or stops with a warning
             when even max_draw_factor would not do.
conditioned  Draw exactly n pairs, each image given a label map composed from a real training mask
             with real regions of the targeted classes pasted in (target.pair_mask, from the pair's
             seed), by replacement conditioning of the joint model (diffusion/sample.py given_label):
             no retraining. The soft label is the model's own estimate (decoded x0_hat), as always.
pasted       Draw exactly n pairs jointly, each given real instances of the targeted classes at some
             pixels, image and label together (target.pair_paste: real training pairs' regions of
             those classes, moved, one instance at a time where it fits, until the class covers the
             target share), by replacement at those pixels only (diffusion/sample.py given_image,
             given_where), the pasted image moved to the drawn pair's sea level after every step
             (given_sea, synthesis.target.sea). The instances are placed after synthesis.target.paste_at of the
             steps, onto the sea of the layout those steps fixed, counting what it holds (sample_pairs
             place). The model draws the rest of the pair around them and harmonises the edges. The
             image shows what the label says at the pasted pixels because both are real there; the
             conditioned route's images did not show small pasted structures (docs/journal/results-history.md).

In every route dataset.json's ``target`` records the spec, route, shares asked for, training shares,
achieved shares (argmax of the soft labels, the manifest's class_fractions), whether it was met, and
the cost (pairs drawn per pair kept, sampling seconds per pair kept); the divergence check compares
the set with the target's class mix (ClassTarget.reference) instead of the training data's; a
target not met is a loud warning in the log, the summary and dataset.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dakter_scale.cards import write_dataset_card
from dakter_scale.config import DRAWN_SUFFIX, SamplingConfig, SynthesisConfig, TargetConfig
from dakter_scale.data.lease import Lease, LeaseError
from dakter_scale.data.real import open_source, whole_pairs
from dakter_scale.data.shardset import DatasetInfo, ShardError, ShardSet
from dakter_scale.data.storage import redact_url
from dakter_scale.diffusion.model import check_model_folder
from dakter_scale.diffusion.sample import check_resample
from dakter_scale.synth import target as tgt
from dakter_scale.synth.run import Summary, synthesize
from dakter_scale.synth.target import ClassTarget, Condition, TargetError

log = logging.getLogger("dakter_scale")


def model_target(model_dir: str | Path, spec: str) -> tuple[ClassTarget, dict]:
    """The parsed target against a model folder's classes and training shares, and its dakter.json."""
    info = json.loads((Path(check_model_folder(model_dir)) / "dakter.json").read_text())
    training = (info.get("train_stats") or {}).get("class_fractions")
    if not training:
        raise TargetError(
            f"--class-target: model folder {model_dir} records no training class fractions (train_stats.class_fractions in dakter.json)"
        )
    return tgt.parse_class_target(spec, info["classes"], training), info


def training_pairs(model_info: dict, max_images: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The real training pairs at the model's resolution (whole images resized, no flips), from the
    data spec recorded in the model folder: (images, masks), each (N, R, R) uint8."""
    return whole_pairs(open_source(model_info["data_spec"]), int(model_info["resolution"]), "train", max_images)


def check_max_draw_factor(value: float) -> float:
    if not (math.isfinite(value) and value >= 1):
        raise TargetError(f"--max-draw-factor must be a number >= 1 (pairs drawn per pair kept), got {value}")
    return float(value)


def check_route_resample(resample: int, route: str, sampler: str) -> None:
    """--resample: RePaint's resampling for a route that replaces, with a sampler whose steps keep no state."""
    if resample != 1 and route not in tgt.DRAWN_ROUTES:
        raise TargetError(
            f"--resample {resample} applies to --target-route {' or '.join(tgt.DRAWN_ROUTES)} only (the {route} route draws pairs jointly)"
        )
    try:
        check_resample(resample, sampler)
    except ValueError as e:
        raise TargetError(f"--class-target, {route} route: {e}") from None


def check_reachable(condition: Condition) -> np.ndarray:
    """What the condition gives the pairs, pooled (K,), or TargetError when it falls short of its target."""
    c = condition
    return tgt.check_composable(c.route, c.images, c.masks, c.target, c.max_pastes, by_component=c.by_component)


def prepare_target(
    model_dir: str | Path, cfg: TargetConfig, sampler: str = "ddim", steps: int | None = None
) -> tuple[ClassTarget, Condition | None, dict]:
    """Every check of a targeted run (synthesis.target) that needs no sampling: the spec against the
    model, the route, the draw bound, resampling against the route and sampler, and for the conditioned
    and pasted routes whether what they give the pairs reaches the target. Returns (target, what those
    routes give each pair, from the real training pairs, or None for selection, what the check found)."""
    tgt.check_route(cfg.route)
    check_max_draw_factor(cfg.max_draw_factor)
    check_route_resample(cfg.resample, cfg.route, sampler)
    if cfg.route in tgt.DRAWN_ROUTES and steps is not None and cfg.free_steps >= steps - 1:
        # otherwise each sampling batch failed in its worker: at least one step must replace what is given
        raise TargetError(
            f"synthesis.target.free_steps {cfg.free_steps} leaves no step of the {steps} sampling steps to replace "
            f"what the {cfg.route} route gives (free_steps must be < steps - 1)"
        )
    target, info = model_target(model_dir, cfg.spec)
    if cfg.route == "selection":
        return target, None, {"draw_factor": "measured on the first draw of n pairs"}
    condition = Condition.from_config(cfg, target, *training_pairs(info))
    return target, condition, {"given_shares": target.named(check_reachable(condition))}


def dry_run(model_dir: str | Path, cfg: TargetConfig, sampler: str = "ddim") -> dict:
    """--dry-run of a targeted run (prepare_target's checks): the shares asked for, the training data's,
    and what the checks estimate. Samples nothing."""
    target, _, estimate = prepare_target(model_dir, cfg, sampler)
    return {
        "class_target": cfg.spec,
        "route": cfg.route,
        "shares": target.named([dict(target.shares).get(c, 0.0) for c in range(len(target.classes))]),
        "training": target.named(target.training),
        **estimate,
    }


def dry_run_lines(plan: dict) -> list[str]:
    """dry_run's plan as lines: the shares asked for beside the training shares, then the estimate."""
    shares = ", ".join(f"{k} {v:.4f} (training {plan['training'][k]:.4f})" for k, v in plan["shares"].items())
    fixed = ("class_target", "route", "shares", "training")
    return [f"class target {plan['class_target']} by {plan['route']}: {shares}"] + [
        f"  {key}: {value}" for key, value in plan.items() if key not in fixed
    ]


@dataclass
class TargetedResult:
    """What a targeted run did: the sampling run's summary (the draw's, for selection) and the
    targeted set's dataset.json."""

    route: str
    summary: Summary
    info: DatasetInfo
    out: str

    @property
    def ok(self) -> bool:
        return self.summary.ok

    def lines(self) -> list[str]:
        if self.route != "selection" or not self.info.target:  # drawn given something, or a draw that failed
            return self.summary.lines()
        return (
            [f"selection draw: {line.strip()}" if i == 0 else line for i, line in enumerate(self.summary.lines())]
            + [
                f"targeted set {redact_url(self.out)}: {self.info.count} pairs selected from {self.info.target['drawn']} drawn"
            ]
            + self.info.summary_lines()
        )


def _record(target: ClassTarget, route: str, achieved: list[float], cost: dict, **extra) -> tuple[dict, list[str]]:
    met = target.met(achieved)
    record = {
        "version": tgt.FORMAT,
        "spec": target.spec,
        "route": route,
        "shares": target.named([dict(target.shares).get(c, 0.0) for c in range(len(target.classes))]),
        "written": {target.classes[c]: w for c, w in target.written},
        "training": target.named(target.training),
        "achieved": target.named(achieved),
        "achieved_all": {name: float(v) for name, v in zip(target.classes, achieved)},
        "met": met,
        "reference": target.reference(),  # the class mix the divergence check compares with
        "cost": cost,
        **extra,
    }
    warnings = [] if met else [f"class target {target.spec} not met by {route}: {', '.join(target.missed(achieved))}"]
    return record, warnings


def _warn(warnings: list[str]) -> None:
    for w in warnings:
        log.warning("!" * 78)
        log.warning("TARGET NOT MET: %s", w)
        log.warning("!" * 78)


def _sampling_seconds(markers) -> float:
    return float(sum(m.get("seconds", 0.0) for m in markers))


def by_conditioning(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    condition: Condition,
    **run_kwargs,
) -> TargetedResult:
    """cfg.n pairs drawn given composed label maps (route conditioned) or pasted real instances
    (route pasted), as `condition` says (module docstring; checked reachable first); dataset.json
    gains `target`."""
    route, target = condition.route, condition.target
    check_route_resample(condition.resample, route, sampling.sampler)
    check_reachable(condition)
    summary = synthesize(
        model_dir, out_url, cfg, sampling, condition=condition, reference=target.reference(), **run_kwargs
    )
    out = ShardSet(out_url)
    info = out.info()
    if not summary.ok or info is None or not info.generated_stats:
        return TargetedResult(route, summary, info or DatasetInfo(), out_url)
    markers = [i.marker for i in out.done()]
    achieved = list(info.generated_stats["class_fractions"])
    cost = {
        "pairs_drawn": info.count,
        "pairs_kept": info.count,
        "pairs_drawn_per_kept_pair": 1.0,
        "sampling_seconds_per_kept_pair": _sampling_seconds(markers) / max(1, info.count),
    }
    record, warnings = _record(target, route, achieved, cost, **condition.record())
    _warn(warnings)
    info = info.replace(target=record, warnings=(info.warnings or []) + warnings)
    with _lease(out_url, cfg, f"targeted synthesis ({route}): the target record") as lease:  # synthesize gave it back
        now = out.info()  # another run may have taken the prefix since this run's draw gave it back
        if now is None or now.fingerprint != summary.dataset.get("fingerprint") or info.fingerprint != now.fingerprint:
            raise LeaseError(
                f"{redact_url(out_url)}: another run wrote this prefix after the draw finished (its dataset.json is "
                f"{'gone' if now is None else 'of fingerprint ' + str(now.fingerprint)}): the target record is not written"
            )
        lease.check()
        out.write_info(info)
        write_dataset_card(out_url)
    summary.dataset = info.to_json()
    return TargetedResult(route, summary, info, out_url)


def _manifest(draw: ShardSet) -> tuple[list[str], np.ndarray]:
    table = draw.manifest()
    return table.column("key").to_pylist(), np.array(table.column("class_fractions").to_pylist(), dtype=np.float64)


def by_selection(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    target: ClassTarget,
    draw_url: str | None = None,
    **run_kwargs,
) -> TargetedResult:
    """cfg.n pairs selected from a larger draw, at most cfg.target.max_draw_factor per pair kept
    (module docstring); dataset.json gains `target`."""
    max_draw_factor = cfg.target.max_draw_factor
    draw_url = draw_url or out_url.rstrip("/") + DRAWN_SUFFIX
    factor, n = 1.0, cfg.n
    try:
        earlier = ShardSet(draw_url).info()
    except ShardError:
        earlier = None
    first = None
    if (
        earlier is not None and earlier.planned and earlier.planned > factor * n
    ):  # a rerun after the draw grew: start where it ended
        factor = min(max_draw_factor, earlier.planned / n)
        # that draw's own count: ceil(factor * n) of the ratio can round one past it (27 / 21 * 21 -> 28)
        first = min(earlier.planned, int(math.ceil(factor * n)))
    while True:
        drawn_n = first if first is not None else int(math.ceil(factor * n))
        first = None
        t0 = time.time()
        summary = synthesize(model_dir, draw_url, dataclasses.replace(cfg, n=drawn_n), sampling, **run_kwargs)
        if not summary.ok:
            return TargetedResult("selection", summary, DatasetInfo(), out_url)
        keys, fractions = _manifest(ShardSet(draw_url))
        picked = tgt.select(fractions, target, n)
        achieved = tgt.pooled(fractions, picked)
        if target.met(achieved) or factor >= max_draw_factor:
            break
        needed = tgt.draw_factor(fractions, target, max_draw_factor, keep=n)  # the draw's measured acceptance
        if needed is None:
            best = tgt.pooled(
                fractions[
                    tgt.select(fractions[np.arange(int(max_draw_factor * n)) % len(fractions)], target, n)
                    % len(fractions)
                ]
            )
            message = (
                f"--class-target {target.spec} cannot be reached by selection within --max-draw-factor {max_draw_factor:g}: selecting from the "
                f"{len(keys)} pairs drawn (their measured class fractions, resampled to {max_draw_factor:g} per kept pair) reaches {', '.join(target.missed(best))}"
            )
            if len(keys) <= n:  # the first draw: refuse before drawing the rest
                raise TargetError(message + "; try --target-route pasted")
            log.warning("selection: %s; stopping", message)
            break
        factor = min(max_draw_factor, max(needed, next((f for f in tgt.DRAW_FACTORS if f > factor), max_draw_factor)))
        log.info(
            "selection: %d drawn pairs reach %s; drawing %g x %d (%.1f s so far)",
            len(keys),
            ", ".join(target.missed(achieved)),
            factor,
            n,
            time.time() - t0,
        )

    draw = ShardSet(draw_url)
    src_info = draw.info()
    fp = hashlib.sha256(
        json.dumps(
            {
                "draw": src_info.fingerprint,
                "drawn": len(keys),
                "spec": target.spec,
                "n": n,
                "samples_per_shard": cfg.samples_per_shard,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    kept_keys = [keys[i] for i in picked]
    with _lease(out_url, cfg, f"targeted synthesis (selection) {fp[:12]}") as lease:  # one writer of --out at a time
        return _write_selection(
            draw, out_url, cfg, target, summary, keys, kept_keys, fp, max_draw_factor, draw_url, lease
        )


def _lease(out_url: str, cfg: SynthesisConfig, purpose: str) -> Lease:
    return Lease(out_url, purpose, cfg.lease_seconds).acquire()


def _write_selection(
    draw: ShardSet,
    out_url: str,
    cfg: SynthesisConfig,
    target: ClassTarget,
    summary: Summary,
    keys: list[str],
    kept_keys: list[str],
    fp: str,
    max_draw_factor: float,
    draw_url: str,
    lease: Lease,
) -> TargetedResult:
    src_info = draw.info()
    markers = draw.derive(
        out_url, lambda key, record: {"source_key": key}, fp, cfg.samples_per_shard, keys=kept_keys, check=lease.check
    )
    written = ShardSet.pairs(markers)
    achieved = list(ShardSet.stats(markers, len(target.classes))["class_fractions"])
    cost = {
        "pairs_drawn": len(keys),
        "pairs_kept": written,
        "pairs_drawn_per_kept_pair": len(keys) / max(1, written),
        "sampling_seconds_per_kept_pair": _sampling_seconds(i.marker for i in draw.done()) / max(1, written),
    }
    record, warnings = _record(
        target,
        "selection",
        achieved,
        cost,
        source=redact_url(draw_url),
        source_fingerprint=src_info.fingerprint,
        drawn=len(keys),
        max_draw_factor=max_draw_factor,
    )
    _warn(warnings)
    info, div_warnings = ShardSet(out_url).finish(
        src_info,
        markers,
        threshold=cfg.divergence_threshold,
        reference=target.reference(),
        class_share_ratio=cfg.class_share_ratio_threshold,
        against="the target's class mix",
        samples_per_shard=cfg.samples_per_shard,
        add_warnings=warnings,
        fingerprint=fp,
        target=record,
    )
    write_dataset_card(out_url)
    for w in div_warnings:
        log.warning("targeted set diverges from the target's class mix: %s", w)
    return TargetedResult("selection", summary, info, out_url)


def synthesize_targeted(
    model_dir: str | Path,
    out_url: str,
    cfg: SynthesisConfig,
    sampling: SamplingConfig,
    draw_url: str | None = None,
    **run_kwargs,
) -> TargetedResult:
    """cfg.n pairs meeting the class target cfg.target.spec by cfg.target.route (module docstring;
    config.TargetConfig). Bad input, and a target the route cannot reach, raise TargetError before
    any sampling. draw_url: where the selection route draws (default OUT_all)."""
    target, condition, _ = prepare_target(model_dir, cfg.target, sampling.sampler, sampling.steps)
    if condition is None:
        return by_selection(model_dir, out_url, cfg, sampling, target, draw_url, **run_kwargs)
    return by_conditioning(model_dir, out_url, cfg, sampling, condition, **run_kwargs)
