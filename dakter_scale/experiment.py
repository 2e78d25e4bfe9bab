"""The paper's comparison as one resumable command (jobs/experiment.py).

Methods (one trained diffusion model and one set of shards per b, shared by every student):
  none       real data only
  hard       + generated pairs, argmax labels with CE      (the DDPM / SatSynth-style baseline)
  hard_matched  hard, with the CE on generated pairs weighted like DAKTer's KD (lambda): the control
             that separates what the soft labels add from what a smaller generated-data weight adds
  dakter     + generated pairs, soft labels with KD        (b = the configured b, "auto" by default)
  dakter_b1  + generated pairs from a model trained with b = 1 (the ablation), soft labels with KD

An augmentation ratio r means r * |D| distinct generated pairs used beside the |D| real images
(student.max_generated), mixed so that a batch holds a share r / (1 + r) of generated samples.
Every unit writes its result next to it and is skipped when present, so a stopped experiment
resumes where it stopped. Tables report mean +- std over seeds (std with ddof = 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dakter_scale import report
from dakter_scale.config import Config, save_config, to_dict
from dakter_scale.data.real import open_source, split_stats
from dakter_scale.data.shardset import ShardSet
from dakter_scale.data.storage import redact_url
from dakter_scale.diffusion.train import train_diffusion
from dakter_scale.pipeline import generation_quality, read_generated
from dakter_scale.student.evaluate import evaluate_student
from dakter_scale.student.models import check_students
from dakter_scale.student.train import train_student
from dakter_scale.synth.filter import filter_shards
from dakter_scale.synth.run import synthesize

log = logging.getLogger("dakter_scale")

DRAWN_SUFFIX = "_all"  # generated/NAME_all: the pairs drawn before the label-alignment filter kept generated/NAME

METHOD_NAMES = {
    "none": "no augmentation",
    "hard": "hard labels (DDPM / SatSynth style)",
    "hard_matched": "hard labels, weight λ (control)",
    "dakter": "DAKTer (soft labels + KD)",
    "dakter_b1": "DAKTer, b = 1 (ablation)",
}


@dataclass(frozen=True)
class StudentRun:
    method: str
    arch: str
    ratio: float
    seed: int
    generated: str | None = None  # name of the generated set; None for "none"
    labels: str = "soft"
    sampling: str = ""  # for study runs: the sampling variant name
    weight: float | None = None  # weight of the loss on generated pairs (lambda / hard_weight); None = the config's

    @property
    def name(self) -> str:
        extra = f"-{self.sampling}" if self.sampling else ""
        return f"{self.method}-{self.arch}-r{self.ratio:g}-s{self.seed}{extra}"


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


class Experiment:
    def __init__(self, cfg: Config, out: str | Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.e = cfg.experiment
        self.source = open_source(cfg.data.spec)
        self.n_train = len(self.source.split_items("train"))
        self.timings: dict[str, float] = {}

    # -- units ---------------------------------------------------------------------------------

    def model(self, tag: str) -> Path:
        """The diffusion model for b = cfg.diffusion.b ("b_cfg") or b = 1 ("b_1")."""
        d = self.out / "models" / tag
        if (d / "dakter.json").is_file():
            return d
        b = self.cfg.diffusion.b if tag == "b_cfg" else 1.0
        log.info("experiment: training the diffusion model %s (b = %s)", tag, b)
        t = time.time()
        train_diffusion(self.cfg.replace(**{"diffusion.b": b}), d, resume="latest", progress=self.progress)
        self.timings[f"model_{tag}"] = time.time() - t
        return d

    def generated(self, tag: str, n: int, name: str | None = None, sampling: dict | None = None) -> str:
        """The n generated pairs from model `tag` that the students use: with experiment.filter_keep,
        the n best-aligned of ceil(n / filter_keep) drawn pairs (the draw is kept as NAME_all)."""
        name = name or tag
        if self.e.filter_keep <= 0:
            return self.drawn(tag, n, name, sampling)
        drawn = self.drawn(tag, int(math.ceil(n / self.e.filter_keep)), self.drawn_name(name), sampling)
        url = self.generated_url(name)
        filter_shards(drawn, url, self.real_only(self.e.filter_arch), keep=n, samples_per_shard=self.cfg.synthesis.samples_per_shard)
        return url

    def drawn_name(self, name: str) -> str:
        """Where the pairs behind generated set `name` were drawn: the set itself, or NAME_all with the filter."""
        return name + DRAWN_SUFFIX if self.e.filter_keep > 0 else name

    def generated_url(self, name: str) -> str:
        return str(self.out / "generated" / name)

    def real_only(self, arch: str) -> Path:
        """The real-only student of `arch` (first seed), trained here if missing: it scores label
        alignment for the quality table and for the filter."""
        run = self._run("none", arch, 0, self.e.seeds[0])
        self.student(run, None)
        return self.out / "students" / run.name

    def drawn(self, tag: str, n: int, name: str, sampling: dict | None = None) -> str:
        """A complete set of n pairs drawn from model `tag` (resumes a partial set)."""
        url = self.generated_url(name)
        info = ShardSet(url).info()
        if info is not None and info.complete and info.count == n:
            return url
        cfg = self.cfg.replace(**{"synthesis.n": n, **{f"sampling.{k}": v for k, v in (sampling or {}).items()}})
        t = time.time()
        summary = synthesize(self.model(tag), url, cfg.synthesis, cfg.sampling, progress=self.progress, use_ray=True)
        if not summary.ok:
            raise RuntimeError(f"synthesis of {name} failed: {summary.failed}")
        self.timings[f"generate_{name}"] = time.time() - t
        (Path(url) / "throughput.json").write_text(json.dumps({"pairs": summary.pairs_written, "seconds": summary.seconds, "pairs_per_second": summary.pairs_per_second}) + "\n")
        return url

    def student(self, run: StudentRun, generated_url: str | None) -> dict:
        d = self.out / "students" / run.name
        metrics_path = d / "metrics.json"
        if metrics_path.is_file():
            return json.loads(metrics_path.read_text())
        overrides = {
            "student.arch": run.arch,
            "student.seed": run.seed,
            "student.ratio": run.ratio,
            "student.labels": run.labels,
            "student.max_generated": int(round(run.ratio * self.n_train)) if run.ratio > 0 else 0,
        }
        if run.weight is not None:
            overrides["student.kd_weight" if run.labels == "soft" else "student.hard_weight"] = run.weight
        budget = self.out / "students" / f"steps_{run.arch}.json"  # see student_steps
        if self.cfg.student.max_minutes > 0 and budget.is_file():
            overrides.update({"student.max_steps": json.loads(budget.read_text())["steps"], "student.max_minutes": 0.0})
        log.info("experiment: student %s", run.name)
        train_student(self.cfg.replace(**overrides), d, synthetic=generated_url, resume="latest", progress=self.progress)
        if self.cfg.student.max_minutes > 0 and not budget.is_file():
            # With a time budget the first student of an architecture measures how many steps fit; every
            # later method and seed of it trains that many, so that methods differ in their data only.
            steps = json.loads((d / "student.json").read_text())["steps"]
            budget.write_text(json.dumps({"steps": steps, "measured_by": run.name, "max_minutes": self.cfg.student.max_minutes}) + "\n")
            log.info("experiment: every %s student trains %d steps (what %g min allowed %s)", run.arch, steps, self.cfg.student.max_minutes, run.name)
        metrics = evaluate_student(str(d), self.cfg.data.spec, "test", self.cfg.eval)
        metrics["run"] = to_dict(run)
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics

    # -- plan ----------------------------------------------------------------------------------

    def gen_size(self) -> int:
        ratios = [self.e.ratio] + ([r for r in self.e.sweep_ratios] if self.e.sweep_archs else []) + ([self.e.study_ratio] if self.e.sampler_study or self.e.decode_study else [])
        return int(math.ceil(max(ratios) * self.n_train))

    def main_runs(self) -> list[StudentRun]:
        runs = []
        for arch in self.e.archs:
            for seed in self.e.seeds:
                for m in self.e.methods:
                    runs.append(self._run(m, arch, self.e.ratio, seed))
        return runs

    def sweep_runs(self) -> list[StudentRun]:
        runs = []
        for arch in self.e.sweep_archs:
            for seed in self.e.sweep_seeds or self.e.seeds:
                for m in self.e.sweep_methods:
                    for r in self.e.sweep_ratios:
                        runs.append(self._run(m, arch, r, seed))
        return runs

    def kd_weight(self, arch: str) -> float:
        """The student's KD weight lambda: its experiment.kd_weights entry, else student.kd_weight."""
        return self.e.kd_weight(arch, self.cfg.student.kd_weight)

    def _run(self, method: str, arch: str, ratio: float, seed: int) -> StudentRun:
        if method == "none":
            return StudentRun("none", arch, 0.0, seed)
        if method == "hard":
            return StudentRun("hard", arch, ratio, seed, "b_cfg", "hard")
        if method == "hard_matched":
            s = self.cfg.student
            if self.kd_weight(arch) == (s.ce_weight if s.hard_weight is None else s.hard_weight):
                return self._run("hard", arch, ratio, seed)  # the same weight: the same run
            return StudentRun("hard_matched", arch, ratio, seed, "b_cfg", "hard", weight=self.kd_weight(arch))
        return StudentRun(method, arch, ratio, seed, "b_1" if method == "dakter_b1" else "b_cfg", "soft", weight=self.kd_weight(arch))

    # -- the whole experiment ------------------------------------------------------------------

    def run(self) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out)
        t0 = time.time()
        n_gen = self.gen_size()
        needed = {r.generated for r in self.main_runs() + self.sweep_runs() if r.generated}
        urls = {tag: self.generated(tag, n_gen) for tag in sorted(needed)}
        results: dict[str, dict] = {}
        for run in self.main_runs() + self.sweep_runs():
            if run.name not in results:
                results[run.name] = self.student(run, urls.get(run.generated))
        segmenter = self.real_only(self.e.archs[0])
        quality = {tag: generation_quality(self.cfg, url, str(segmenter), n=min(self.e.quality_pairs, n_gen)) for tag, url in urls.items()}
        if self.e.filter_keep > 0:  # the draw before the filter, for comparison
            for tag in urls:
                quality[self.drawn_name(tag)] = generation_quality(self.cfg, self.generated_url(self.drawn_name(tag)), str(segmenter), n=min(self.e.quality_pairs, n_gen))
        for tag, url in urls.items():
            images, q = read_generated(url, self.e.figure_samples)
            report.sample_figure(images, q, self.source.classes, self.out / f"samples_{tag}.png", title=f"generated pairs, model {tag}")
        studies = self.studies(str(segmenter))
        self.timings["total"] = time.time() - t0
        payload = {"config": to_dict(self.cfg), "n_train": self.n_train, "generated_pairs": n_gen, "runs": results, "quality": quality, "studies": studies, "timings_s": self.timings, "b": {tag: json.loads((self.model(tag) / "dakter.json").read_text())["b"] for tag in urls}, "steps": self.steps_trained(urls, results)}
        (self.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
        path = self.out / "results.md"
        path.write_text(self.markdown(payload))
        return path

    def steps_trained(self, tags, results: dict) -> dict:
        """The optimiser steps each model and student ran (what a wall-clock budget decided)."""
        students = {}
        for name in results:
            info = self.out / "students" / name / "student.json"
            if info.is_file():
                students[name] = json.loads(info.read_text())["steps"]
        return {"diffusion": {tag: json.loads((self.model(tag) / "dakter.json").read_text())["steps_trained"] for tag in tags}, "students": students}

    def _length_text(self, p: dict) -> str:
        """'diffusion N steps of batch B; students M steps of batch B', with the budget when one was set."""
        d, s, steps = self.cfg.diffusion, self.cfg.student, p.get("steps", {})
        if d.max_minutes > 0 and steps.get("diffusion"):
            diffusion = f"diffusion {', '.join(str(v) for v in steps['diffusion'].values())} steps of batch {d.batch_size} ({d.max_minutes:g} min budget)"
        else:
            diffusion = f"diffusion {d.max_steps} steps of batch {d.batch_size}"
        if s.max_minutes > 0 and steps.get("students"):
            counts = sorted(steps["students"].values())
            students = f"students {counts[0]}-{counts[-1]} steps of batch {s.batch_size} ({s.max_minutes:g} min budget each)"
        else:
            students = f"students {s.max_steps} steps of batch {s.batch_size}"
        return f"{diffusion}; sampler {self.cfg.sampling.sampler} x {self.cfg.sampling.steps}, decode {self.cfg.sampling.decode}; {students}"

    def studies(self, segmenter: str) -> dict:
        """Sampler and decode studies: throughput, generation quality and student mIoU per variant."""
        out: dict[str, list] = {"sampler": [], "decode": []}
        n = int(math.ceil(self.e.study_ratio * self.n_train))
        variants = [("sampler", e, {"sampler": e.split(":")[0], "steps": int(e.split(":")[1])}) for e in self.e.sampler_study]
        variants += [("decode", e, {"decode": e.split(":")[0], "decode_last": int(e.split(":")[1])}) for e in self.e.decode_study]
        for kind, entry, sampling in variants:
            name = f"{kind}_{entry.replace(':', '_')}"
            url = self.generated("b_cfg", n, name=name, sampling=sampling)
            drawn = Path(self.generated_url(self.drawn_name(name)))
            throughput = json.loads((drawn / "throughput.json").read_text()) if (drawn / "throughput.json").is_file() else {}
            quality = generation_quality(self.cfg, url, segmenter, n=min(self.e.quality_pairs, n))
            mious = []
            for seed in self.e.study_seeds:
                run = dataclasses.replace(self._run("dakter", self.e.study_arch, self.e.study_ratio, seed), sampling=name)
                mious.append(self.student(run, url)["miou"])
            out[kind].append({"variant": entry, "sampling": sampling, "pairs_per_second": throughput.get("pairs_per_second"), "quality": quality, "miou": mious})
        return out

    # -- report --------------------------------------------------------------------------------

    def _by_seed(self, results: dict, method: str, arch: str, ratio: float, key: str, seeds=None) -> dict[int, float]:
        """results[...][key] of the finished runs of one (method, arch, ratio), by seed (default: the
        main table's seeds)."""
        names = {s: self._run(method, arch, ratio, s).name for s in (self.e.seeds if seeds is None else seeds)}
        return {s: results[n][key] for s, n in names.items() if n in results}

    def _cell(self, results: dict, method: str, arch: str, ratio: float, key: str, seeds=None) -> tuple[float, float | None]:
        return _mean_std(list(self._by_seed(results, method, arch, ratio, key, seeds).values()))

    def _diff_cell(self, results: dict, a: str, b: str, arch: str, ratio: float, seeds=None) -> str:
        """Same-seed difference a - b in mIoU: 'mean ± std (seeds where a is ahead / seeds)'."""
        first, second = self._by_seed(results, a, arch, ratio, "miou", seeds), self._by_seed(results, b, arch, ratio, "miou", seeds)
        d = [first[s] - second[s] for s in first if s in second]
        if not d:
            return "–"
        mu, sd = _mean_std(d)
        return f"{100 * mu:+.2f} ± {100 * (sd or 0):.2f} ({sum(x > 0 for x in d)}/{len(d)})"

    def _lambda_note(self) -> str:
        other = [f"{arch} {self.kd_weight(arch):g}" for arch in self.e.archs if self.kd_weight(arch) != self.cfg.student.kd_weight]
        return f" ({', '.join(other)})" if other else ""

    def verdict(self, results: dict) -> dict:
        wins = {"dakter>hard>none": [], "dakter>hard": [], "dakter>none": [], "b_auto>=b_1": [], "dakter>hard_matched": []}
        for arch in self.e.archs:
            m = {meth: self._cell(results, meth, arch, self.e.ratio, "miou")[0] for meth in self.e.methods}
            if {"dakter", "hard", "none"} <= set(m):
                if m["dakter"] > m["hard"] > m["none"]:
                    wins["dakter>hard>none"].append(arch)
                if m["dakter"] > m["hard"]:
                    wins["dakter>hard"].append(arch)
                if m["dakter"] > m["none"]:
                    wins["dakter>none"].append(arch)
            if {"dakter", "dakter_b1"} <= set(m) and m["dakter"] >= m["dakter_b1"]:
                wins["b_auto>=b_1"].append(arch)
            if {"dakter", "hard_matched"} <= set(m) and m["dakter"] > m["hard_matched"]:
                wins["dakter>hard_matched"].append(arch)
        return wins

    def markdown(self, p: dict) -> str:
        results, classes = p["runs"], list(self.source.classes)
        e, cfg = self.e, self.cfg
        seeds = len(e.seeds)
        lines = [
            "# DAKTer experiment",
            "",
            f"Data `{redact_url(cfg.data.spec)}`: {self.n_train} training images, evaluated on the full test split (one confusion matrix per run). "
            f"Models at {cfg.data.resolution} px; {self._length_text(p)}, KD weight λ = {cfg.student.kd_weight:g}{self._lambda_note()}, T = {cfg.student.kd_temperature:g}. {seeds} seeds; mean ± std (%) over seeds.",
            "b: " + ", ".join(f"{tag} = {b:.4f}" for tag, b in p["b"].items()) + f". {p['generated_pairs']} generated pairs per model.",
            "",
            f"## Main comparison at ratio {e.ratio:g} ({100 * e.ratio:.0f} %): mIoU / mean F1",
            "",
            "| method | " + " | ".join(e.archs) + " |",
            "|---|" + "---|" * len(e.archs),
        ]
        for m in e.methods:
            cells = []
            for arch in e.archs:
                mi, ms = self._cell(results, m, arch, e.ratio, "miou")
                fi, fs = self._cell(results, m, arch, e.ratio, "mean_f1")
                cells.append(f"{report.pct(mi, ms)} / {report.pct(fi, fs)}")
            lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
        v = self.verdict(results)
        lines += [
            "",
            f"DAKTer > hard > none in mean mIoU for {len(v['dakter>hard>none'])} of {len(e.archs)} students ({', '.join(v['dakter>hard>none']) or 'none'}); "
            f"DAKTer > hard for {len(v['dakter>hard'])} ({', '.join(v['dakter>hard']) or 'none'}); DAKTer > none for {len(v['dakter>none'])} ({', '.join(v['dakter>none']) or 'none'})"
            + (f"; b = {cfg.diffusion.b} ≥ b = 1 for {len(v['b_auto>=b_1'])} ({', '.join(v['b_auto>=b_1']) or 'none'})" if "dakter_b1" in e.methods else "")
            + (f"; DAKTer > hard labels at the same weight λ for {len(v['dakter>hard_matched'])} ({', '.join(v['dakter>hard_matched']) or 'none'})." if "hard_matched" in e.methods else "."),
            "",
        ]
        pairs = [(a, b) for a, b in (("dakter", "hard"), ("dakter", "hard_matched"), ("dakter", "none"), ("hard", "none"), ("dakter", "dakter_b1")) if {a, b} <= set(e.methods)]
        if pairs and seeds > 1:
            lines += [
                "Same-seed differences in mIoU (points; mean ± std over seeds, and the seeds where the first is ahead):",
                "",
                "| student | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |",
                "|---|" + "---|" * len(pairs),
            ]
            for arch in e.archs:
                cells = []
                for a, b in pairs:
                    cells.append(self._diff_cell(results, a, b, arch, e.ratio))
                lines.append(f"| {arch} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [
            f"## Per-class IoU at ratio {e.ratio:g} (%, mean over seeds)",
            "",
            "| student | method | " + " | ".join(classes) + " |",
            "|---|---|" + "---|" * len(classes),
        ]
        bars: dict[str, tuple[list, list]] = {}
        for arch in e.archs:
            for m in e.methods:
                ious = list(self._by_seed(results, m, arch, e.ratio, "iou").values())
                per = [_mean_std([iou[c] for iou in ious]) for c in range(len(classes))]
                lines.append(f"| {arch} | {METHOD_NAMES[m]} | " + " | ".join(report.pct(mu) for mu, _ in per) + " |")
                agg = bars.setdefault(METHOD_NAMES[m], ([0.0] * len(classes), [0.0] * len(classes)))
                for c, (mu, _) in enumerate(per):
                    agg[0][c] += (0 if math.isnan(mu) else 100 * mu) / len(e.archs)
        report.bar_figure(classes, {k: (val[0], None) for k, val in bars.items()}, self.out / "per_class_iou.png", "IoU (%) mean over students and seeds", f"per-class IoU at ratio {e.ratio:g}")
        lines += ["", "![per-class IoU](per_class_iou.png)", ""]
        if e.sweep_archs:
            lines += ["## Augmentation ratio sweep: mIoU (%)", "", "| student | method | 0 | " + " | ".join(f"{100 * r:.0f} %" for r in e.sweep_ratios) + " |", "|---|---|---|" + "---|" * len(e.sweep_ratios)]
            sweep_seeds = sorted(set(e.seeds) | set(e.sweep_seeds or []))  # a sweep ratio equal to e.ratio has the main table's seeds too
            for arch in e.sweep_archs:
                none = self._cell(results, "none", arch, 0, "miou", sweep_seeds)
                series = {}
                for m in e.sweep_methods:
                    cells = [self._cell(results, m, arch, r, "miou", sweep_seeds) for r in e.sweep_ratios]
                    lines.append(f"| {arch} | {METHOD_NAMES[m]} | {report.pct(*none)} | " + " | ".join(report.pct(mu, sd) for mu, sd in cells) + " |")
                    series[METHOD_NAMES[m]] = ([0.0] + [100 * r for r in e.sweep_ratios], [100 * none[0]] + [100 * mu for mu, _ in cells], [100 * (none[1] or 0)] + [100 * (sd or 0) for _, sd in cells])
                if {"dakter", "hard"} <= set(e.sweep_methods) and len(e.sweep_seeds or e.seeds) > 1:
                    lines.append(f"| {arch} | DAKTer − hard labels, same seeds (points; seeds ahead) | – | " + " | ".join(self._diff_cell(results, "dakter", "hard", arch, r, sweep_seeds) for r in e.sweep_ratios) + " |")
                report.curve_figure(series, self.out / f"ratio_sweep_{arch}.png", "augmentation ratio (%)", "mIoU (%)", f"{arch}: mIoU vs augmentation ratio")
                lines += ["", f"![ratio sweep {arch}](ratio_sweep_{arch}.png)", ""]
        lines += ["## Generation quality", "", "| model | b | label alignment mIoU | pixel agreement | class-fraction TV | mean max-prob. | ENL gen / real | histogram TV / W1 |", "|---|---|---|---|---|---|---|---|"]
        for tag, q in p["quality"].items():
            hd = q.get("histogram_distance", {})
            lines.append(
                f"| {tag} | {p['b'][tag.removesuffix(DRAWN_SUFFIX)]:.3f} | {report.pct(q['label_alignment']['miou'])} | {report.pct(q['label_alignment']['pixel_agreement'])} | {q['class_fraction_tv']:.3f} | {q['mean_confidence']:.3f} | "
                f"{q['enl_generated']:.2f} / {q.get('enl_real', float('nan')):.2f} | {hd.get('tv', float('nan')):.3f} / {hd.get('w1', float('nan')):.1f} |"
            )
        lines += ["", "Label alignment: the real-only " + e.archs[0] + " student (seed " + str(e.seeds[0]) + ") segments the generated images; its argmax is scored against the generated labels.", ""]
        if e.filter_keep > 0:
            lines += [
                f"Filter: the students use the {p['generated_pairs']} best-aligned of {int(math.ceil(p['generated_pairs'] / e.filter_keep))} drawn pairs per model, scored by the real-only "
                f"{e.filter_arch} student (seed {e.seeds[0]}); rows TAG{DRAWN_SUFFIX} are the draw before the filter.",
                "",
            ]
        for tag in p["b"]:
            lines += [f"![samples {tag}](samples_{tag}.png)", ""]
        for kind, title in (("sampler", "Sampler study"), ("decode", "Soft-label decode study")):
            rows = p["studies"].get(kind) or []
            if not rows:
                continue
            lines += [f"## {title} ({e.study_arch}, DAKTer at ratio {e.study_ratio:g}, seeds {list(e.study_seeds)})", "", "| variant | pairs/s | label alignment mIoU | class-fraction TV | mean max-prob. | student mIoU |", "|---|---|---|---|---|---|"]
            for r in rows:
                mu, sd = _mean_std(r["miou"])
                pps = f"{r['pairs_per_second']:.2f}" if r["pairs_per_second"] else "–"
                lines.append(f"| {r['variant']} | {pps} | {report.pct(r['quality']['label_alignment']['miou'])} | {r['quality']['class_fraction_tv']:.3f} | {r['quality']['mean_confidence']:.3f} | {report.pct(mu, sd)} |")
            lines.append("")
        lines += ["## Time (s)", "", "| " + " | ".join(p["timings_s"]) + " |", "|" + "---|" * len(p["timings_s"]), "| " + " | ".join(f"{v:.0f}" for v in p["timings_s"].values()) + " |", ""]
        return "\n".join(lines)


def run_experiment(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    e = cfg.experiment
    check_students(cfg.student, [*e.archs, *e.sweep_archs, e.study_arch, e.filter_arch])
    return Experiment(cfg, out, progress).run()
