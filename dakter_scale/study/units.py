"""The units of a study, each built when it is asked for and kept: the diffusion models, the generated
sets (plain, filtered, targeted), the instance bank, and the students with their scores.

A unit whose result exists in the study folder (study/folder.py) returns it at once, so a stopped
study resumes where it stopped; the runner (study/runner.py) asks for them as their inputs are built.

Several runners may share one study folder (one per core, or machines on one network folder): a unit
is built under its claim, OUT/claims/KEY.lock (study/claims.py), so each is built by one runner. A
runner that needs a unit another is building waits for it, then finds it done; the runner's scheduler
(study/runner.py) takes units no other runner holds. A killed runner's claims are free at once, and its
units resume from their checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dakter_scale.cards import write_student_card
from dakter_scale.config import Config, ConfigError, to_dict
from dakter_scale.data.shardset import ShardSet
from dakter_scale.data.storage import redact_url
from dakter_scale.diffusion.distill import distill
from dakter_scale.diffusion.model import model_hash
from dakter_scale.diffusion.train import train_diffusion
from dakter_scale.student.augment import PASTE_RULE
from dakter_scale.student.evaluate import evaluate_student
from dakter_scale.student.models import STUDENT_FILE
from dakter_scale.student.pretrain import pretrain_finetune, pretrain_folder
from dakter_scale.student.train import train_student
from dakter_scale.study.claims import Claim
from dakter_scale.study.folder import StudyFolder
from dakter_scale.study.plan import (
    BANK_PAIRS,
    DISTILLED,
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
from dakter_scale.synth.bank import grow_bank
from dakter_scale.synth.filter import filter_shards
from dakter_scale.synth.run import synthesize
from dakter_scale.synth.targeted import synthesize_targeted
from dakter_scale.training import drop_checkpoints

log = logging.getLogger("dakter_scale")
THROUGHPUT = "throughput.json"  # a generated set's side file: the run's and the sampling loop's pairs per second
CLAIM_POLL_S = 10.0  # seconds between looks at a claim another runner holds


class Busy(Exception):
    """Another live runner of the study folder holds this unit's claim."""


def claim_key(unit: Model | GeneratedSet | Selection | InstanceBank | StudentRun) -> tuple[str, str]:
    """(kind, name) of a unit's claim: what it writes (a model, a generated set, a student folder)."""
    if isinstance(unit, Model):
        return "model", unit.tag
    if isinstance(unit, (GeneratedSet, InstanceBank)):
        return "generated", unit.name
    return "student", unit.run.name if isinstance(unit, Selection) else unit.name


