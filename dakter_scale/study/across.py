"""One table across studies that differ only in how many real training scenes they had (|D|): the
scarcity study's rows (configs/scarcity.yaml, one study per |D|). Each study's numbers and verdicts
are its own results.json's (study/analyse.py); this module lays them side by side.

    python jobs/across.py docs/results/scarcity_10 docs/results/scarcity_20 ... --out docs/results/scarcity.md
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from dakter_scale.config import ConfigError
from dakter_scale.study.analyse import Results, diff_cell, paired
from dakter_scale.study.plan import Plan, bank_size, method_name
from dakter_scale.study.runner import payload_plan

CLASSES = ("oil", "look-alike", "ship")  # the rare classes the per-class table shows, where a study has them
BASELINE = "copy_paste"  # every arm with the generator is held against pasting real instances
NONE = "none"  # and every arm against no augmentation: the recipe a user should pick beats doing nothing
TARGETED = "dakter_target"  # pairs drawn around pasted real instances, held against the bank's pasting too


@dataclass
class Study:
    """One study's results.json, read through its own plan."""

    where: str
    payload: dict
    plan: Plan

    @property
    def n_train(self) -> int:
        return int(self.payload["n_train"])

    @property
    def results(self) -> Results:
        return Results(self.payload["runs"], self.plan)


def read_study(folder: str | Path) -> Study:
    """A study folder's results.json (ConfigError naming the file when it is missing or not a study's)."""
    path = Path(folder) / "results.json"
    if not path.is_file():
        raise ConfigError(f"{path}: no results.json (a study writes it when every student is done)")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(payload, dict) or not {"config", "n_train", "runs"} <= set(payload):
        raise ConfigError(f"{path}: not a study's results.json (no config, n_train or runs)")
    return Study(str(path), payload, payload_plan(payload, str(path)))


def check_comparable(studies: list[Study]) -> None:
    """Studies that may share a table: one test split, one set of students and arms, distinct |D|."""
    first = studies[0]
    for s in studies[1:]:
        for what, a, b in (
            ("test split", test_split(first), test_split(s)),
            ("students (experiment.archs)", first.plan.e.archs, s.plan.e.archs),
            ("arms (experiment.methods)", first.plan.methods(), s.plan.methods()),
        ):
            if a != b:
                raise ConfigError(f"{s.where}: its {what} {b} is not {first.where}'s {a}: one table needs the same")
    sizes = [s.n_train for s in studies]
    if len(set(sizes)) != len(sizes):
        raise ConfigError(f"two studies with the same |D| ({sizes}): one row per |D|")


def test_split(study: Study) -> dict | None:
    """The test split's spec and fingerprint (results.json "splits"), None for studies older than it."""
    test = study.payload.get("splits", {}).get("test")
    return None if test is None else {"spec": test["spec"], "fingerprint": test["fingerprint"]}


