"""Method probes: how the joint DDPM's parameterisation and the student regime change the outcome.

Exploratory runs behind docs/RESULTS.md's "what was tried"; the committed comparison itself is
jobs/experiment.py. Modes:

    # one diffusion variant: train (if missing), synthesize 256 pairs, measure generation quality,
    # train real-only / hard / soft unet students at ratio 1 (600 steps)
    python bench/method_probe.py model NAME STEPS [key=value ...]
    python bench/method_probe.py model eps_base 1500
    python bench/method_probe.py model x0_ce 1500 diffusion.prediction_type=sample diffusion.label_ce_weight=1
    python bench/method_probe.py model mixed_ce 1500 diffusion.label_prediction_type=sample diffusion.label_ce_weight=1

    # student variants over one trained probe model and N generated pairs (variants as JSON)
    python bench/method_probe.py students NAME TAG N '[{"student.ratio": 0}, {"student.ratio": 2, "student.labels": "hard"}]'

    # student variants over a finished jobs/experiment.py folder: its config, its b_cfg shards
    python bench/method_probe.py followup runs/exp TAG '[{"student.arch": "segformer", "student.ratio": 2, "student.labels": "soft", "student.kd_temperature": 2, "student.seed": 0}]'

    # ... optionally also scored on a validation spec (other scenes) to choose settings on
    python bench/method_probe.py followup runs/exp2 kdw '[{"student.arch": "segformer", "student.ratio": 2, "student.kd_weight": 2, "student.seed": 0}]' 'synthetic:40?size=32&test=200&seed=7'

    # ... on another generated set of the experiment (e.g. a decode-study draw)
    python bench/method_probe.py followup runs/exp2 mean5 '[...]' 'synthetic:40?size=32&test=200&seed=7' decode_mean_5

    # every finished student of an experiment folder, scored on another spec's test split
    python bench/method_probe.py evaluate runs/exp2 'synthetic:40?size=32&test=1000' test1000
    # ... or those whose folder name matches a glob pattern
    python bench/method_probe.py evaluate runs/exp4 'synthetic:40?size=32&test=200&seed=7' unetsweep_val '*-unet-r*-s[012]'

    # ... and their mean +- std over seeds
    python bench/method_probe.py summarize test1000

    # generation quality of any model folder: N DDIM pairs (the config's sampler), scored by real-only students
    python bench/method_probe.py quality runs/exp2/models/b_cfg configs/experiment_demo.yaml 200 runs/exp/students/none-deeplabv3plus-r0-s0 runs/exp/students/none-unet-r0-s0

    # does the teacher's confidence mark its wrong labels? agreement of real-only students per confidence band
    python bench/method_probe.py calibration runs/exp3/generated/b_cfg 400 runs/exp3/students/none-unet-r0-s0 runs/exp3/students/none-deeplabv3plus-r0-s0

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
    from dakter_scale import quality
    from dakter_scale.config import load_config
    from dakter_scale.data.real import open_source
    from dakter_scale.diffusion.train import train_diffusion
    from dakter_scale.pipeline import read_generated
    from dakter_scale.student.evaluate import evaluate_student
    from dakter_scale.student.models import load_student
    from dakter_scale.student.train import train_student
    from dakter_scale.synth.run import synthesize

    root = ROOT / name
    cfg = load_config(None, BASE + [f"diffusion.max_steps={steps}", "synthesis.n=256"] + overrides)
    t = time.time()
    if not (root / "model" / "dakter.json").is_file():
        train_diffusion(cfg, root / "model", progress=False)
    t_train = time.time() - t
    t = time.time()
    summary = synthesize(root / "model", str(root / "shards"), cfg.synthesis, cfg.sampling, use_ray=False, progress=False, overwrite=True)
    t_synth = time.time() - t
    segmenter = root / "student_real"
    if not (segmenter / "student.json").is_file():
        train_student(cfg.replace(**{"student.ratio": 0.0}), segmenter, progress=False)
    images, q = read_generated(str(root / "shards"), 256)
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


def _student_variants(cfg, url: str, folder: Path, tag: str, variants: list[dict], record: dict, n_train: int | None = None, val_spec: str | None = None) -> list[dict]:
    """Train and evaluate one student per variant (skipping finished ones); append each result to students.jsonl.

    With n_train, a variant uses the first ratio * n_train generated pairs, as jobs/experiment.py does.
    With val_spec, the student is also scored on that spec's test split (val_miou, val_iou): a
    held-out split to choose settings on, so that the experiment's test split stays untouched."""
    from dakter_scale.student.evaluate import evaluate_student
    from dakter_scale.student.train import train_student

    out = []
    for v in variants:
        t = time.time()
        c = cfg.replace(**v)
        if n_train is not None:
            c = c.replace(**{"student.max_generated": int(round(c.student.ratio * n_train))})
        d = folder / ("st_" + tag + "_" + "_".join(f"{k.split('.')[-1]}{val}" for k, val in v.items()))
        if not (d / "metrics.json").is_file():
            train_student(c, d, synthetic=url if c.student.ratio > 0 else None, progress=False)
            (d / "metrics.json").write_text(json.dumps(evaluate_student(str(d), c.data.spec, "test", c.eval)))
        m = json.loads((d / "metrics.json").read_text())
        rec = {**record, "tag": tag, "variant": v, "miou": m["miou"], "iou": m["iou"], "seconds": time.time() - t}
        if val_spec:
            val = evaluate_student(str(d), val_spec, "test", c.eval)
            rec.update(val_spec=val_spec, val_miou=val["miou"], val_iou=val["iou"])
        out.append(_emit(rec, "students.jsonl"))
    return out


