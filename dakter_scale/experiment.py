"""The study's entry points for the jobs (jobs/experiment.py, jobs/demo.py): the runner itself is
study/runner.py (Experiment), its units study/units.py, its results study/results.py."""

from __future__ import annotations

from pathlib import Path

from dakter_scale.config import Config, ConfigError
from dakter_scale.student.models import check_students
from dakter_scale.study.plan import chosen_settings, describe
from dakter_scale.study.runner import Experiment, read_config, saved_config, write_report
from dakter_scale.synth.target import TargetError, check_spec_grammar
from dakter_scale.training import check_one_precision

__all__ = [
    "Experiment",
    "chosen_settings",
    "describe",
    "describe_plan",
    "read_config",
    "run_demo",
    "run_experiment",
    "saved_config",
    "write_report",
]


def run_experiment(
    cfg: Config,
    out: str | Path,
    progress: bool = True,
    records: str | Path | None = None,
    only: list[str] | None = None,
    wait: float | None = None,
    retrain_rebuilt: bool = False,
) -> Path:
    """jobs/experiment.py: the study of cfg.experiment in OUT; returns OUT/results.md. records: a
    folder that keeps the finished students' scores beyond OUT (study/records.py); only: glob patterns
    of the students to train, with what they need (Plan.only; returns OUT/partial.md then); wait: with
    only, seconds between looks at the records while another runner's validation grid is unfinished;
    retrain_rebuilt: a model or set rebuilt to other bytes than the records' drops the kept students
    that read it, to be trained again, instead of being refused."""
    e = cfg.experiment
    check_before_work(cfg, [*e.archs, *e.sweep_archs, e.study_arch, e.filter_arch])
    return Experiment(cfg, out, progress, records=records, only=only, retrain_rebuilt=retrain_rebuilt).run(wait)


def run_demo(cfg: Config, out: str | Path, progress: bool = True) -> Path:
    """jobs/demo.py: the same runner on the demo's one-student plan (configs/demo.yaml); returns OUT/report.md."""
    check_before_work(cfg, list(cfg.experiment.archs))
    return Experiment(cfg, out, progress, preset="demo").run()


def check_before_work(cfg: Config, archs: list[str]) -> None:
    """What a study would otherwise refuse only after its generator trained: the students' architectures,
    one mixed precision for its one process, and the class target's grammar."""
    check_students(cfg.student, archs)
    check_one_precision(cfg)
    try:
        check_spec_grammar(cfg.synthesis.target.spec)
    except TargetError as e:
        raise ConfigError(str(e)) from None


def describe_plan(
    cfg: Config, out: str | Path, only: list[str] | None = None, records: str | Path | None = None
) -> list[str]:
    """The plan as lines, each unit marked done or to run (jobs/experiment.py --plan; with `only`, the
    units those students need, Plan.only; with `records`, the kept students restored into OUT first)."""
    exp = Experiment(cfg, out, progress=False, records=records)
    exp.restore()
    units = exp.plan.only(exp.plan.units(), only) if only else exp.plan.units()
    lines = [f"{'done' if exp.units.done(u) else 'todo'}  {describe(u)}" for u in units]
    if exp.plan.pending():
        lines.append(
            "then the students of the tables and studies, with lambda and ratio chosen on the validation split"
        )
    return lines
