"""The whole DAKTer pipeline on one machine: train the joint DDPM, synthesize, train three students,
evaluate, and write a report. What jobs/demo.py runs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from dakter_scale import report
from dakter_scale.config import Config, save_config
from dakter_scale.data.real import denormalise, open_source, split_stats
from dakter_scale.data.storage import redact_url
from dakter_scale.diffusion.train import train_diffusion
from dakter_scale.student.evaluate import evaluate_student
from dakter_scale.student.models import check_students, load_student
from dakter_scale.student.train import train_student
from dakter_scale.synth.run import synthesize

log = logging.getLogger("dakter_scale")

STUDENTS = (
    ("no augmentation", "real", 0.0, "soft"),
    ("+ generated, hard labels (DDPM / SatSynth style)", "hard", None, "hard"),
    ("+ generated, soft labels + KD (DAKTer)", "soft", None, "soft"),
)


def read_generated(url: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n generated pairs in key order: images (n, H, W) uint8 and soft labels (n, K, H, W)."""
    from dakter_scale.data.stream import GeneratedStream

    stream = GeneratedStream(url, shuffle_buffer=1)
    images, qs = [], []
    for item in stream:
        images.append(denormalise(item["x"][0]).numpy())
        qs.append(item["q"].numpy())
        if len(images) == n:
            break
    return np.stack(images), np.stack(qs)


def generation_quality(cfg: Config, shards_url: str, segmenter_dir: str, n: int = 256) -> dict:
    """Label alignment (real-trained student on generated images), class-fraction match, SAR statistics."""
    from dakter_scale import quality
    from dakter_scale.core.soft_labels import class_fractions

    import torch

    source = open_source(cfg.data.spec)
    images, q = read_generated(shards_url, n)
    segmenter, _ = load_student(segmenter_dir)
    items = source.split_items("train")[: max(1, min(n, 200))]
    real = [source.load(it) for it in items]
    real_images = np.stack([r[0] for r in real]) if len({r[0].shape for r in real}) == 1 else None
    gen_fractions = class_fractions(torch.from_numpy(q)).mean(dim=0).tolist()
    real_fractions = list(split_stats(source, "train", cfg.data.stats_max_images).class_fractions)
    out = {
        "pairs": len(images),
        "label_alignment": quality.label_alignment(segmenter, images, q, list(source.classes)),
        "class_fractions_generated": gen_fractions,
        "class_fractions_real": real_fractions,
        "class_fraction_tv": quality.class_fraction_tv(gen_fractions, real_fractions),
        "mean_confidence": float(q.max(axis=1).mean()),
        "enl_generated": quality.enl(images, q.argmax(axis=1), window=4),
    }
    if real_images is not None:
        out["enl_real"] = quality.enl(real_images, np.stack([r[1] for r in real]), window=4)
        out["histogram_distance"] = quality.histogram_distance(images, real_images)
    return out