def student_probe(name: str, tag: str, n: int, variants: list[dict]) -> list[dict]:
    """Student variants over one probe model and n pairs generated from it."""
    from dakter_scale.config import load_config
    from dakter_scale.synth.run import synthesize

    root = ROOT / name
    cfg = load_config(None, BASE + [f"synthesis.n={n}", "synthesis.samples_per_shard=200", "synthesis.batch_size=50"])
    url = str(root / f"shards_{n}")
    info = Path(url) / "dataset.json"
    if not info.is_file() or json.loads(info.read_text()).get("status") != "complete":
        synthesize(root / "model", url, cfg.synthesis, cfg.sampling, use_ray=False, progress=False, overwrite=True)
    return _student_variants(cfg, url, root, tag, variants, {"model": name, "pairs": n})


def followup_probe(exp: str, tag: str, variants: list[dict], val_spec: str | None = None, generated: str = "b_cfg") -> list[dict]:
    """Student variants on an experiment's own config and one of its generated sets (b_cfg by default)."""
    from dakter_scale.config import load_config
    from dakter_scale.data.real import open_source

    cfg = load_config(str(Path(exp) / "config.yaml"), [])
    n_train = len(open_source(cfg.data.spec).split_items("train"))
    return _student_variants(cfg, str(Path(exp) / "generated" / generated), ROOT / "followup", tag, variants, {"experiment": exp, "generated": generated}, n_train, val_spec)


def evaluate_probe(exp: str, spec: str, tag: str, pattern: str = "*") -> list[dict]:
    """Score every finished student of an experiment folder (whose name matches pattern) on another
    spec's test split.

    For a validation split (other scenes, to choose settings on) or a larger test split (the same
    scenes first, then more: synthetic scenes are seeded per index, so test=1000 extends test=200)."""
    from dakter_scale.student.evaluate import evaluate_student

    out = []
    for d in sorted(Path(exp, "students").glob(pattern)):
        if not (d / "metrics.json").is_file():
            continue
        run = json.loads((d / "metrics.json").read_text()).get("run", {})
        m = evaluate_student(str(d), spec, "test")
        rec = {"experiment": exp, "tag": tag, "student": d.name, "run": run, "spec": spec, "miou": m["miou"], "iou": m["iou"], "mean_f1": m["mean_f1"]}
        out.append(_emit(rec, "evaluate.jsonl"))
    return out


