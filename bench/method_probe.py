"""Method probes: how the joint DDPM's parameterisation and the student regime change the outcome.

Exploratory runs behind docs/journal/results-history.md's "what was tried"; the committed comparison itself is
jobs/experiment.py. Modes:

    # one diffusion variant: train (if missing), synthesize 256 pairs, measure generation quality,
    # train real-only / hard / soft unet students at ratio 1 (600 steps)
    python bench/method_probe.py model NAME STEPS [key=value ...]
    python bench/method_probe.py model eps_base 1500
    python bench/method_probe.py model x0_ce 1500 diffusion.prediction_type=sample diffusion.label_ce_weight=1
    python bench/method_probe.py model mixed_ce 1500 diffusion.label_prediction_type=sample diffusion.label_ce_weight=1

    # student variants over one trained probe model and N generated pairs (variants as JSON)
    python bench/method_probe.py students NAME TAG N '[{"student.ratio": 0}, {"student.ratio": 2, "student.labels": "hard"}]'

    # student variants over a finished jobs/experiment.py folder: its config, its b_cfg shards; the
    # students are the runner's units (EXP/students/METHOD-ARCH-rR-sS-TAG..., resumable)
    python bench/method_probe.py followup runs/exp TAG '[{"student.arch": "segformer", "student.ratio": 2, "student.labels": "soft", "student.kd_temperature": 2, "student.seed": 0}]'

    # ... also scored on a validation spec (other scenes)
    python bench/method_probe.py followup runs/exp4 confw '[{"student.arch": "unet", "student.ratio": 2, "student.kd_confidence_power": 4, "student.seed": 0}]' 'synthetic:40?size=32&test=200&seed=7'

    # ... on another generated set of the experiment (e.g. a decode-study draw)
    python bench/method_probe.py followup runs/exp2 mean5 '[...]' 'synthetic:40?size=32&test=200&seed=7' decode_mean_5

    # generation quality of any model folder: N DDIM pairs (the config's sampler), scored by real-only students
    python bench/method_probe.py quality runs/exp2/models/b_cfg configs/experiment_demo.yaml 200 runs/exp/students/none-deeplabv3plus-r0-s0 runs/exp/students/none-unet-r0-s0

    # does the teacher's confidence mark its wrong labels? agreement of real-only students per confidence band
    python bench/method_probe.py calibration runs/exp3/generated/b_cfg 400 runs/exp3/students/none-unet-r0-s0 runs/exp3/students/none-deeplabv3plus-r0-s0

What decided published numbers is in the runner now: choosing the KD weight on a validation split
(experiment.validation_spec + experiment.kd_weight_grid) and re-scoring an experiment's students
on another split (jobs/experiment.py --rescore SPEC --tag TAG).

Results append to runs/probe/results.jsonl and runs/probe/students.jsonl (THREADS=1 to run two at once).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(os.environ.get("PROBE_ROOT", Path(__file__).resolve().parents[1] / "runs" / "probe"))
BASE = [
    "data.spec=synthetic:100?size=32&test=200",
    "data.resolution=32",
    "diffusion.batch_size=32",
    "diffusion.lr=5e-4",
    "diffusion.warmup_steps=100",
    "diffusion.log_every=100",
    "synthesis.samples_per_shard=128",
    "synthesis.batch_size=64",
    "sampling.steps=50",
    "student.max_steps=600",
    "student.batch_size=16",
    "student.ratio=1.0",
    "student.log_every=200",
    "student.lr=1e-3",
]


def _emit(rec: dict, file: str) -> dict:
    """Print a result record and append it to ROOT/file (one JSON object per line)."""
    print("RESULT", json.dumps(rec), flush=True)
    with open(ROOT / file, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def model_probe(name: str, steps: int, overrides: list[str]) -> dict:
    from dakter_scale.config import load_config
    from dakter_scale.data.real import open_source
    from dakter_scale.diffusion.train import train_diffusion
    from dakter_scale.student.evaluate import evaluate_student
    from dakter_scale.student.models import load_student
    from dakter_scale.student.train import train_student
    from dakter_scale.study import quality
    from dakter_scale.synth.run import synthesize

    root = ROOT / name
    cfg = load_config(None, BASE + [f"diffusion.max_steps={steps}", "synthesis.n=256"] + overrides)
    t = time.time()
    if not (root / "model" / "dakter.json").is_file():
        train_diffusion(cfg, root / "model", progress=False)
    t_train = time.time() - t
    t = time.time()
    summary = synthesize(
        root / "model", str(root / "shards"), cfg.synthesis, cfg.sampling, use_ray=False, progress=False, overwrite=True
    )
    t_synth = time.time() - t
    segmenter = root / "student_real"
    if not (segmenter / "student.json").is_file():
        train_student(cfg.replace(**{"student.ratio": 0.0}), segmenter, progress=False)
    images, q = quality.read_generated(str(root / "shards"), 256)
    source = open_source(cfg.data.spec)
    real = [source.load(it) for it in source.split_items("train")[:100]]
    seg, _ = load_student(segmenter)
    result = {
        "name": name,
        "steps": steps,
        "overrides": overrides,
        "t_train": t_train,
        "t_synth": t_synth,
        "generated": summary.dataset["generated_stats"],
        "alignment": quality.label_alignment(seg, images, q, list(source.classes)),
        "enl_generated": quality.enl(images, q.argmax(1), window=4),
        "enl_real": quality.enl(np.stack([r[0] for r in real]), np.stack([r[1] for r in real]), window=4),
        "histogram": quality.histogram_distance(images, np.stack([r[0] for r in real])),
        "real_only": evaluate_student(str(segmenter), cfg.data.spec)["miou"],
    }
    for labels in ("hard", "soft"):
        d = root / f"student_{labels}"
        train_student(cfg.replace(**{"student.labels": labels}), d, synthetic=str(root / "shards"), progress=False)
        result[labels] = evaluate_student(str(d), cfg.data.spec)["miou"]
    return result


def student_probe(name: str, tag: str, n: int, variants: list[dict]) -> list[dict]:
    """Student variants over one probe model and n pairs generated from it (each trained once;
    every result appended to students.jsonl)."""
    from dakter_scale.config import load_config
    from dakter_scale.student.evaluate import evaluate_student
    from dakter_scale.student.train import train_student
    from dakter_scale.synth.run import synthesize

    root = ROOT / name
    cfg = load_config(None, BASE + [f"synthesis.n={n}", "synthesis.samples_per_shard=200", "synthesis.batch_size=50"])
    url = str(root / f"shards_{n}")
    info = Path(url) / "dataset.json"
    if not info.is_file() or json.loads(info.read_text()).get("status") != "complete":
        synthesize(root / "model", url, cfg.synthesis, cfg.sampling, use_ray=False, progress=False, overwrite=True)
    out = []
    for v in variants:
        t = time.time()
        c = cfg.replace(**v)
        d = root / ("st_" + tag + "_" + "_".join(f"{k.split('.')[-1]}{val}" for k, val in v.items()))
        if not (d / "metrics.json").is_file():
            train_student(c, d, synthetic=url if c.student.ratio > 0 else None, progress=False)
            (d / "metrics.json").write_text(json.dumps(evaluate_student(str(d), c.data.spec, "test", c.eval)))
        m = json.loads((d / "metrics.json").read_text())
        out.append(
            _emit(
                {
                    "model": name,
                    "pairs": n,
                    "tag": tag,
                    "variant": v,
                    "miou": m["miou"],
                    "iou": m["iou"],
                    "seconds": time.time() - t,
                },
                "students.jsonl",
            )
        )
    return out


def followup_probe(
    exp: str, tag: str, variants: list[dict], val_spec: str | None = None, generated: str = "b_cfg"
) -> list[dict]:
    """Student variants on a finished experiment's config and one of its generated sets (b_cfg by
    default), trained and scored by the experiment runner's student unit into EXP/students/.

    A variant is a dict of student.* keys: arch, seed, ratio and labels place it like a table's
    student (method none / hard / dakter; ratio r uses the first r * |D| pairs); kd_weight (soft) or
    hard_weight (hard) is its weight on generated pairs (default student.kd_weight / the CE weight);
    any other key is an exploratory setting and goes into the folder name after TAG. With val_spec the
    student is also scored on that spec's test split (val_miou, val_iou)."""
    import re

    from dakter_scale.experiment import Experiment, read_config
    from dakter_scale.study.plan import StudentRun

    runner = Experiment(read_config(exp), exp, progress=False)
    s = runner.cfg.student
    out = []
    for v in variants:
        t = time.time()
        keys = {k.removeprefix("student."): val for k, val in v.items()}
        arch, seed, ratio, labels = (
            keys.pop("arch", s.arch),
            keys.pop("seed", s.seed),
            float(keys.pop("ratio", s.ratio)),
            keys.pop("labels", s.labels),
        )
        weight = keys.pop("kd_weight", s.kd_weight) if labels == "soft" else keys.pop("hard_weight", None)
        method = "none" if ratio == 0 else ("dakter" if labels == "soft" else "hard")
        name = "_".join(
            [tag]
            + [f"{k}{val}" for k, val in keys.items()]
            + ([f"w{weight:g}"] if ratio > 0 and weight is not None else [])
        )
        run = StudentRun(
            method,
            arch,
            ratio,
            seed,
            generated if ratio > 0 else None,
            labels,
            variant=name,
            weight=weight if ratio > 0 else None,
            overrides=tuple((f"student.{k}", val) for k, val in keys.items()),
        )
        m = runner.units.student(run)
        rec = {
            "experiment": exp,
            "generated": generated,
            "tag": tag,
            "variant": v,
            "student": run.name,
            "miou": m["miou"],
            "iou": m["iou"],
            "seconds": time.time() - t,
        }
        if val_spec:
            val = runner.units.score(run, re.sub(r"[^A-Za-z0-9]+", "_", val_spec).strip("_"), val_spec)
            rec.update(val_spec=val_spec, val_miou=val["miou"], val_iou=val["iou"])
        out.append(_emit(rec, "students.jsonl"))
    return out


