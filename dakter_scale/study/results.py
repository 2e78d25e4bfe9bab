"""A study's results.json: the table's runs, generation quality and sample figures per generated set,
the sampler and decode studies, b, timings, and the validation grid's outcome, gathered from its units
(study/units.py) after they are built."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dakter_scale.config import to_dict
from dakter_scale.data.bank import BANK_FIELD, bank_info
from dakter_scale.data.shardset import DatasetInfo, ShardSet
from dakter_scale.study import analyse, figures
from dakter_scale.study.plan import VALIDATION
from dakter_scale.study.quality import generation_quality, read_generated
from dakter_scale.study.units import THROUGHPUT, Units


def kd_weight_choice(units: Units) -> dict[str, dict]:
    """The lambda grid's validation scores and choice per student (study/analyse.py); {} while a
    grid student is unscored."""
    runs = units.plan.selection_runs()
    if not all(units.folder.metrics(r.name, VALIDATION).is_file() for r in runs):
        return {}
    return analyse.choose_settings(
        runs, {r.name: units.score(r, VALIDATION) for r in runs}, bool(units.e.ratio_grid), bool(units.e.steps_grid)
    )


def collect(units: Units, classes: list[str], out: Path, preset: str) -> dict:
    """results.json: the table's runs, generation quality and sample figures per generated set,
    the studies, b, timings and the validation grid's outcome."""
    t = time.time()
    sets = units.plan.generated_sets()
    segmenter = str(units.real_only(units.e.archs[0]))
    n = min(units.e.quality_pairs, units.plan.gen_size())
    quality = {s.name: generation_quality(units.cfg, units.generated_url(s.name), segmenter, n=n) for s in sets}
    if units.e.filter_keep > 0:  # the draw before the filter, for comparison
        for s in (s for s in sets if not s.target):
            quality[units.drawn_name(s.name)] = generation_quality(
                units.cfg, units.generated_url(units.drawn_name(s.name)), segmenter, n=n
            )
    for s in sets:
        images, q = read_generated(units.generated_url(s.name), units.e.figure_samples)
        figures.sample_figure(
            images,
            q,
            classes,
            out / f"samples_{s.name}.png",
            title=f"generated pairs, model {s.name}",
        )
    variants = studies(units, segmenter)
    models = {s.model: units.folder.model_info(s.model) for s in sets}
    timings = dict(units.folder.read_timings() | units.timings, analysis=time.time() - t)  # every runner's units
    payload = {
        "config": to_dict(units.cfg),
        "n_train": units.n_train,
        "generated_pairs": units.plan.gen_size(),
        "runs": {r.name: units.student(r) for r in units.plan.main_runs() + units.plan.sweep_runs()},
        "quality": quality,
        "studies": variants,
        "timings_s": dict(timings, total=sum(timings.values())),
        "b": {tag: info["b"] for tag, info in models.items()},
        "b_mode": {tag: info["b_mode"] for tag, info in models.items()},
        "classes": list(classes),
        "generated": {s.name: generated_summary(units, s.name) for s in sets},
        "steps": steps_trained(
            units, [s.model for s in sets], [r.name for r in units.plan.main_runs() + units.plan.sweep_runs()]
        ),
        "preset": preset,
    }
    banks = {b.name: bank_summary(units, b.name) for b in units.plan.banks()}
    if banks:
        payload["banks"] = banks
    if units.plan.selection_runs():
        payload.update(validation_spec=units.e.validation_spec, kd_weight_choice=kd_weight_choice(units))
    return payload


def generated_summary(units: Units, name: str) -> dict:
    """Pairs, shards, sampling speed, confidence and divergence warnings of a generated set."""
    info = ShardSet(units.generated_url(name)).info() or DatasetInfo(format=None)
    throughput = ShardSet(units.generated_url(units.drawn_name(name))).read_side(THROUGHPUT)
    return {
        "count": info.count,
        "shards": info.num_shards,
        "pairs_per_second": json.loads(throughput)["pairs_per_second"] if throughput else None,
        "mean_confidence": (info.generated_stats or {}).get("mean_confidence"),
        "warnings": info.warnings or [],
        "target": info.target,  # a targeted set's record (synth/targeted.py), else None
    }


def bank_summary(units: Units, name: str) -> dict:
    """An instance bank's record (synth/bank.py): its instances per class, how many the judge saw and
    rejected, the pairs they were cut from and the judge that kept them."""
    record = bank_info(units.generated_url(name))[BANK_FIELD]
    keys = ("count", "by_class", "candidates", "rejected", "source_pairs", "judge_arch", "settings")
    return {k: record.get(k) for k in keys}


def steps_trained(units: Units, tags: list[str], names: list[str]) -> dict:
    """The optimiser steps each model and student ran (what a wall-clock budget decided)."""
    infos = {name: units.folder.student_info(name) for name in names}
    students = {name: info["steps"] for name, info in infos.items() if info is not None}
    models = {tag: units.folder.model_info(tag) for tag in sorted(set(tags))}
    out = {"diffusion": {tag: info["steps_trained"] for tag, info in models.items()}, "students": students}
    distilled = {  # a distilled folder keeps its teacher's steps_trained; its own are its rounds'
        tag: [r["optimizer_steps"] for r in info["distilled"]["rounds"]]
        for tag, info in models.items()
        if "distilled" in info
    }
    return dict(out, distillation_rounds=distilled) if distilled else out


def studies(units: Units, segmenter: str) -> dict:
    """Sampler and decode studies: throughput, generation quality and student mIoU per variant."""
    out: dict[str, list] = {"sampler": [], "decode": []}
    for v in units.plan.study_variants():
        url, drawn = (
            units.generated_url(v.generated.name),
            ShardSet(units.generated_url(units.drawn_name(v.generated.name))).read_side(THROUGHPUT),
        )
        throughput = json.loads(drawn) if drawn else {}
        quality = generation_quality(units.cfg, url, segmenter, n=min(units.e.quality_pairs, v.generated.n))
        mious = [units.student(run)["miou"] for run in v.runs]
        out[v.kind].append(
            {
                "variant": v.entry,
                "sampling": dict(v.generated.sampling),
                "pairs_per_second": throughput.get("pairs_per_second"),
                "sampling_pairs_per_second": throughput.get("sampling_pairs_per_second"),
                "quality": quality,
                "miou": mious,
            }
        )
    return out