def summarize_evaluations(tag: str) -> dict:
    """Mean and std over seeds of evaluate.jsonl's records with this tag, per (arch, method, ratio)."""
    groups: dict[tuple, dict[int, float]] = {}
    for line in (ROOT / "evaluate.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["tag"] != tag or not r["run"]:
            continue
        key = (r["run"]["arch"], r["run"]["method"], r["run"]["ratio"])
        groups.setdefault(key, {})[r["run"]["seed"]] = 100 * r["miou"]
    from dakter_scale.experiment import _mean_std

    table = {}
    for (arch, method, ratio), by_seed in sorted(groups.items()):
        v = [by_seed[s] for s in sorted(by_seed)]
        mean, std = _mean_std(v)
        table[f"{arch} {method} r{ratio:g}"] = {"mean": round(mean, 2), "std": round(std or 0.0, 2), "seeds": sorted(by_seed), "miou": [round(x, 2) for x in v]}
        print(f"{arch:14s} {method:10s} r{ratio:<4g} {mean:6.2f} +- {std or 0.0:.2f}  {' '.join(f'{x:.2f}' for x in v)}")
    return table


def quality_probe(model: str, config: str, n: int, aligners: list[str]) -> list[dict]:
    """Draw n pairs from a model folder (in-process) and score them with each real-only aligner."""
    from dakter_scale.config import load_config
    from dakter_scale.pipeline import generation_quality
    from dakter_scale.synth.run import synthesize

    cfg = load_config(config, [f"synthesis.n={n}", "synthesis.samples_per_shard=100"])
    url = str(ROOT / "quality" / Path(model).name / f"pairs_{n}")
    synthesize(model, url, cfg.synthesis, cfg.sampling, use_ray=False, progress=False, overwrite=True)
    out = []
    for aligner in aligners:
        q = generation_quality(cfg, url, aligner, n=n)
        rec = {"model": model, "pairs": n, "aligner": aligner, "label_alignment": q["label_alignment"], "class_fraction_tv": q["class_fraction_tv"], "mean_confidence": q["mean_confidence"], "enl": [q["enl_generated"], q.get("enl_real")], "histogram_distance": q.get("histogram_distance")}
        out.append(_emit(rec, "quality.jsonl"))
    return out


def calibration_probe(shards: str, n: int, aligners: list[str]) -> list[dict]:
    """Does the teacher's confidence say where its labels are wrong? For the first n generated pairs,
    the share of pixels per band of max-probability, and how often a real-only student's prediction
    on the generated image agrees with the generated label in that band (and per generated class)."""
    from dakter_scale.pipeline import load_student, read_generated
    from dakter_scale import quality

    images, q = read_generated(shards, n)
    conf, label = q.max(axis=1), q.argmax(axis=1)
    bands = [0.0, 0.5, 0.7, 0.9, 0.99, 1.01]
    out = []
    for aligner in aligners:
        agree = quality.segment(load_student(aligner)[0], images).numpy() == label
        by_band = []
        for lo, hi in zip(bands[:-1], bands[1:]):
            sel = (conf >= lo) & (conf < hi)
            by_band.append({"band": [lo, min(hi, 1.0)], "pixels": float(sel.mean()), "agreement": float(agree[sel].mean())})
        by_class = []
        for k in range(q.shape[1]):
            sel = label == k
            if sel.any():
                by_class.append({"class": k, "pixels": float(sel.mean()), "confidence": float(conf[sel].mean()), "agreement": float(agree[sel].mean())})
        out.append(_emit({"shards": shards, "pairs": len(images), "aligner": aligner, "agreement": float(agree.mean()), "by_confidence": by_band, "by_class": by_class}, "calibration.jsonl"))
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
    elif mode == "evaluate":
        evaluate_probe(*args[:4])
    elif mode == "summarize":
        summarize_evaluations(args[0])
    elif mode == "quality":
        quality_probe(args[0], args[1], int(args[2]), args[3:])
    elif mode == "calibration":
        calibration_probe(args[0], int(args[1]), args[2:])
    else:
        sys.exit(f"usage: {__doc__}")


if __name__ == "__main__":
    main()
