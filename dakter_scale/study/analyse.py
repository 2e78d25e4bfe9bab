"""From the finished students of a study to numbers: means and stds over seeds, same-seed
differences, the verdict, the lambda chosen on the validation grid. No files, no formatting.

`runs` maps a student's name (plan.StudentRun.name) to its metrics (core.metrics: miou, mean_f1,
iou per class, ...); a cell is the mean +- std (ddof = 1) over the seeds that finished.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dakter_scale.study.plan import Plan, StudentRun, bank_size


def mean_std(values: Sequence[float | None]) -> tuple[float, float | None]:
    """Mean and std (ddof = 1) of the values that are numbers; std None for fewer than two."""
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return float("nan"), None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


class Results:
    """The finished runs of one study, looked up through its plan's names."""

    def __init__(self, runs: dict[str, dict], plan: Plan):
        self.runs, self.plan, self.e = runs, plan, plan.e

    def by_seed(
        self, method: str, arch: str, ratio: float, key: str, seeds: Sequence[int] | None = None
    ) -> dict[int, float]:
        """runs[...][key] of the finished runs of one (method, arch, ratio), by seed (default: the
        main table's seeds of arch)."""
        seeds = self.e.seeds_of(arch) if seeds is None else seeds
        names = {s: self.plan.run(method, arch, ratio, s).name for s in seeds}
        # a score missing or not finite is not a finished seed: cells, n and differences leave it out alike
        return {s: v for s, n in names.items() if n in self.runs and _scored(v := self.runs[n].get(key))}

    def cell(
        self, method: str, arch: str, ratio: float, key: str, seeds: Sequence[int] | None = None
    ) -> tuple[float, float | None]:
        return mean_std(list(self.by_seed(method, arch, ratio, key, seeds).values()))

    def differences(self, a: str, b: str, arch: str, ratio: float, seeds: Sequence[int] | None = None) -> list[float]:
        """Same-seed differences a - b in mIoU over the seeds where both finished."""
        first, second = self.by_seed(a, arch, ratio, "miou", seeds), self.by_seed(b, arch, ratio, "miou", seeds)
        return [first[s] - second[s] for s in first if s in second]

    def _names(self, method: str) -> tuple[str, ...]:
        """The students of a method across the table (every arch and seed, at arch's ratio)."""
        return tuple(
            self.plan.run(method, arch, self.plan.ratio(arch), s).name
            for arch in self.e.archs
            for s in self.e.seeds_of(arch)
        )

    def same_as(self, method: str) -> str | None:
        """The earlier method of the table whose students are method's own (hard_matched at lambda 1 is
        hard), or None: such a method is one arm, not a second control."""
        for m in self.plan.methods():
            if m == method:
                return None
            if self._names(m) == self._names(method):
                return m
        return None

    def methods(self) -> list[str]:
        """The table's methods, each set of students once (plan.methods without the aliases of same_as)."""
        return [m for m in self.plan.methods() if self.same_as(m) is None]

    def per_class(self, method: str, arch: str, ratio: float, num_classes: int) -> list[tuple[float, float | None]]:
        """Per-class IoU, mean +- std over the main table's seeds."""
        ious = list(self.by_seed(method, arch, ratio, "iou").values())
        return [mean_std([iou[c] for iou in ious]) for c in range(num_classes)]

    def verdicts(self, without_seeds: Sequence[int] = ()) -> list[dict]:
        """Every comparison of COMPARISONS whose two methods ran, per student: the paired
        differences over seeds (paired) and the claim they ask (what). A comparison whose arms are the
        students of one already listed (same_as) is left out; without_seeds: over the other seeds."""
        out, listed = [], set()
        arms = [(m, "copy_paste", "generated instances against real ones") for m in self.plan.methods() if bank_size(m)]
        exploratory = set(self.e.exploratory)
        for a, b, what in COMPARISONS + tuple(arms):
            if not {a, b} <= set(self.plan.methods()):
                continue
            pair = (self.same_as(a) or a, self.same_as(b) or b)
            if pair in listed:
                continue
            listed.add(pair)
            for arch in self.e.archs:
                seeds = [s for s in self.e.seeds_of(arch) if s not in without_seeds]
                d = self.differences(a, b, arch, self.plan.ratio(arch), seeds)
                row = {"a": a, "b": b, "claim": what, "arch": arch, **paired(d)}
                out.append(dict(row, exploratory=True) if f"{a}-{b}" in exploratory else row)
        return out


# The comparisons a study's verdict is made of: (a, b, what a - b answers). Each is worded from the
# 95 % interval of the same-seed differences a - b in mIoU (paired), never from the means alone.
COMPARISONS = (
    ("dakter", "none", "generated pairs against none"),
    ("hard", "none", "generated pairs (hard labels) against none"),
    ("copy_paste", "none", "copy-paste against none"),
    ("dakter", "hard", "soft against hard labels"),
    ("dakter", "hard_matched", "soft against hard labels at the same weight"),
    ("dakter", "dakter_b1", "b against b = 1"),
    ("dakter_target", "copy_paste", "diffusion against copy-paste"),
    ("dakter_target", "pasted_after", "drawn around the instances against pasted after sampling"),
    ("dakter_target", "dakter", "class target against untargeted"),
    # the generator's most favourable arm against copy-paste: the same real instances pasted onto generated
    # scenes beside the real ones, against pasted onto the real scenes alone
    ("pasted_after", "copy_paste", "generated scenes under the pasted instances against real scenes alone"),
    ("pasted_after", "copy_paste_matched", "generated scenes under the pasted instances, pasted as often"),
    ("dakter_copy_paste", "copy_paste", "generated pairs on top of copy-paste"),
    ("pretrain_finetune", "copy_paste", "pretraining on generated pairs before copy-paste"),
    ("dakter_copy_paste", "dakter", "copy-paste on top of generated pairs"),
    ("dakter_distilled", "dakter", "the distilled sampler against sampling.*"),
)


