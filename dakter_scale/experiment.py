"""The study runner (jobs/experiment.py, jobs/demo.py): plan -> run -> analyse -> report.

The plan (study/plan.py) lists the units a config asks for: models, generated sets, students.
`Experiment.run` takes them in order, each skipped when its result exists, so a stopped run
resumes where it stopped; with experiment.kd_weight_grid, each student's KD weight lambda is first
chosen on a validation split. The analysis (generation quality, sample figures, the studies) then
fills results.json, and the report (study/report.py) writes results.md -- or report.md for the
demo, which is this runner on configs/demo.yaml (`run_demo`). `rescore` scores the finished
students on another split; `write_report` rebuilds a report from its results.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
import typing
from pathlib import Path

import yaml

from dakter_scale.cards import write_student_card
from dakter_scale.config import Config, ConfigError, from_dict, migrate_keys, save_config, to_dict
from dakter_scale.data.real import open_source, split_digests, split_fingerprint
from dakter_scale.data.shardset import DatasetInfo, ShardSet
from dakter_scale.data.storage import redact_url
from dakter_scale.diffusion.train import train_diffusion
from dakter_scale.student.evaluate import evaluate_student
from dakter_scale.student.models import check_students
from dakter_scale.student.pretrain import pretrain_finetune
from dakter_scale.student.train import train_student
from dakter_scale.study import analyse, figures
from dakter_scale.study import report as study_report
from dakter_scale.study.folder import StudyFolder
from dakter_scale.study.plan import (
    BANK_PAIRS,
    DRAWN_SUFFIX,
    VALIDATION,
    GeneratedSet,
    InstanceBank,
    Model,
    Plan,
    Selection,
    StudentRun,
    grid_variant,
)
from dakter_scale.study.quality import generation_quality, read_generated
from dakter_scale.study.records import Records, model_digest, set_digest
from dakter_scale.synth.bank import grow_bank
from dakter_scale.synth.filter import filter_shards
from dakter_scale.synth.run import synthesize
from dakter_scale.synth.targeted import synthesize_targeted

log = logging.getLogger("dakter_scale")
THROUGHPUT = "throughput.json"  # a generated set's side file: the run's and the sampling loop's pairs per second

PRESETS = ("experiment", "demo")  # experiment: results.md; demo: report.md (jobs/demo.py)


class Experiment:
    """A study folder: its plan, and the units, analysis and report that fill it."""

    def __init__(
        self,
        cfg: Config,
        out: str | Path,
        progress: bool = True,
        preset: str = "experiment",
        records: str | Path | None = None,
    ):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        self.cfg, self.out, self.progress, self.preset = cfg, Path(out), progress, preset
        self.folder = StudyFolder(out)  # the layout of OUT
        self.records = Records(records, out) if records else None  # --records: scores kept beyond this folder
        self.e = cfg.experiment
        self.test_spec = self.e.test_spec or cfg.data.spec  # every table student is scored here, once
        self.source = open_source(cfg.data.spec)
        self.n_train = len(self.source.split_items("train"))
        self.plan = Plan(cfg, self.n_train)
        self.choose()
        self.timings: dict[str, float] = self.folder.read_timings()

    # -- units ---------------------------------------------------------------------------------

    def model(self, tag: str) -> Path:
        """The diffusion model for b = cfg.diffusion.b ("b_cfg") or b = 1 ("b_1")."""
        d = self.folder.model(tag)
        if self.folder.model_done(tag):
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
        info = filter_shards(
            drawn,
            url,
            self.real_only(self.e.filter_arch),
            keep=n,
            samples_per_shard=self.cfg.synthesis.samples_per_shard,
        )
        self.timings[f"filter_{name}"] = info.filter["seconds"]
        return url

    def targeted(self, unit: GeneratedSet) -> str:
        """The n pairs of set `unit` that meet its class target (synth/targeted.py), from model
        unit.model; a selection draw is kept as NAME_all. Not filtered for alignment."""
        url = self.generated_url(unit.name)
        info = ShardSet(url).info()
        if info is not None and info.complete and info.count == unit.n and info.target:
            return url
        cfg = self.cfg.replace(**{"synthesis.n": unit.n})  # the target: synthesis.target, as for the job
        t = time.time()
        result = synthesize_targeted(
            self.model(unit.model),
            url,
            cfg.synthesis,
            cfg.sampling,
            self.generated_url(unit.name + DRAWN_SUFFIX),
            progress=self.progress,
            use_ray=True,
        )
        if not result.ok:
            raise RuntimeError(f"targeted synthesis of {unit.name} failed: {result.summary.failed}")
        self.timings[f"generate_{unit.name}"] = time.time() - t
        return url

    def bank(self, unit: InstanceBank) -> str:
        """The instance bank of `unit` (synth/bank.py grow_bank): pairs from model unit.model drawn into
        generated/bank_pairs, by whole shards, until the instances they give (judged by the real-only
        student of unit.judge) number unit.n; kept as generated/bank. Resumes like any set."""
        url = self.generated_url(unit.name)
        if self.done(unit):
            return url
        cfg = self.cfg.replace(**{"synthesis.n": self.plan.gen_size()})
        t = time.time()
        summary = grow_bank(
            self.model(unit.model),
            self.generated_url(BANK_PAIRS),
            url,
            self.real_only(unit.judge),
            unit.n,
            cfg.synthesis,
            cfg.sampling,
            first_pairs=self.plan.gen_size(),
            progress=self.progress,
        )
        self.timings[f"bank_{unit.name}"] = time.time() - t
        log.info("experiment: %s", summary.lines()[0])
        return url

    def drawn_name(self, name: str) -> str:
        """Where the pairs behind generated set `name` were drawn: the set itself, or NAME_all with the filter."""
        return name + DRAWN_SUFFIX if self.e.filter_keep > 0 else name

    def generated_url(self, name: str) -> str:
        return self.folder.generated(name)

    def real_only(self, arch: str) -> Path:
        """The real-only student of `arch` (first seed), trained here if missing: it scores label
        alignment for the quality table and for the filter."""
        return self.trained(self.plan.real_only(arch))

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
        # The run's rate counts actor start-up; the sampling rate (pairs per second of one writer's
        # sampling loop, from the shard markers) is what compares samplers on small sets.
        sampling_seconds = sum(
            d.marker.get("sample_seconds", 0.0) for d in ShardSet(url).done() if d.shard in summary.written
        )
        throughput = {
            "pairs": summary.pairs_written,
            "seconds": summary.seconds,
            "pairs_per_second": summary.pairs_per_second,
        }
        if sampling_seconds > 0:
            throughput.update(
                sampling_seconds=sampling_seconds, sampling_pairs_per_second=summary.pairs_written / sampling_seconds
            )
        ShardSet(url).write_side(
            THROUGHPUT, (json.dumps(throughput) + "\n").encode()
        )  # beside the shards, at any fsspec URL
        return url

    def student(self, run: StudentRun) -> dict:
        """run's student, trained (resuming) and scored on the test split: students/NAME/metrics.json."""
        return self._student(run, None)

    def selection(self, run: StudentRun) -> dict:
        """A student of the validation grid (lambda, ratio), trained and scored on the validation split only."""
        return self._student(run, VALIDATION)

    def _student(self, run: StudentRun, tag: str | None) -> dict:
        d = self.folder.student(run.name)
        if self.folder.metrics(run.name, tag).is_file():
            return self.score(run, tag)
        assert run.weight is not None or run.generated is None or run.method == "hard", (
            f"{run.name}: its weight lambda is not chosen yet"
        )
        t = time.time()
        twin = self.grid_twin(run)
        if twin is not None and not self.folder.student_trained(run.name):
            log.info("experiment: %s is the validation grid's %s (the same training): copying it", run.name, twin.name)
            shutil.copytree(twin, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("metrics*.json"))
        elif not self.folder.student_trained(run.name):
            self.train(run, d)
        metrics = self.score(run, tag)
        self.timings[f"student_{run.name}"] = time.time() - t
        return metrics

    def train(self, run: StudentRun, d: Path) -> None:
        """Train run's student into folder d (resuming a checkpoint there)."""
        overrides = {
            "student.arch": run.arch,
            "student.seed": run.seed,
            "student.ratio": run.ratio,
            "student.labels": run.labels,
            "student.max_generated": int(round(run.ratio * self.n_train)) if run.ratio > 0 else 0,
        }
        if run.weight is not None:
            overrides["student.kd_weight" if run.labels == "soft" else "student.hard_weight"] = run.weight
        overrides.update(dict(run.overrides))
        budget = self.folder.budget(run.arch)
        if self.cfg.student.max_minutes > 0 and budget.is_file():
            overrides.update({"student.max_steps": json.loads(budget.read_text())["steps"], "student.max_minutes": 0.0})
        if "student.instance_bank" in overrides:  # the study's bank, by its name in the plan
            overrides["student.instance_bank"] = self.generated_url(overrides["student.instance_bank"])
        url = self.generated_url(run.generated) if run.ratio > 0 else None
        if run.method == "pretrain_finetune":
            pretrain_finetune(self.cfg.replace(**overrides), d, url, self.e.pretrain_share, progress=self.progress)
        else:
            train_student(self.cfg.replace(**overrides), d, synthetic=url, resume="latest", progress=self.progress)
        if self.cfg.student.max_minutes > 0 and not budget.is_file():
            # With a time budget the first student of an architecture measures how many steps fit; every
            # later method and seed of it trains that many, so that methods differ in their data only.
            steps = self.folder.student_info(run.name)["steps"]
            budget.write_text(
                json.dumps({"steps": steps, "measured_by": run.name, "max_minutes": self.cfg.student.max_minutes})
                + "\n"
            )
            log.info(
                "experiment: every %s student trains %d steps (what %g min allowed %s)",
                run.arch,
                steps,
                self.cfg.student.max_minutes,
                run.name,
            )

    def trained(self, run: StudentRun) -> Path:
        """run's finished student folder with its weights: a student whose scores were restored from
        --records is trained again for them (to the same weights: training is deterministic)."""
        self.student(run)
        d = self.folder.student(run.name)
        if not self.folder.student_weights(run.name):
            log.info("experiment: %s was restored without weights: training it again for them", run.name)
            self.train(run, d)
        return d

    def grid_twin(self, run: StudentRun) -> Path | None:
        """The validation grid's student trained exactly as `run` (a DAKTer student at its chosen lambda
        and a ratio of the grid), when it is finished."""
        if run.method != "dakter" or run.variant or run.arch not in self.plan.selection_archs():
            return None
        name = dataclasses.replace(run, variant=grid_variant(run.weight, self.plan.steps(run.arch))).name
        # a twin restored from --records has scores but no weights: the run then trains (to the same weights)
        return (
            self.folder.student(name)
            if self.folder.metrics(name, VALIDATION).is_file() and self.folder.student_weights(name)
            else None
        )

    def score(self, run: StudentRun | str, tag: str | None, spec: str | None = None) -> dict:
        """A trained student's metrics on the test split of `spec`: metrics.json for data.spec (tag
        None), metrics_validation.json for experiment.validation_spec, metrics_TAG.json for another
        split; evaluated once and kept."""
        name = run if isinstance(run, str) else run.name
        spec = spec or (self.e.validation_spec if tag == VALIDATION else self.test_spec)
        path = self.folder.metrics(name, tag)
        if path.is_file():
            metrics = json.loads(path.read_text())
            if metrics["data"] != spec:
                raise ConfigError(f"{path} holds scores on {metrics['data']}, not {spec}: give this split another tag")
            return metrics
        metrics = evaluate_student(str(path.parent), spec, "test", self.cfg.eval)
        metrics["run"] = (
            json.loads(self.folder.metrics(name, None).read_text())["run"] if isinstance(run, str) else to_dict(run)
        )
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        if tag is None and self.folder.student_trained(name):
            write_student_card(self.folder.student(name), metrics)  # the card carries the study's test score
        return metrics

    # -- run -----------------------------------------------------------------------------------

    def done(self, unit: Model | GeneratedSet | Selection | StudentRun) -> bool:
        """Whether a unit finished in an earlier run (for the log; each unit checks for itself)."""
        if isinstance(unit, Model):
            return self.folder.model_done(unit.tag)
        if isinstance(unit, GeneratedSet):
            info = ShardSet(self.generated_url(unit.name)).info()
            return info is not None and info.complete and info.count == unit.n
        if isinstance(unit, Selection):
            return self.folder.metrics(unit.run.name, VALIDATION).is_file()
        if isinstance(unit, InstanceBank):
            info = ShardSet(self.generated_url(unit.name)).info()
            return info is not None and info.complete and (info.count or 0) >= unit.n
        return self.folder.metrics(unit.name, None).is_file()

    def execute(self, units: list) -> None:
        """Run every unit in order; a finished one returns at once."""
        finished = {u for u in units if self.done(u)}
        todo = [u for u in units if u not in finished]
        log.info("experiment: %d units planned, %d finished earlier, %d to run", len(units), len(finished), len(todo))
        for unit in units:
            if unit not in finished:
                log.info("experiment [%d/%d]: %s", todo.index(unit) + 1, len(todo), describe(unit))
            if isinstance(unit, Model):
                self.model(unit.tag)
            elif isinstance(unit, GeneratedSet) and unit.target:
                self.targeted(unit)
            elif isinstance(unit, GeneratedSet):
                self.generated(unit.model, unit.n, unit.name, dict(unit.sampling))
            elif isinstance(unit, Selection):
                self.selection(unit.run)
            elif isinstance(unit, InstanceBank):
                self.bank(unit)
            else:
                self.student(unit)
            self.keep(unit)
            self.folder.write_timings(self.timings)

    def keep(self, unit: Model | GeneratedSet | Selection | StudentRun) -> None:
        """With --records: check a model's or set's identity against the kept one, keep a student's scores."""
        if self.records is None:
            return
        if isinstance(unit, Model):
            self.records.check("models", unit.tag, model_digest(self.folder.model(unit.tag)))
        elif isinstance(unit, GeneratedSet):
            self.records.check("generated", unit.name, set_digest(self.generated_url(unit.name)))
        elif isinstance(unit, InstanceBank):
            return  # its identity is its source's and its judge's, both checked
        else:
            self.records.keep_student((unit.run if isinstance(unit, Selection) else unit).name)

    def kd_weight_choice(self) -> dict[str, dict]:
        """The lambda grid's validation scores and choice per student (study/analyse.py); {} while a
        grid student is unscored."""
        runs = self.plan.selection_runs()
        if not all(self.folder.metrics(r.name, VALIDATION).is_file() for r in runs):
            return {}
        return analyse.choose_settings(
            runs, {r.name: self.score(r, VALIDATION) for r in runs}, bool(self.e.ratio_grid), bool(self.e.steps_grid)
        )

    def choose(self) -> None:
        """Plan the tables' students with the lambdas the grid chose, once every grid student is scored."""
        choice = self.kd_weight_choice() if self.plan.pending() else {}
        if choice:
            self.plan = Plan(self.cfg, self.n_train, chosen_settings(choice))

    def splits(self) -> dict[str, dict]:
        """The splits this study scores on, each with its spec, scene count and fingerprint
        (data.real.split_fingerprint); refuses (ConfigError, one line) a validation split that shares a
        scene with the test split, since whatever is chosen on it would then be chosen on test scenes."""
        digests = {"test": split_digests(open_source(self.test_spec), "test")}
        if self.e.validation_spec:
            digests["validation"] = split_digests(open_source(self.e.validation_spec), "test")
            shared = set(digests["validation"]) & set(digests["test"])
            if shared:
                raise ConfigError(
                    f"experiment.validation_spec {self.e.validation_spec} shares {len(shared)} scene(s) with the test split of {self.test_spec}: "
                    "choices must be made on other scenes (give another seed, or set experiment.test_spec)"
                )
        specs = {"test": self.test_spec, "validation": self.e.validation_spec}
        return {
            name: {"spec": redact_url(specs[name]), "scenes": len(d), "fingerprint": split_fingerprint(d)}
            for name, d in digests.items()
        }

    def run(self) -> Path:
        """Plan, run every unit (finished ones are kept), analyse, report. Returns the report's path."""
        splits = self.splits()  # a validation split that overlaps the test split stops here, before any work
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out)
        if self.records is not None:
            restored = self.records.restore()
            if restored:
                log.info(
                    "experiment: restored %d finished students' scores from %s", len(restored), self.records.folder
                )
                self.choose()  # the validation grid may be complete already
        self.execute(self.plan.units())
        if self.plan.pending():  # the grid's students are done now: the rest of the plan follows from them
            self.choose()
            log.info(
                "experiment: chosen on the validation split: %s",
                ", ".join(
                    f"{a} lambda {w:g} ratio {r:g}" + (f" steps {n}" if n else "")
                    for a, (w, r, n) in self.plan.chosen.items()
                ),
            )
            self.execute(self.plan.units())
        payload = self.analyse()
        payload["splits"] = splits
        payload["split_of"] = {
            "runs": "test",
            "kd_weight_choice": "validation",
            "quality": "generated pairs, scored by the real-only student",
        }
        self.folder.results().write_text(json.dumps(payload, indent=2) + "\n")
        return write_report(self.out, payload)

    # -- analyse -------------------------------------------------------------------------------

    def analyse(self) -> dict:
        """results.json: the table's runs, generation quality and sample figures per generated set,
        the studies, b, timings and the validation grid's outcome."""
        t = time.time()
        sets = self.plan.generated_sets()
        segmenter = str(self.real_only(self.e.archs[0]))
        n = min(self.e.quality_pairs, self.plan.gen_size())
        quality = {s.name: generation_quality(self.cfg, self.generated_url(s.name), segmenter, n=n) for s in sets}
        if self.e.filter_keep > 0:  # the draw before the filter, for comparison
            for s in (s for s in sets if not s.target):
                quality[self.drawn_name(s.name)] = generation_quality(
                    self.cfg, self.generated_url(self.drawn_name(s.name)), segmenter, n=n
                )
        for s in sets:
            images, q = read_generated(self.generated_url(s.name), self.e.figure_samples)
            figures.sample_figure(
                images,
                q,
                self.source.classes,
                self.out / f"samples_{s.name}.png",
                title=f"generated pairs, model {s.name}",
            )
        studies = self.studies(segmenter)
        models = {s.model: self.folder.model_info(s.model) for s in sets}
        timings = dict(self.timings, analysis=time.time() - t)
        payload = {
            "config": to_dict(self.cfg),
            "n_train": self.n_train,
            "generated_pairs": self.plan.gen_size(),
            "runs": {r.name: self.student(r) for r in self.plan.main_runs() + self.plan.sweep_runs()},
            "quality": quality,
            "studies": studies,
            "timings_s": dict(timings, total=sum(timings.values())),
            "b": {tag: info["b"] for tag, info in models.items()},
            "b_mode": {tag: info["b_mode"] for tag, info in models.items()},
            "classes": list(self.source.classes),
            "generated": {s.name: self.generated_summary(s.name) for s in sets},
            "steps": self.steps_trained(
                [s.model for s in sets], [r.name for r in self.plan.main_runs() + self.plan.sweep_runs()]
            ),
            "preset": self.preset,
        }
        if self.plan.selection_runs():
            payload.update(validation_spec=self.e.validation_spec, kd_weight_choice=self.kd_weight_choice())
        return payload

    def generated_summary(self, name: str) -> dict:
        """Pairs, shards, sampling speed, confidence and divergence warnings of a generated set."""
        info = ShardSet(self.generated_url(name)).info() or DatasetInfo(format=None)
        throughput = ShardSet(self.generated_url(self.drawn_name(name))).read_side(THROUGHPUT)
        return {
            "count": info.count,
            "shards": info.num_shards,
            "pairs_per_second": json.loads(throughput)["pairs_per_second"] if throughput else None,
            "mean_confidence": (info.generated_stats or {}).get("mean_confidence"),
            "warnings": info.warnings or [],
            "target": info.target,  # a targeted set's record (synth/targeted.py), else None
        }

    def steps_trained(self, tags, names) -> dict:
        """The optimiser steps each model and student ran (what a wall-clock budget decided)."""
        infos = {name: self.folder.student_info(name) for name in names}
        students = {name: info["steps"] for name, info in infos.items() if info is not None}
        return {
            "diffusion": {tag: self.folder.model_info(tag)["steps_trained"] for tag in sorted(set(tags))},
            "students": students,
        }

    def studies(self, segmenter: str) -> dict:
        """Sampler and decode studies: throughput, generation quality and student mIoU per variant."""
        out: dict[str, list] = {"sampler": [], "decode": []}
        for v in self.plan.study_variants():
            url, drawn = (
                self.generated_url(v.generated.name),
                ShardSet(self.generated_url(self.drawn_name(v.generated.name))).read_side(THROUGHPUT),
            )
            throughput = json.loads(drawn) if drawn else {}
            quality = generation_quality(self.cfg, url, segmenter, n=min(self.e.quality_pairs, v.generated.n))
            mious = [self.student(run)["miou"] for run in v.runs]
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

    # -- another split -------------------------------------------------------------------------

    def rescore(self, spec: str, tag: str, pattern: str = "*") -> Path:
        """Score every finished student whose folder matches `pattern` on the test split of `spec`
        (students/NAME/metrics_TAG.json), and write the tables over them: OUT/rescore_TAG.md and .json.

        For a validation split (other scenes, to choose settings on) or a larger test split
        (synthetic scenes are seeded per index: test=1000 holds test=200's scenes and 800 more)."""
        if tag == VALIDATION and spec != self.e.validation_spec:
            raise ConfigError(
                f"--tag {VALIDATION} is the validation grid's split ({self.e.validation_spec or 'none set'}): give this split another tag"
            )
        if spec == self.test_spec:
            raise ConfigError(
                f"{spec} is this study's test split, which each student is scored on once (metrics.json): rescore on another split"
            )
        runs = {}
        for d in sorted(self.folder.students().glob(pattern)):
            if self.folder.metrics(d.name, None).is_file():
                log.info("experiment: scoring %s on %s", d.name, spec)
                runs[d.name] = self.score(d.name, tag, spec)
        payload = {"spec": spec, "tag": tag, "runs": runs}
        (self.out / f"rescore_{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
        path = self.out / f"rescore_{tag}.md"
        path.write_text(study_report.rescore_markdown(payload, self.plan, list(self.source.classes)))
        return path


def chosen_settings(choice: dict[str, dict]) -> dict[str, tuple[float, float]]:
    """{arch: (lambda, ratio, length)} from the validation grid's outcome (results.json's
    kd_weight_choice; files from before the ratio grid have no chosen_ratio: the main ratio, recorded
    as ratio; without a length grid the length is None)."""
    return {
        arch: (row["chosen"], row.get("chosen_ratio", row["ratio"]), row.get("chosen_steps"))
        for arch, row in choice.items()
    }


def describe(unit: Model | GeneratedSet | Selection | StudentRun) -> str:
    """One line naming a unit for the log and --plan."""
    if isinstance(unit, Model):
        return f"model {unit.tag}"
    if isinstance(unit, GeneratedSet):
        sampling = ", ".join(f"{k} {v}" for k, v in unit.sampling)
        target = f", class target {unit.target[0]} by {unit.target[1]}" if unit.target else ""
        return (
            f"generated set {unit.name}: {unit.n} pairs from model {unit.model}"
            + (f" ({sampling})" if sampling else "")
            + target
        )
    if isinstance(unit, Selection):
        return f"student {unit.run.name} (validation grid, scored on the validation split)"
    if isinstance(unit, InstanceBank):
        return f"instance bank {unit.name}: {unit.n} instances cut from pairs of model {unit.model}, judged by the real-only {unit.judge}"
    weight = (
        ""
        if unit.generated is None or unit.method == "hard"
        else (f", weight {unit.weight:g}" if unit.weight is not None else ", lambda to be chosen")
    )
    return f"student {unit.name}" + (f" on {unit.generated}" if unit.generated else "") + weight


# -- entry points ----------------------------------------------------------------------------------


def run_experiment(cfg: Config, out: str | Path, progress: bool = True, records: str | Path | None = None) -> Path:
    """jobs/experiment.py: the study of cfg.experiment in OUT; returns OUT/results.md. records: a
    folder that keeps the finished students' scores beyond OUT (study/records.py)."""
    e = cfg.experiment
    check_students(cfg.student, [*e.archs, *e.sweep_archs, e.study_arch, e.filter_arch])  # before any work
    return Experiment(cfg, out, progress, records=records).run()


def run_demo(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """jobs/demo.py: the same runner on the demo's one-student plan (configs/demo.yaml); returns OUT/report.md."""
    check_students(cfg.student, list(cfg.experiment.archs))  # before any work
    return Experiment(cfg, out, progress, preset="demo").run()


def describe_plan(cfg: Config, out: str | Path) -> list[str]:
    """The plan as lines, each unit marked done or to run (jobs/experiment.py --plan)."""
    exp = Experiment(cfg, out, progress=False)
    lines = [f"{'done' if exp.done(u) else 'todo'}  {describe(u)}" for u in exp.plan.units()]
    if exp.plan.pending():
        lines.append(
            "then the students of the tables and studies, with lambda and ratio chosen on the validation split"
        )
    return lines


def saved_config(values: dict, source: str) -> Config:
    """A config saved by an earlier run (its config.yaml, its results.json's "config"): keys that moved
    are read at their new place (config.MOVED_KEYS); keys this version no longer knows (a removed
    feature's) are dropped with a warning."""
    dropped: list[str] = []
    values, _ = migrate_keys(values)

    def known(cls: type, values: dict, prefix: str) -> dict:
        hints, fields = typing.get_type_hints(cls), {f.name for f in dataclasses.fields(cls)}
        dropped.extend(prefix + k for k in values if k not in fields)
        return {
            k: known(hints[k], v, f"{prefix}{k}.") if dataclasses.is_dataclass(hints[k]) else v
            for k, v in values.items()
            if k in fields
        }

    values = known(Config, values, "")
    if dropped:
        log.warning("%s: ignoring keys this version does not know: %s", source, ", ".join(dropped))
    return from_dict(values, source).validate()


def read_config(out: str | Path) -> Config:
    """OUT's own config (OUT/config.yaml, written by the run that made it)."""
    path = Path(out) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{out} has no config.yaml: not a study folder")
    return saved_config(yaml.safe_load(path.read_text()) or {}, str(path))


def write_report(out: str | Path, payload: dict | None = None) -> Path:
    """OUT/results.md and its figures (or the demo's OUT/report.md) from results.json's payload."""
    out = Path(out)
    payload = payload if payload is not None else json.loads((out / "results.json").read_text())
    cfg = saved_config(payload["config"], str(out / "results.json"))
    classes = payload.get("classes") or list(open_source(cfg.data.spec).classes)
    plan = Plan(cfg, payload["n_train"], chosen_settings(payload.get("kd_weight_choice", {})))
    if payload.get("preset") == "demo":
        path, text = out / "report.md", study_report.demo_markdown(payload, plan, classes)
    else:
        study_report.write_figures(payload, plan, classes, out)
        path, text = out / "results.md", study_report.experiment_markdown(payload, plan, classes)
    path.write_text(text)
    return path