def run_demo(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """Run every stage on cfg.data.spec and write OUT/report.md. Returns the report path."""
    check_students(cfg.student, [cfg.student.arch])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    timings: dict[str, float] = {}
    stages = 4 + len(STUDENTS)

    def stage(i: int, text: str) -> None:
        print(f"[{i}/{stages}] {text}", flush=True)

    t = time.time()
    stage(1, f"reading {redact_url(cfg.data.spec)}")
    source = open_source(cfg.data.spec)
    stats = split_stats(source, "train", cfg.data.stats_max_images)
    timings["data"] = time.time() - t

    t = time.time()
    stage(2, f"training the balanced joint DDPM ({cfg.diffusion.max_steps} steps, b = {cfg.diffusion.b})")
    model_dir = out / "model"
    train_diffusion(cfg, model_dir, progress=progress)
    info = json.loads((model_dir / "dakter.json").read_text())
    timings["diffusion"] = time.time() - t

    t = time.time()
    stage(3, f"synthesizing {cfg.synthesis.n} pairs with Ray ({cfg.sampling.sampler} x {cfg.sampling.steps} steps)")
    shards_url = str(out / "shards")
    summary = synthesize(model_dir, shards_url, cfg.synthesis, cfg.sampling, overwrite=True, progress=progress, use_ray=True)
    if not summary.ok:
        raise RuntimeError("synthesis failed: " + "; ".join(f"shard {s}: {r}" for s, r in summary.failed.items()))
    timings["synthesis"] = time.time() - t

    results = []
    for i, (name, tag, ratio, labels) in enumerate(STUDENTS):
        t = time.time()
        r = cfg.student.ratio if ratio is None else ratio
        stage(4 + i, f"student {cfg.student.arch}: {name} (ratio {r:g}, {cfg.student.max_steps} steps)")
        student_cfg = cfg.replace(**{"student.ratio": r, "student.labels": labels})
        student_dir = out / f"student_{tag}"
        train_student(student_cfg, student_dir, synthetic=shards_url if r > 0 else None, progress=progress)
        metrics = evaluate_student(str(student_dir), cfg.data.spec, "test", cfg.eval)
        (student_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        results.append((name, metrics))
        timings[f"student_{tag}"] = time.time() - t

    t = time.time()
    stage(stages, "evaluating generation quality and writing the report")
    quality = generation_quality(cfg, shards_url, str(out / "student_real"), n=min(256, cfg.synthesis.n))
    images, q = read_generated(shards_url, 6)
    report.sample_figure(images, q, source.classes, out / "samples.png", title="generated SAR images and their soft labels")
    timings["report"] = time.time() - t
    path = out / "report.md"
    path.write_text(_demo_markdown(cfg, info, stats, summary, quality, results, timings))
    (out / "results.json").write_text(json.dumps({"b": info["b"], "metrics": dict(results), "quality": quality, "synthesis": summary.to_json(), "timings_s": timings}, indent=2) + "\n")
    print(f"report written to {path}", flush=True)
    return path


def _demo_markdown(cfg, info, stats, summary, quality, results, timings) -> str:
    classes = info["classes"]
    gen = summary.dataset.get("generated_stats", {})
    lines = [
        "# DAKTer demo report",
        "",
        f"Data: `{redact_url(cfg.data.spec)}` ({stats.images} training images), {cfg.data.resolution} px. "
        f"All numbers below were measured by this run; the scale is tiny (CPU, minutes), so they show the pipeline working, not the method's ceiling.",
        "",
        "## Balancing factor",
        f"b = **{info['b']:.4f}** (`{info['b_mode']}`: RMS of the normalised training images, so the image and label modalities have equal SNR at every timestep).",
        "",
        "## Generated samples",
        "![generated samples](samples.png)",
        "",
        f"{summary.dataset.get('count', 0)} pairs in {summary.planned_shards} shards, {cfg.sampling.sampler} x {cfg.sampling.steps} steps, "
        f"{summary.pairs_per_second:.2f} pairs/s.",
        "",
        "| | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
        "| class pixel fractions, real train | " + " | ".join(f"{100 * v:.2f}%" for v in quality["class_fractions_real"]) + " |",
        "| class pixel fractions, generated (argmax) | " + " | ".join(f"{100 * v:.2f}%" for v in quality["class_fractions_generated"]) + " |",
        "",
        f"- mean max-probability of the soft labels: {gen.get('mean_confidence', float('nan')):.3f}; total variation between the class fractions: {quality['class_fraction_tv']:.3f}",
        f"- label alignment (the real-only student segments the generated images, scored against the generated labels): mIoU {report.pct(quality['label_alignment']['miou'])}, pixel agreement {report.pct(quality['label_alignment']['pixel_agreement'])}",
        f"- equivalent number of looks over sea: generated {quality['enl_generated']:.2f}" + (f", real {quality['enl_real']:.2f}" if "enl_real" in quality else ""),
    ]
    if "histogram_distance" in quality:
        hd = quality["histogram_distance"]
        lines.append(f"- 8-bit intensity histogram distance to real images: TV {hd['tv']:.3f}, W1 {hd['w1']:.2f} grey levels")
    for w in summary.dataset.get("warnings", []):
        lines.append(f"- **WARNING**: {w}")
    lines += [
        "",
        f"## Students ({cfg.student.arch}, {cfg.student.max_steps} steps of batch {cfg.student.batch_size}, generated ratio {cfg.student.ratio:g} = {100 * cfg.student.ratio:.0f} %)",
        "Test split, full images, one confusion matrix over the split; values in %.",
        "",
        report.metrics_table(results, classes),
        "",
        "## Time per stage (s)",
        "| " + " | ".join(timings) + " |",
        "|" + "---|" * len(timings),
        "| " + " | ".join(f"{v:.0f}" for v in timings.values()) + " |",
        "",
        "Resolved config: `config.yaml`; raw numbers: `results.json`.",
        "",
    ]
    return "\n".join(lines)