def checkpoint_every(configured: int, steps: int) -> int:
    """A study's models and students run for hours beside each other: where the config sets no interval
    they still checkpoint, every tenth of their steps but no more often than every 100, so a stopped study resumes
    within the unit."""
    return configured or max(100, steps // 10)


class Units:
    """The units of one study folder under one config and plan; `timings` collects how long each took."""

    def __init__(self, cfg: Config, folder: StudyFolder, plan: Plan, n_train: int, test_spec: str, progress: bool):
        self.cfg, self.folder, self.plan, self.n_train = cfg, folder, plan, n_train
        self.e = cfg.experiment
        self.test_spec = test_spec  # every table student is scored here, once
        self.progress = progress
        self.timings: dict[str, float] = folder.read_timings()
        self._held: set[str] = set()

    @contextlib.contextmanager
    def claim(self, kind: str, name: str, what: str, wait: bool = True) -> Iterator[None]:
        """Hold OUT/claims/KIND-NAME.lock while building what it names. Held by another live runner: wait until it
        is free (wait), or raise Busy at once. Re-entrant within this runner (a student built for the
        bank that claims it)."""
        key = f"{kind}-{name}"
        if key in self._held:
            yield
            return
        claim = Claim(self.folder.claim(key), what)
        if not claim.take():
            if not wait:
                raise Busy(what)
            holder = claim.holder() or {}
            log.info("experiment: waiting for %s, which another runner builds (pid %s)", what, holder.get("pid", "?"))
            while not claim.take():
                time.sleep(CLAIM_POLL_S)
        self._held.add(key)
        try:
            yield
        finally:
            self._held.discard(key)
            claim.release()

    def once(self, kind: str, name: str, what: str, done: Callable[[], bool], build: Callable[[], None]) -> None:
        """Build a unit under its claim unless it is done: looked at before the claim (a unit another runner
        finished costs no wait) and again under it (another runner may have finished it meanwhile)."""
        if done():
            return
        with self.claim(kind, name, what):
            if not done():
                build()

    def build(self, unit: Model | GeneratedSet | Selection | InstanceBank | StudentRun) -> None:
        """Build a unit of the plan (at once when it exists)."""
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

    def model(self, tag: str) -> Path:
        """The diffusion model for b = cfg.diffusion.b ("b_cfg") or b = 1 ("b_1"), or b_cfg's sampler
        distilled by the distill section (DISTILLED; its rounds resume like the trainer)."""
        d = self.folder.model(tag)
        self.once(
            "model", tag, f"the model {tag}", lambda: self.folder.model_done(tag), lambda: self._train_model(tag, d)
        )
        return self.check_distilled(d) if tag == DISTILLED else d

    def _train_model(self, tag: str, d: Path) -> None:
        if tag == DISTILLED:
            teacher = self.model("b_cfg")
            log.info("experiment: distilling %s to %d steps into %s", teacher, self.cfg.distill.steps, d)
            t = time.time()
            distill(self.cfg, teacher, d, resume="latest", progress=self.progress)
            for folder in (d, *d.glob("rounds/*")):  # finished: its rounds' weights stay, their checkpoints go
                drop_checkpoints(folder)
            self.timings[f"model_{tag}"] = time.time() - t
            return
        b = self.cfg.diffusion.b if tag == "b_cfg" else 1.0
        log.info("experiment: training the diffusion model %s (b = %s)", tag, b)
        t = time.time()
        every = checkpoint_every(self.cfg.diffusion.checkpoint_every, self.cfg.diffusion.max_steps)
        cfg = self.cfg.replace(**{"diffusion.b": b, "diffusion.checkpoint_every": every})
        train_diffusion(cfg, d, resume="latest", progress=self.progress)
        drop_checkpoints(d)
        self.timings[f"model_{tag}"] = time.time() - t

    def check_distilled(self, folder: Path) -> Path:
        """A kept distilled folder (e.g. copied in from bench/distill_frontier.py) must come from this study's
        b_cfg's DDIM at distill.teacher_steps, to distill.steps: else one line, since its pairs would
        describe another sampler."""
        record = self.folder.model_info(DISTILLED).get("distilled") or {}
        teacher, d = model_hash(self.model("b_cfg")), self.cfg.distill
        first = d.teacher_steps or 2 * d.steps  # as diffusion/distill.plan_rounds reads it
        rounds = record.get("rounds") or [{}]
        kept = (record.get("undistilled_model_hash"), rounds[0].get("from_steps"), record.get("evaluations_per_pair"))
        if kept != (teacher, first, d.steps):
            raise ConfigError(
                f"{folder}: distilled from model {str(kept[0])[:12]}...'s DDIM-{kept[1]} to {kept[2]} steps, not from "
                f"models/b_cfg ({teacher[:12]}...)'s DDIM-{first} to {d.steps} "
                "(distill.teacher_steps, distill.steps): remove it to distil again"
            )
        if record.get("method", "progressive") != d.method:
            raise ConfigError(
                f"{folder}: {record.get('method', 'progressive')}-distilled, not by {d.method} (distill.method): "
                "remove it to distil again"
            )
        return folder

    def generated(self, tag: str, n: int, name: str | None = None, sampling: dict | None = None) -> str:
        """The n generated pairs from model `tag` that the students use: with experiment.filter_keep,
        the n best-aligned of ceil(n / filter_keep) drawn pairs (the draw is kept as NAME_all)."""
        name = name or tag
        if self.e.filter_keep <= 0:
            return self.drawn(tag, n, name, sampling)
        drawn = self.drawn(tag, int(math.ceil(n / self.e.filter_keep)), self.drawn_name(name), sampling)
        url = self.generated_url(name)
        judge = self.real_only(self.e.filter_arch)
        with self.claim("generated", name, f"the generated set {name}"):
            info = filter_shards(drawn, url, judge, keep=n, samples_per_shard=self.cfg.synthesis.samples_per_shard)
        self.timings[f"filter_{name}"] = info.filter["seconds"]
        return url

    def targeted(self, unit: GeneratedSet) -> str:
        """The n pairs of set `unit` that meet its class target (synth/targeted.py), from model
        unit.model; a selection draw is kept as NAME_all. Not filtered for alignment."""
        url = self.generated_url(unit.name)

        def done() -> bool:
            info = ShardSet(url).info()
            return info is not None and info.complete and info.count == unit.n and bool(info.target)

        def build() -> None:
            cfg = self.cfg.replace(**{"synthesis.n": unit.n})  # the target: synthesis.target, as for the job
            model = self.model(unit.model)  # built already when the runner schedules this set (Plan.needs)
            t = time.time()
            result = synthesize_targeted(
                model,
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

        self.once("generated", unit.name, f"the generated set {unit.name}", done, build)
        return url

    def bank(self, unit: InstanceBank) -> str:
        """The instance bank of `unit` (synth/bank.py grow_bank): pairs from model unit.model drawn into
        generated/bank_pairs, by whole shards, until the instances they give (judged by the real-only
        student of unit.judge) number unit.n; kept as generated/bank. Resumes like any set."""
        url = self.generated_url(unit.name)

        def build() -> None:
            cfg = self.cfg.replace(**{"synthesis.n": self.plan.gen_size()})
            model, judge = self.model(unit.model), self.real_only(unit.judge)
            t = time.time()
            summary = grow_bank(
                model,
                self.generated_url(BANK_PAIRS),
                url,
                judge,
                unit.n,
                cfg.synthesis,
                cfg.sampling,
                first_pairs=self.plan.gen_size(),
                progress=self.progress,
            )
            self.timings[f"bank_{unit.name}"] = time.time() - t
            log.info("experiment: %s", summary.lines()[0])

        self.once("generated", unit.name, f"the instance bank {unit.name}", lambda: self.done(unit), build)
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

        def done() -> bool:
            info = ShardSet(url).info()
            return info is not None and info.complete and info.count == n

        def build() -> None:
            cfg = self.cfg.replace(**{"synthesis.n": n, **{f"sampling.{k}": v for k, v in (sampling or {}).items()}})
            model = self.model(tag)
            t = time.time()
            summary = synthesize(model, url, cfg.synthesis, cfg.sampling, progress=self.progress, use_ray=True)
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
                    sampling_seconds=sampling_seconds,
                    sampling_pairs_per_second=summary.pairs_written / sampling_seconds,
                )
            ShardSet(url).write_side(
                THROUGHPUT, (json.dumps(throughput) + "\n").encode()
            )  # beside the shards, at any fsspec URL

        self.once("generated", name, f"the generated set {name}", done, build)
        return url

    def student(self, run: StudentRun) -> dict:
        """run's student, trained (resuming) and scored on the test split: students/NAME/metrics.json."""
        return self._student(run, None)

    def selection(self, run: StudentRun) -> dict:
        """A student of the validation grid (lambda, ratio), trained and scored on the validation split only."""
        return self._student(run, VALIDATION)

    def _student(self, run: StudentRun, tag: str | None) -> dict:
        if not self.folder.metrics(run.name, tag).is_file():
            with self.claim("student", run.name, f"the student {run.name}"):
                return self._build_student(run, tag)
        return self.score(run, tag)

    def _build_student(self, run: StudentRun, tag: str | None) -> dict:
        d = self.folder.student(run.name)
        if self.folder.metrics(run.name, tag).is_file():  # another runner built it while this one waited
            return self.score(run, tag)
        assert run.weight is not None or run.generated is None or run.method == "hard", (
            f"{run.name}: its weight lambda is not chosen yet"
        )
        t = time.time()
        twin = self.grid_twin(run)
        if twin is not None and not self.folder.student_trained(run.name):
            log.info("experiment: %s is the validation grid's %s (the same training): copying it", run.name, twin.name)
            shutil.copytree(twin, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("metrics*.json", "checkpoints"))
        elif not self.folder.student_trained(run.name):
            self.train(run, d)
        metrics = self.score(run, tag)
        self.timings[f"student_{run.name}"] = time.time() - t
        return metrics

    def train(self, run: StudentRun, d: Path) -> None:
        """Train run's student into folder d (resuming a checkpoint there). With a time budget, the first
        student of an architecture measures its steps under the budget's claim: a second runner's student
        of it waits for the measure instead of measuring again beside it."""
        if self.cfg.student.max_minutes > 0 and not self.folder.budget(run.arch).is_file():
            with self.claim("budget", run.arch, f"the {run.arch} students' step budget"):
                self._train(run, d)
        else:
            self._train(run, d)

    def _train(self, run: StudentRun, d: Path) -> None:
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
        steps = int(overrides.get("student.max_steps", self.cfg.student.max_steps))
        overrides["student.checkpoint_every"] = checkpoint_every(self.cfg.student.checkpoint_every, steps)
        if "student.instance_bank" in overrides:  # the study's bank, by its name in the plan
            overrides["student.instance_bank"] = self.generated_url(overrides["student.instance_bank"])
        url = self.generated_url(run.generated) if run.ratio > 0 else None
        if run.method == "pretrain_finetune":
            pretrain_finetune(self.cfg.replace(**overrides), d, url, self.e.pretrain_share, progress=self.progress)
            drop_checkpoints(pretrain_folder(d))
        else:
            train_student(self.cfg.replace(**overrides), d, synthetic=url, resume="latest", progress=self.progress)
        drop_checkpoints(d)  # finished: the study keeps weights and scores, not what a resume would need
        if self.cfg.student.max_minutes > 0 and not budget.is_file():
            # With a time budget the first student of an architecture measures how many steps fit; every
            # later method and seed of it trains that many, so that methods differ in their data only.
            steps = self.folder.student_info(run.name)["steps"]
            record = {"steps": steps, "measured_by": run.name, "max_minutes": self.cfg.student.max_minutes}
            self.folder.write_text(budget, json.dumps(record) + "\n")
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

        def build() -> None:
            log.info("experiment: %s was restored without weights: training it again for them", run.name)
            self.train(run, d)

        self.once(
            "student", run.name, f"the student {run.name}", lambda: bool(self.folder.student_weights(run.name)), build
        )
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

    def score(self, run: StudentRun | str, tag: str | None, spec: str | None = None, any_rule: bool = False) -> dict:
        """A trained student's metrics on the test split of `spec`: metrics.json for data.spec (tag
        None), metrics_validation.json for experiment.validation_spec, metrics_TAG.json for another
        split; evaluated once and kept. A kept copy-paste student of another paste rule is refused
        unless `any_rule` (a read-only table of kept scores: --partial)."""
        name = run if isinstance(run, str) else run.name
        spec = spec or (self.e.validation_spec if tag == VALIDATION else self.test_spec)
        path = self.folder.metrics(name, tag)
        if path.is_file():
            metrics = json.loads(path.read_text())
            if metrics["data"] != redact_url(spec):  # evaluate_student records the spec redacted
                raise ConfigError(
                    f"{path} holds scores on {metrics['data']}, not {redact_url(spec)}: give this split another tag"
                )
            planned = None if isinstance(run, str) else json.loads(json.dumps(to_dict(run)))
            if planned is not None and "run" in metrics and metrics["run"] != planned:
                # the name does not hold every setting (a length or paste share chosen on validation)
                kept = metrics["run"]
                changed = ", ".join(
                    f"{k} {kept.get(k)!r} now {planned.get(k)!r}"
                    for k in sorted(planned.keys() | kept.keys())
                    if planned.get(k) != kept.get(k)
                )
                raise ConfigError(
                    f"{path}: kept for another run of {name} ({changed}): the config changed since; "
                    "use another --records folder and study folder"
                )
            # the paste rule is not in the run (its name and settings are the same under either rule)
            paste = (self.folder.student_info(name) or {}).get("copy_paste") if planned and not any_rule else None
            if paste and paste.get("rule", 1) != PASTE_RULE:
                raise ConfigError(
                    f"{self.folder.student(name) / STUDENT_FILE}: {name} was trained by copy-paste rule "
                    f"{paste.get('rule', 1)}, this code pastes by rule {PASTE_RULE}; use another --records "
                    "folder, or remove the kept copy-paste students"
                )
            return metrics
        metrics = evaluate_student(str(path.parent), spec, "test", self.cfg.eval)
        metrics["run"] = (
            json.loads(self.folder.metrics(name, None).read_text())["run"] if isinstance(run, str) else to_dict(run)
        )
        self.folder.write_text(path, json.dumps(metrics, indent=2) + "\n")  # whole: its presence marks the unit done
        if tag is None and self.folder.student_trained(name):
            write_student_card(self.folder.student(name), metrics)  # the card carries the study's test score
        return metrics

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