def _scored(v) -> bool:
    """A kept score: present, and finite where it is a number (a per-class list is kept as it is)."""
    return v is not None and not (isinstance(v, float) and not math.isfinite(v))


# Two-sided 95 % quantiles of Student's t by degrees of freedom (1-30); beyond, the value at 30 (wider
# than the true quantile, so a verdict errs toward a tie).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t95(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with df >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T95[min(df, len(_T95)) - 1]


def points(x: float) -> str:
    """A fraction as signed points with 2 decimals, or 3 where 2 would show a bound that is not 0 as
    ±0.00 (an interval read as [+0.00, ...] and "ahead" has a lower end above 0: +0.005)."""
    p = 100 * x
    return f"{p:+.3f}" if p != 0 and abs(p) < 0.005 else f"{p:+.2f}"


def interval(v: dict, sep: str = ", ") -> str:
    """paired()'s 95 % interval in points, its bounds joined by sep; '' for fewer than two seeds."""
    return "" if v["low"] is None else f"{points(v['low'])}{sep}{points(v['high'])}"


def diff_cell(d: list[float]) -> str:
    """Same-seed differences in mIoU: 'mean [95 % interval] (seeds where the first is ahead / seeds)
    verdict', in points; '–' for none."""
    v = paired(d)
    if not v["n"]:
        return "–"
    bounds = interval(v)
    return f"{100 * v['mean']:+.2f}{f' [{bounds}]' if bounds else ''} ({v['ahead']}/{v['n']}) {v['verdict']}"


def word(low: float | None, high: float | None) -> str:
    """The verdict an interval allows: "ahead" when it lies above 0, "behind" below 0, "tie" when it
    holds 0, "one seed" when there is none (fewer than two differences)."""
    if low is None or high is None:
        return "one seed"
    return "ahead" if low > 0 else "behind" if high < 0 else "tie"


def paired(differences: Sequence[float]) -> dict:
    """Same-seed differences -> {n, mean, std, low, high (the 95 % t-interval of the mean), ahead (how
    many are > 0), verdict (word)}; low and high None for fewer than two. A difference that is not a
    number (a score missing or NaN) is not a seed: n counts the others, and the interval is theirs."""
    d = [float(x) for x in differences if x is not None and math.isfinite(float(x))]
    n = len(d)
    mean, std = mean_std(d)
    low = high = None
    if n >= 2:
        half = t95(n - 1) * (std or 0.0) / math.sqrt(n)
        low, high = mean - half, mean + half
    return {
        "n": n,
        "mean": mean if n else None,
        "std": std,
        "low": low,
        "high": high,
        "ahead": sum(x > 0 for x in d),
        "verdict": word(low, high) if n else "not run",
    }


def choose_settings(
    runs: Sequence[StudentRun], scores: dict[str, dict], ratio_grid: bool = False, steps_grid: bool = False
) -> dict[str, dict]:
    """The validation grid's outcome per student: {arch: {ratio, miou: {setting: {seed: validation
    mIoU}}, chosen, chosen_ratio, chosen_steps}}. A setting is "LAMBDA" (a lambda grid alone, at the
    main ratio), "LAMBDA@RATIO" (with experiment.ratio_grid), and "#STEPS" after it with
    experiment.steps_grid; the best mean wins (ties: the first in grid order): chosen is its lambda,
    chosen_ratio its ratio, chosen_steps its length (None without a length grid). scores: {run name:
    validation metrics} of every run."""
    out: dict[str, dict] = {}
    for run in runs:
        row = out.setdefault(run.arch, {"ratio": run.ratio, "miou": {}})
        setting = f"{run.weight:g}@{run.ratio:g}" if ratio_grid else f"{run.weight:g}"
        if steps_grid:
            setting += f"#{dict(run.overrides)['student.max_steps']}"
        row["miou"].setdefault(setting, {})[str(run.seed)] = scores[run.name]["miou"]
    for arch, row in out.items():
        # a setting whose scores are all missing or NaN cannot win (NaN compares greater than nothing)
        means = {
            w: m for w, m in ((w, mean_std(list(v.values()))[0]) for w, v in row["miou"].items()) if math.isfinite(m)
        }
        if not means:
            raise ValueError(f"{arch}: no validation score of the grid is a number, so no setting can be chosen")
        best, _, steps = max(means, key=means.__getitem__).partition("#")  # max keeps the first of equals
        weight, _, ratio = best.partition("@")
        row["chosen"] = float(weight)
        row["chosen_ratio"] = float(ratio) if ratio else row["ratio"]
        if steps:
            row["chosen_steps"] = int(steps)
    return out
