"""The study runner (jobs/experiment.py, jobs/demo.py): plan -> build the units -> results -> report.

The plan (study/plan.py) lists the units a config asks for: models, generated sets, an instance bank,
students. `Experiment.run` builds them in order (study/units.py), each skipped when its result exists,
so a stopped run resumes where it stopped; with a validation grid (lambda, ratio, student length),
the choice is made on the validation split first and the tables' students follow from it. The
results (study/results.py) then fill results.json, and the report (study/report.py) writes
results.md -- or report.md for the demo, which is this runner on configs/demo.yaml. `rescore` scores
the finished students on another split; `write_report` rebuilds a report from its results.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import typing
from pathlib import Path

import yaml

from dakter_scale.config import Config, ConfigError, from_dict, migrate_keys, save_config
from dakter_scale.data.real import open_source, split_digests, split_fingerprint
from dakter_scale.data.storage import redact_url
from dakter_scale.study import report as study_report
from dakter_scale.study import results
from dakter_scale.study.claims import held
from dakter_scale.study.folder import StudyFolder
from dakter_scale.study.plan import (
    VALIDATION,
    GeneratedSet,
    InstanceBank,
    Model,
    Plan,
    Selection,
    StudentRun,
    chosen_settings,
    describe,
    student_of,
)
from dakter_scale.study.records import Rebuilt, Records, model_digest, set_digest
from dakter_scale.study.units import CLAIM_POLL_S, Busy, Units, claim_key

log = logging.getLogger("dakter_scale")
PRESETS = ("experiment", "demo")  # experiment: results.md; demo: report.md (jobs/demo.py)


class Experiment:
    """A study folder: its plan, the units that fill it (`units`), its results and report."""

    def __init__(
        self,
        cfg: Config,
        out: str | Path,
        progress: bool = True,
        preset: str = "experiment",
        records: str | Path | None = None,
        only: list[str] | None = None,
        retrain_rebuilt: bool = False,
    ):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        self.cfg, self.out, self.preset = cfg, Path(out), preset
        self.folder = StudyFolder(out)  # the layout of OUT
        self.records = Records(records, out) if records else None  # --records: scores kept beyond this folder
        self.only = only  # --only: the glob patterns of the students this runner trains (Plan.only)
        # --retrain-rebuilt: a model or set rebuilt to other bytes than the kept one (another machine) drops
        # the kept students that read it, to be trained again, rather than being refused
        self.retrain_rebuilt = retrain_rebuilt
        self.identity_seen: dict = {}  # the records' identities when this runner last planned from them
        self.e = cfg.experiment
        self.test_spec = self.e.test_spec or cfg.data.spec  # every table student is scored here, once
        self.source = open_source(cfg.data.spec)
        n_train = len(self.source.split_items("train"))
        self.units = Units(cfg, self.folder, Plan(cfg, n_train), n_train, self.test_spec, progress)
        self.choose()

    @property
    def plan(self) -> Plan:
        return self.units.plan

    def execute(self, units: list) -> None:
        """Build every unit (with --only, those the matching students need); a finished one returns at
        once. Units are taken in the plan's order, each once what it reads is built (`Plan.needs`) and
        while no other runner of this folder holds its claim: runners that share a folder split the work,
        and one waits (polling) only when every unit left is held by another or reads one that is, and
        returns early when the validation grid is scored then, so that the choice plans more work."""
        if self.only:
            units = self.plan.only(units, self.only)
        finished = [u for u in units if self.units.done(u)]
        pending = [u for u in units if u not in finished]
        log.info(
            "experiment: %d units planned, %d finished earlier, %d to run", len(units), len(finished), len(pending)
        )
        for unit in finished:
            self.build(unit)  # returns at once; keeps it (--records) and checks a kept identity
        count, waiting = len(pending), None
        while pending:
            unit = self.next_unit(pending, count)
            if unit is None and self.plan.pending() and self.grid_scored() == len(self.plan.selection_runs()):
                return  # the grid is scored: plan the students its choice sets (build_all) rather than wait
            if unit is None:  # a unit another runner finishes is built (found done, kept) in the next pass
                held = [describe(u) for u in pending if not self.units.done(u)]
                if held != waiting:
                    waiting = held
                    log.info("experiment: waiting for other runners of %s: %s", self.out, "; ".join(held[:3]))
                time.sleep(CLAIM_POLL_S)
                continue
            pending.remove(unit)

    def next_unit(self, pending: list, count: int):
        """Build the first pending unit whose reads are built and that no other runner holds, and return
        it; None when there is none. count: the units this runner had to run, for the log."""
        for unit in pending:
            if self.plan.needs(unit, pending):
                continue
            if self.units.done(unit):  # another runner built it: keep it here too, without its claim
                self.build(unit)
                return unit
            try:
                with self.units.claim(*claim_key(unit), describe(unit), wait=False):
                    log.info("experiment [%d/%d]: %s", count - len(pending) + 1, count, describe(unit))
                    self.build(unit)
            except Busy:
                continue
            return unit
        return None

    def build(self, unit: Model | GeneratedSet | Selection | InstanceBank | StudentRun) -> None:
        self.units.build(unit)
        self.keep(unit)
        self.folder.write_timings(self.units.timings)

    def keep(self, unit: Model | GeneratedSet | Selection | StudentRun) -> None:
        """With --records: check a model's or set's identity against the kept one, keep a student's scores."""
        if self.records is None:
            return
        if isinstance(unit, Model):
            self.check_identity(unit, "models", unit.tag, model_digest(self.folder.model(unit.tag)))
        elif isinstance(unit, GeneratedSet):
            self.check_identity(unit, "generated", unit.name, set_digest(self.units.generated_url(unit.name)))
        elif isinstance(unit, InstanceBank):
            return  # its identity is its source's and its judge's, both checked
        else:
            self.records.keep_student(student_of(unit).name)

    def check_identity(self, unit: Model | GeneratedSet, kind: str, name: str, digest: str) -> None:
        """The kept identity of a model or set against its bytes here (Records.check): refused where they
        differ, or with --retrain-rebuilt kept in place of the old ones, the students that read those
        dropped; Rebuilt then, and where another runner did so since this one planned."""
        seen = self.identity_seen.get(kind, {}).get(name)
        drawn = self.plan.drawn_from(unit) if self.retrain_rebuilt else None
        self.records.check(kind, name, digest, seen, drawn)

    def restore(self) -> list[str]:
        """With --records: the kept students' scores copied into OUT, and the plan chosen from them where the
        validation grid is complete; returns the names restored."""
        if self.records is None:
            return []
        self.identity_seen = self.records.identity()  # before the copy: a drop made during it is seen later
        restored = self.records.restore()
        self.choose()
        return restored

    def choose(self) -> None:
        """Plan the tables' students with the lambdas the grid chose, once every grid student is scored."""
        choice = results.kd_weight_choice(self.units) if self.plan.pending() else {}
        if choice:
            self.units.plan = Plan(self.cfg, self.units.n_train, chosen_settings(choice))

    def splits(self) -> dict[str, dict]:
        """The splits this study trains on and scores on, each with its spec, scene count and fingerprint
        (data.real.split_fingerprint); refuses (ConfigError, one line) a validation split that shares a
        scene with the test split, since whatever is chosen on it would then be chosen on test scenes,
        and a training split that shares a scene with either."""
        digests = {
            "training": split_digests(self.source, "train"),
            "test": split_digests(open_source(self.test_spec), "test"),
        }
        if self.e.validation_spec:
            digests["validation"] = split_digests(open_source(self.e.validation_spec), "test")
        specs = {"training": self.cfg.data.spec, "test": self.test_spec, "validation": self.e.validation_spec}
        keys = {"training": "data.spec", "test": "experiment.test_spec", "validation": "experiment.validation_spec"}
        for a, b in (("validation", "test"), ("training", "test"), ("training", "validation")):
            shared = set(digests.get(a, ())) & set(digests.get(b, ()))
            if shared:
                raise ConfigError(
                    f"{keys[a]} {redact_url(specs[a])}: its {a} split shares {len(shared)} scene(s) with the {b} split of "
                    f"{redact_url(specs[b])}: choices and scores must be made on scenes no student trained on, and choices on "
                    "scenes apart from the test split (give another seed, or set experiment.test_spec / validation_spec)"
                )
        return {
            name: {"spec": redact_url(specs[name]), "scenes": len(d), "fingerprint": split_fingerprint(d)}
            for name, d in digests.items()
        }

    def run(self, wait: float | None = None) -> Path:
        """Plan, run every unit (finished ones are kept), analyse, report. Returns the report's path.

        wait: with --only and --records, where the validation grid is another runner's work, look in
        the records every `wait` seconds until it is complete, then train the students its choice sets
        (None: write the partial tables and return)."""
        if wait is not None and not (self.only and self.records):
            raise ConfigError("--wait needs --only and --records: it waits for another runner's validation grid")
        splits = self.splits()  # splits that share a scene stop here, before any work
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.out)
        while True:
            try:
                self.build_all(wait)
                break
            except Rebuilt as e:  # the grid's choice may have gone with the students: plan from the records again
                log.warning("experiment: %s; planning again", e)
                self.units.plan = Plan(self.cfg, self.units.n_train)
        if self.only:  # the rest of the plan is other runners' work: the tables so far, not results.json
            return self.partial()
        payload = results.collect(self.units, list(self.source.classes), self.out, self.preset)
        payload["splits"] = splits
        payload["split_of"] = {
            "runs": "test",
            "kd_weight_choice": "validation",
            "quality": "generated pairs, scored by the real-only student",
        }
        with held(self.folder.claim("results")):  # the other runner's results.json and report are whole, not mixed
            self.folder.write_text(self.folder.results(), json.dumps(payload, indent=2) + "\n")
            path = write_report(self.out, payload)
            if self.records is not None:
                log.info("experiment: kept %s in %s", ", ".join(self.records.keep_results()), self.records.folder)
        return path

    def build_all(self, wait: float | None) -> None:
        """Restore the records, build the plan's units, choose on the validation grid and build the
        students its choice sets (run)."""
        restored = self.restore()
        if restored:
            log.info("experiment: restored %d finished students' scores from %s", len(restored), self.records.folder)
        self.execute(self.plan.units())
        if self.plan.pending():  # the grid's students are done now: the rest of the plan follows from them
            self.choose()
            if self.plan.pending() and wait is not None:
                self.wait_for_grid(wait)
            if self.plan.pending():  # --only without the grid's students: another runner trains them
                log.warning(
                    "experiment: the validation grid is unfinished (%d of %d students scored) and its choice sets "
                    "the students of --only: run the runner that trains the grid, or give --wait",
                    self.grid_scored(),
                    len(self.plan.selection_runs()),
                )
            else:
                log.info(
                    "experiment: chosen on the validation split: %s",
                    ", ".join(
                        f"{a} lambda {w:g} ratio {r:g}" + (f" steps {n}" if n else "")
                        for a, (w, r, n) in self.plan.chosen.items()
                    ),
                )
                self.execute(self.plan.units())

    def grid_scored(self) -> int:
        """How many students of the validation grid are scored in OUT."""
        return sum(self.folder.metrics(r.name, VALIDATION).is_file() for r in self.plan.selection_runs())

    def wait_for_grid(self, poll: float) -> None:
        """Restore the records every `poll` seconds until the grid's choice can be made from them."""
        seen = -1
        while self.plan.pending():
            if self.grid_scored() != seen:
                seen = self.grid_scored()
                log.info(
                    "experiment: waiting for the validation grid in %s (%d of %d students scored)",
                    self.records.folder,
                    seen,
                    len(self.plan.selection_runs()),
                )
            time.sleep(poll)
            self.restore()

    def partial(self) -> Path:
        """OUT/partial.md: the study's tables over the students finished so far, training nothing (with
        --records, the kept scores are restored first, so a fresh machine can write it from them)."""
        self.restore()
        grid = self.plan.selection_runs()
        table = self.plan.main_runs() + self.plan.sweep_runs()
        scored = [r for r in table if self.folder.metrics(r.name, None).is_file()]
        # through units.score, which refuses a kept score made on another split; the kept scores of an
        # older paste rule are read as they are (this trains nothing beside them)
        payload = {
            "grid": {
                r.name: self.units.score(r, VALIDATION, any_rule=True)["miou"]
                for r in grid
                if self.folder.metrics(r.name, VALIDATION).is_file()
            },
            "grid_planned": len(grid),
            "runs": {r.name: self.units.score(r, None, any_rule=True) for r in scored},
            "planned": len({r.name for r in table}) if not self.plan.pending() else 0,  # hard_matched may be hard
            "chosen": None
            if self.plan.pending()
            else {
                a: f"lambda {w:g}, ratio {r:g}" + (f", {n} steps" if n else "")
                for a, (w, r, n) in self.plan.chosen.items()
            },
        }
        path = self.out / "partial.md"
        self.folder.write_text(path, study_report.partial_markdown(payload, self.plan, list(self.source.classes)))
        return path

    def rescore(self, spec: str, tag: str, pattern: str = "*") -> Path:
        """Score every finished student whose folder matches `pattern` on the test split of `spec`
        (students/NAME/metrics_TAG.json), and write the tables over them: OUT/rescore_TAG.md and .json.

        For a validation split (other scenes, to choose settings on) or another test split; one that holds
        any of this study's test scenes is refused (synthetic scenes are seeded per index: test=1000 of
        the same seed holds test=200's scenes), since each student is scored on those once."""
        if tag == VALIDATION and spec != self.e.validation_spec:
            raise ConfigError(
                f"--tag {VALIDATION} is the validation grid's split ({self.e.validation_spec or 'none set'}): give this split another tag"
            )
        shared = set(split_digests(open_source(spec), "test")) & set(split_digests(open_source(self.test_spec), "test"))
        if shared:  # by scene, not by spec: test=600, or the same parameters reordered, hold the test scenes too
            raise ConfigError(
                f"{redact_url(spec)}: its test split holds {len(shared)} scene(s) of this study's test split, which each "
                "student is scored on once (metrics.json): rescore on scenes apart from it"
            )
        runs = {}
        for d in sorted(self.folder.students().glob(pattern)):
            if self.folder.metrics(d.name, None).is_file():
                log.info("experiment: scoring %s on %s", d.name, spec)
                runs[d.name] = self.units.score(d.name, tag, spec)
        payload = {"spec": spec, "tag": tag, "runs": runs}
        (self.out / f"rescore_{tag}.json").write_text(json.dumps(payload, indent=2) + "\n")
        path = self.out / f"rescore_{tag}.md"
        path.write_text(study_report.rescore_markdown(payload, self.plan, list(self.source.classes)))
        return path


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


def payload_plan(payload: dict, source: str) -> Plan:
    """The plan of the study a results.json payload came from, with its validation grid's choice."""
    cfg = saved_config(payload["config"], source)
    return Plan(cfg, payload["n_train"], chosen_settings(payload.get("kd_weight_choice", {})))


def write_report(out: str | Path, payload: dict | None = None) -> Path:
    """OUT/results.md and its figures (or the demo's OUT/report.md) from results.json's payload."""
    out = Path(out)
    payload = payload if payload is not None else json.loads((out / "results.json").read_text())
    plan = payload_plan(payload, str(out / "results.json"))
    classes = payload.get("classes") or list(open_source(plan.cfg.data.spec).classes)
    if payload.get("preset") == "demo":
        path, text = out / "report.md", study_report.demo_markdown(payload, plan, classes)
    else:
        study_report.write_figures(payload, plan, classes, out)
        path, text = out / "results.md", study_report.experiment_markdown(payload, plan, classes)
    StudyFolder.write_text(path, text)
    return path