def markdown(studies: list[Study]) -> str:
    """The tables: settings and banks per |D|, mIoU per arm, each generator arm against copy-paste
    and every arm against no augmentation (the verdicts), the rare classes' IoU, and what the generator
    cost."""
    studies = sorted(studies, key=lambda s: s.n_train)
    check_comparable(studies)
    columns = " | ".join(f"\\|D\\| = {s.n_train}" for s in studies)  # escaped: a bare | splits a table cell
    rule = "|---" * (len(studies) + 2) + "|"
    test = test_split(studies[0])
    lines = [
        "# The scarcity study: every |D| side by side",
        "",
        (
            f"Students scored on the test split `{test['spec']}`"
            if test
            else "Students scored on each study's test split"
        )
        + " (mean ± std over seeds, %); verdicts from the 95 % t-interval of same-seed differences. Studies: "
        + ", ".join(f"`{s.where}`" for s in studies)
        + ".",
        "",
        f"## Where an arm beats {BASELINE} (and a larger bank a smaller one): the |D| of each verdict",
        "",
        "| student | arm | ahead at | tie at | behind at |",
        "|---|---|---|---|---|",
        *where_rows(studies, against(studies, BASELINE) + bank_sizes(studies)),
        "",
        "## Chosen on the validation split (ratio, student steps) and the instance bank",
        "",
        f"| student | setting | {columns} |",
        rule,
    ]
    for arch in studies[0].plan.e.archs:
        cells = [f"{s.plan.ratio(arch):g}, {s.plan.steps(arch) or s.plan.cfg.student.max_steps}" for s in studies]
        lines.append(f"| {arch} | ratio, steps | {' | '.join(cells)} |")
    if any(s.payload.get("banks") for s in studies):
        cells = [bank_cell(s) for s in studies]
        lines.append(f"| | instance bank | {' | '.join(cells)} |")
    for title, rows in (
        ("mIoU", miou_rows(studies)),
        (
            f"Against {BASELINE}: same-seed differences in mIoU, points [95 % interval] (seeds ahead) verdict",
            verdict_rows(studies, against(studies, BASELINE)),
        ),
        (
            f"Against {NONE}: same-seed differences in mIoU, points [95 % interval] (seeds ahead) verdict",
            verdict_rows(studies, against(studies, NONE)),
        ),
        (
            "The bank's size: each bank against the next smaller one, as above",
            verdict_rows(studies, bank_sizes(studies)),
        ),
        (
            "The generator's routes: pairs drawn around real instances against pasting the largest bank, as above "
            "(exploratory: added after |D| = 20)",
            verdict_rows(studies, routes(studies)),
        ),
        (f"Per-class IoU ({' / '.join(CLASSES)})", class_rows(studies)),
    ):
        lines += ["", f"## {title}", "", f"| student | arm | {columns} |", rule, *rows]
    lines += [
        "",
        "## What the generator cost (measured by each study on its machine; timings_s and generated in results.json)",
        "",
        f"| cost | {columns} |",
        "|---" * (len(studies) + 1) + "|",
        *cost_rows(studies),
    ]
    return "\n".join(lines) + "\n"


def cost_rows(studies: list[Study]) -> list[str]:
    """Minutes to train the generator and build the bank, seconds per generated pair (untargeted: the
    set's rate with actor start-up; targeted: sampling seconds per kept pair), a table student's median."""

    def cell(value: float | None, form: str) -> str:
        return "–" if value is None else format(value, form)

    def per_pair(s: Study) -> float | None:
        rate = (s.payload.get("generated") or {}).get("b_cfg", {}).get("pairs_per_second")
        return 1 / rate if rate else None

    def per_kept_pair(s: Study) -> float | None:
        target = (s.payload.get("generated") or {}).get("b_cfg_target", {}).get("target") or {}
        return (target.get("cost") or {}).get("sampling_seconds_per_kept_pair")

    def bank(s: Study) -> str:
        banks, timings = s.payload.get("banks") or {}, s.payload.get("timings_s") or {}
        cells = [
            f"{timings[f'bank_{name}'] / 60:.1f} ({timings[f'bank_{name}'] / b['count'] * 1000:.0f} s per 1,000)"
            for name, b in banks.items()
            if f"bank_{name}" in timings and b.get("count")
        ]
        return "; ".join(cells) or "–"

    def student(s: Study) -> float | None:
        t = s.payload.get("timings_s") or {}
        table = [t[f"student_{name}"] for name in s.payload["runs"] if f"student_{name}" in t]
        return statistics.median(table) / 60 if table else None

    def generator(s: Study) -> float | None:
        seconds = (s.payload.get("timings_s") or {}).get("model_b_cfg")
        return None if seconds is None else seconds / 60

    steps = {s.plan.cfg.diffusion.max_steps for s in studies}
    return [
        f"| generator training ({'/'.join(map(str, sorted(steps)))} steps), min | "
        + " | ".join(cell(generator(s), ".1f") for s in studies)
        + " |",
        "| a generated pair, s (set b_cfg) | " + " | ".join(cell(per_pair(s), ".2f") for s in studies) + " |",
        "| a targeted pair, sampling s per kept pair | "
        + " | ".join(cell(per_kept_pair(s), ".2f") for s in studies)
        + " |",
        "| instance bank, min (s per 1,000 instances) | " + " | ".join(bank(s) for s in studies) + " |",
        "| a table student, median min | " + " | ".join(cell(student(s), ".1f") for s in studies) + " |",
    ]


