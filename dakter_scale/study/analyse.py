"""From the finished students of a study to numbers: means and stds over seeds, same-seed
differences, the verdict, the lambda chosen on the validation grid. No files, no formatting.

`runs` maps a student's name (plan.StudentRun.name) to its metrics (core.metrics: miou, mean_f1,
iou per class, ...); a cell is the mean +- std (ddof = 1) over the seeds that finished.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dakter_scale.study.plan import Plan, StudentRun


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

    def by_seed(self, method: str, arch: str, ratio: float, key: str, seeds: Sequence[int] | None = None) -> dict[int, float]:
        """runs[...][key] of the finished runs of one (method, arch, ratio), by seed (default: the
        main table's seeds)."""
        names = {s: self.plan.run(method, arch, ratio, s).name for s in (self.e.seeds if seeds is None else seeds)}
        return {s: self.runs[n][key] for s, n in names.items() if n in self.runs}

    def cell(self, method: str, arch: str, ratio: float, key: str, seeds: Sequence[int] | None = None) -> tuple[float, float | None]:
        return mean_std(list(self.by_seed(method, arch, ratio, key, seeds).values()))

    def differences(self, a: str, b: str, arch: str, ratio: float, seeds: Sequence[int] | None = None) -> list[float]:
        """Same-seed differences a - b in mIoU over the seeds where both finished."""
        first, second = self.by_seed(a, arch, ratio, "miou", seeds), self.by_seed(b, arch, ratio, "miou", seeds)
        return [first[s] - second[s] for s in first if s in second]

    def per_class(self, method: str, arch: str, ratio: float, num_classes: int) -> list[tuple[float, float | None]]:
        """Per-class IoU, mean +- std over the main table's seeds."""
        ious = list(self.by_seed(method, arch, ratio, "iou").values())
        return [mean_std([iou[c] for iou in ious]) for c in range(num_classes)]

    # Each ordering of the verdict: the methods it compares, in order (a > b > ... in mean mIoU), and
    # whether it is strict (not for the b ablation: b = 1 is the paper's special case, a tie keeps b).
    ORDERINGS = {
        "dakter>hard>none": (("dakter", "hard", "none"), True),
        "dakter>hard": (("dakter", "hard"), True),
        "dakter>none": (("dakter", "none"), True),
        "b_auto>=b_1": (("dakter", "dakter_b1"), False),
        "dakter>hard_matched": (("dakter", "hard_matched"), True),
    }

    def verdict(self) -> dict[str, list[str]]:
        """The students for which each ordering of mean mIoU at the main ratio holds, for the orderings
        whose methods all ran (an ordering whose methods did not run is absent, not empty)."""
        wins: dict[str, list[str]] = {key: [] for key, (methods, _) in self.ORDERINGS.items() if set(methods) <= set(self.e.methods)}
        for arch in self.e.archs:
            m = {meth: self.cell(meth, arch, self.plan.ratio(arch), "miou")[0] for meth in self.e.methods}
            for key in wins:
                methods, strict = self.ORDERINGS[key]
                values = [m[meth] for meth in methods]
                if all(a > b if strict else a >= b for a, b in zip(values, values[1:])):
                    wins[key].append(arch)
        return wins


def choose_settings(runs: Sequence[StudentRun], scores: dict[str, dict], ratio_grid: bool = False) -> dict[str, dict]:
    """The validation grid's outcome per student: {arch: {ratio, miou: {setting: {seed: validation
    mIoU}}, chosen, chosen_ratio}}. A setting is "LAMBDA" (a lambda grid alone, at the main ratio) or
    "LAMBDA@RATIO" (with experiment.ratio_grid); the best mean wins (ties: the first in grid order):
    chosen is its lambda, chosen_ratio its ratio. scores: {run name: validation metrics} of every run."""
    out: dict[str, dict] = {}
    for run in runs:
        row = out.setdefault(run.arch, {"ratio": run.ratio, "miou": {}})
        setting = f"{run.weight:g}@{run.ratio:g}" if ratio_grid else f"{run.weight:g}"
        row["miou"].setdefault(setting, {})[str(run.seed)] = scores[run.name]["miou"]
    for row in out.values():
        means = {w: mean_std(list(by_seed.values()))[0] for w, by_seed in row["miou"].items()}
        weight, _, ratio = max(means, key=means.__getitem__).partition("@")  # max keeps the first of equals
        row["chosen"] = float(weight)
        row["chosen_ratio"] = float(ratio) if ratio else row["ratio"]
    return out