def quality_probe(model: str, config: str, n: int, aligners: list[str]) -> list[dict]:
    """Draw n pairs from a model folder (in-process) and score them with each real-only aligner."""
    from dakter_scale.config import load_config
    from dakter_scale.study.quality import generation_quality
    from dakter_scale.synth.run import synthesize

    cfg = load_config(config, [f"synthesis.n={n}", "synthesis.samples_per_shard=100"])
    url = str(ROOT / "quality" / Path(model).name / f"pairs_{n}")
    synthesize(model, url, cfg.synthesis, cfg.sampling, use_ray=False, progress=False, overwrite=True)
    out = []
    for aligner in aligners:
        q = generation_quality(cfg, url, aligner, n=n)
        rec = {
            "model": model,
            "pairs": n,
            "aligner": aligner,
            "label_alignment": q["label_alignment"],
            "class_fraction_tv": q["class_fraction_tv"],
            "mean_confidence": q["mean_confidence"],
            "enl": [q["enl_generated"], q.get("enl_real")],
            "histogram_distance": q.get("histogram_distance"),
        }
        out.append(_emit(rec, "quality.jsonl"))
    return out


def calibration_probe(shards: str, n: int, aligners: list[str]) -> list[dict]:
    """Does the teacher's confidence say where its labels are wrong? For the first n generated pairs,
    the share of pixels per band of max-probability, and how often a real-only student's prediction
    on the generated image agrees with the generated label in that band (and per generated class)."""
    from dakter_scale.student.models import load_student
    from dakter_scale.study import quality

    images, q = quality.read_generated(shards, n)
    conf, label = q.max(axis=1), q.argmax(axis=1)
    bands = [0.0, 0.5, 0.7, 0.9, 0.99, 1.01]
    out = []
    for aligner in aligners:
        agree = quality.segment(load_student(aligner)[0], images).numpy() == label
        by_band = []
        for lo, hi in zip(bands[:-1], bands[1:]):
            sel = (conf >= lo) & (conf < hi)
            by_band.append(
                {"band": [lo, min(hi, 1.0)], "pixels": float(sel.mean()), "agreement": float(agree[sel].mean())}
            )
        by_class = []
        for k in range(q.shape[1]):
            sel = label == k
            if sel.any():
                by_class.append(
                    {
                        "class": k,
                        "pixels": float(sel.mean()),
                        "confidence": float(conf[sel].mean()),
                        "agreement": float(agree[sel].mean()),
                    }
                )
        out.append(
            _emit(
                {
                    "shards": shards,
                    "pairs": len(images),
                    "aligner": aligner,
                    "agreement": float(agree.mean()),
                    "by_confidence": by_band,
                    "by_class": by_class,
                },
                "calibration.jsonl",
            )
        )
    return out


def main() -> None:
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    ROOT.mkdir(parents=True, exist_ok=True)
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "model":
        _emit(model_probe(args[0], int(args[1]), args[2:]), "results.jsonl")
    elif mode == "students":
        student_probe(args[0], args[1], int(args[2]), json.loads(args[3]))
    elif mode == "followup":
        followup_probe(args[0], args[1], json.loads(args[2]), *args[3:5])
    elif mode == "quality":
        quality_probe(args[0], args[1], int(args[2]), args[3:])
    elif mode == "calibration":
        calibration_probe(args[0], int(args[1]), args[2:])
    else:
        sys.exit(f"usage: {__doc__}")


if __name__ == "__main__":
    main()