def bank_cell(study: Study) -> str:
    banks = study.payload.get("banks") or {}
    return (
        "; ".join(
            f"{b['count']:,} ({', '.join(f'{c} {n:,}' for c, n in b['by_class'].items())}) from {b['source_pairs']:,} pairs"
            for b in banks.values()
        )
        or "–"
    )


def miou_rows(studies: list[Study]) -> list[str]:
    rows = []
    for arch in studies[0].plan.e.archs:
        for m in studies[0].results.methods():
            cells = []
            for s in studies:
                mean, std = s.results.cell(m, arch, s.plan.ratio(arch), "miou")
                cells.append(
                    "–" if math.isnan(mean) else f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")
                )
            rows.append(f"| {arch} | {method_name(m)} | {' | '.join(cells)} |")
    return rows


def where_rows(studies: list[Study], pairs: list[tuple[str, str]]) -> list[str]:
    """Per student and pair (a, b), the |D| at which a − b is ahead, tie and behind."""
    rows = []
    for arch in studies[0].plan.e.archs:
        for m, baseline in pairs:
            by = {"ahead": [], "tie": [], "behind": []}
            for s in studies:
                v = paired(s.results.differences(m, baseline, arch, s.plan.ratio(arch)))
                if v["n"] and v["verdict"] in by:
                    by[v["verdict"]].append(str(s.n_train))
            rows.append(f"| {arch} | {m} − {baseline} | " + " | ".join(", ".join(by[k]) or "–" for k in by) + " |")
    return rows


def against(studies: list[Study], baseline: str) -> list[tuple[str, str]]:
    """Each arm but the baselines (against none: each arm but none) held against `baseline`."""
    return [(m, baseline) for m in studies[0].results.methods() if m not in {NONE, baseline}]


def bank_sizes(studies: list[Study]) -> list[tuple[str, str]]:
    """Each instance-paste arm held against the one of the next smaller bank (10,000 against 1,000)."""
    arms = sorted((m for m in studies[0].results.methods() if bank_size(m)), key=bank_size)
    return list(zip(arms[1:], arms[:-1]))


def routes(studies: list[Study]) -> list[tuple[str, str]]:
    """Targeted DAKTer held against the largest bank's instance paste, where a study has both: which of
    the generator's two ways to a rare class the recipe should name."""
    methods = studies[0].results.methods()
    banks = sorted((m for m in methods if bank_size(m)), key=bank_size)
    return [(TARGETED, banks[-1])] if TARGETED in methods and banks else []


def verdict_rows(studies: list[Study], pairs: list[tuple[str, str]]) -> list[str]:
    """Per student and pair (a, b), each study's same-seed difference a − b and its verdict."""
    rows = []
    for arch in studies[0].plan.e.archs:
        for m, baseline in pairs:
            cells = [diff_cell(s.results.differences(m, baseline, arch, s.plan.ratio(arch))) for s in studies]
            rows.append(f"| {arch} | {m} − {baseline} | {' | '.join(cells)} |")
    return rows


def class_rows(studies: list[Study]) -> list[str]:
    rows = []
    for arch in studies[0].plan.e.archs:
        for m in studies[0].results.methods():
            cells = []
            for s in studies:
                classes = s.payload.get("classes") or []
                per_class = s.results.per_class(m, arch, s.plan.ratio(arch), len(classes))
                means = [per_class[classes.index(c)][0] for c in CLASSES if c in classes]
                shown = ["–" if math.isnan(v) else f"{100 * v:.1f}" for v in means]
                cells.append(" / ".join(shown) if shown else "–")
            rows.append(f"| {arch} | {method_name(m)} | {' | '.join(cells)} |")
    return rows
