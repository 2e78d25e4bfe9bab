"""A study's results (results.json) as markdown and figures: one function per section.

`experiment_markdown` is jobs/experiment.py's results.md, `demo_markdown` jobs/demo.py's report.md,
`rescore_markdown` the tables of students re-scored on another split. Each section returns its
lines; figures are written by `write_figures` (the sample figures need the generated pairs, so the
runner draws them). Everything here reads the payload only, so a results.json rebuilds its report.
"""

from __future__ import annotations

import math
from pathlib import Path

from dakter_scale.data.storage import redact_url
from dakter_scale.study.analyse import Results, diff_cell, interval, mean_std
from dakter_scale.study.figures import bar_figure, curve_figure, metrics_table, panel_figure, pct
from dakter_scale.study.plan import DRAWN_SUFFIX, METHOD_NAMES, Plan, method_name

B_MODES = {
    "auto": "RMS of the normalised training images, so the image and label modalities have equal SNR at every timestep"
}


# -- results.md --------------------------------------------------------------------------------


def experiment_markdown(p: dict, plan: Plan, classes: list[str]) -> str:
    r = Results(p["runs"], plan)
    sections = [
        header(p, plan),
        answer_table(r),
        kd_weight_table(p),
        main_table(r),
        [""],
        verdict_table(r),
        per_class_table(r, classes),
        sweep_table(r),
        quality_table(p, plan),
        study_tables(p, plan),
        time_table(p["timings_s"]),
    ]
    return "\n".join(line for section in sections for line in section)


def header(p: dict, plan: Plan) -> list[str]:
    cfg, e = plan.cfg, plan.e
    other = [
        f"{arch} {plan.kd_weight(arch):g}"
        for arch in e.archs
        if plan.kd_weight(arch) not in (None, cfg.student.kd_weight)
    ]
    note = f" ({', '.join(other)})" if other else ""
    return [
        "# DAKTer experiment",
        "",
        f"Data `{redact_url(cfg.data.spec)}`: {p['n_train']} training images, {scored_on(p)} (one confusion matrix per run). "
        f"Models at {cfg.data.resolution} px; {lengths(p, plan)}, KD weight λ = {cfg.student.kd_weight:g}{note}, T = {cfg.student.kd_temperature:g}. {seed_counts(e)}; mean ± std (%) over seeds.",
        "b: "
        + ", ".join(f"{tag} = {b:.4f}" for tag, b in p["b"].items())
        + f". {p['generated_pairs']} generated pairs per model.",
        *bank_lines(p),
        "",
    ]


def bank_lines(p: dict) -> list[str]:
    """The instance banks the instance_paste arms drew from, with what their judge rejected."""
    return [
        f"Instance bank `{name}`: {b['count']:,} instances ({', '.join(f'{c} {n:,}' for c, n in b['by_class'].items())}) "
        f"cut from {b['source_pairs']:,} generated pairs; its judge ({b['judge_arch']}, the real-only student) rejected "
        f"{b['rejected']:,} of {b['candidates']:,}."
        for name, b in p.get("banks", {}).items()
    ]


def scored_on(p: dict) -> str:
    """Where the table's students are scored: the test split results.json names (payloads older than
    `splits` were scored on the data's own test split)."""
    test = p.get("splits", {}).get("test")
    if not test:
        return "evaluated on the full test split"
    return f"scored on the test split `{test['spec']}` ({test['scenes']} scenes)"


def seed_counts(e) -> str:
    """'3 seeds', or '3 seeds (unet and segformer: 5)' where experiment.more_seeds adds some."""
    more = {}
    for arch in e.archs:
        if len(e.seeds_of(arch)) > len(e.seeds):
            more.setdefault(len(e.seeds_of(arch)), []).append(arch)
    extra = "; ".join(f"{' and '.join(archs)}: {n}" for n, archs in more.items())
    return f"{len(e.seeds)} seeds" + (f" ({extra})" if extra else "")


def lengths(p: dict, plan: Plan) -> str:
    """'diffusion N steps of batch B; sampler ...; students M steps of batch B', with the steps a
    wall-clock budget decided (results.json "steps") when one was set."""
    d, s, steps = plan.cfg.diffusion, plan.cfg.student, p.get("steps", {})
    if d.max_minutes > 0 and steps.get("diffusion"):
        diffusion = f"diffusion {', '.join(str(v) for v in steps['diffusion'].values())} steps of batch {d.batch_size} ({d.max_minutes:g} min budget)"
    else:
        diffusion = f"diffusion {d.max_steps} steps of batch {d.batch_size}"
    if s.max_minutes > 0 and steps.get("students"):
        counts = sorted(set(steps["students"].values()))
        students = f"students {', '.join(map(str, counts))} steps of batch {s.batch_size} ({s.max_minutes:g} min budget, measured once per architecture)"
    elif plan.e.steps_grid and plan.chosen:
        chosen = ", ".join(f"{arch} {plan.steps(arch)}" for arch in plan.e.archs if plan.steps(arch))
        students = f"students' steps of batch {s.batch_size} chosen on the validation split: {chosen}"
    else:
        students = f"students {s.max_steps} steps of batch {s.batch_size}"
    return f"{diffusion}; sampler {plan.cfg.sampling.sampler} x {plan.cfg.sampling.steps}, decode {plan.cfg.sampling.decode}; {students}"


def kd_weight_table(p: dict) -> list[str]:
    """The lambda grid on the validation split (experiment.kd_weight_grid), when the study has one."""
    choice = p.get("kd_weight_choice")
    if not choice:
        return []
    if any("@" in setting or "#" in setting for row in choice.values() for setting in row["miou"]):
        return setting_table(p, choice)
    grid = list(next(iter(choice.values()))["miou"])
    first = next(iter(choice.values()))
    lines = [
        f"## KD weight λ, chosen on the validation split (`{p['validation_spec']}`, DAKTer at ratio {first['ratio']:g}): mIoU",
        "",
        "| student | " + " | ".join(f"λ = {w}" for w in grid) + " | chosen |",
        "|---|" + "---|" * (len(grid) + 1),
    ]
    for arch, row in choice.items():
        cells = [pct(*mean_std(list(row["miou"][w].values()))) for w in grid]
        lines.append(f"| {arch} | " + " | ".join(cells) + f" | {row['chosen']:g} |")
    return lines + ["", "The test split was not looked at to choose λ; the main table uses the chosen λ.", ""]


def setting_table(p: dict, choice: dict[str, dict]) -> list[str]:
    """The (lambda, ratio[, length]) grid on the validation split (experiment.ratio_grid, steps_grid):
    one row per setting."""
    lengths = any("#" in setting for row in choice.values() for setting in row["miou"])
    lines = [
        f"## {'Student length, a' if lengths else 'A'}ugmentation ratio and KD weight λ, chosen on the validation split (`{p['validation_spec']}`, DAKTer students): mIoU",
        "",
        "| student | λ | ratio |" + (" steps |" if lengths else "") + " validation mIoU | seeds | |",
        "|---|---|---|" + ("---|" if lengths else "") + "---|---|---|",
    ]
    for arch, row in choice.items():
        for setting, by_seed in row["miou"].items():
            head, _, steps = setting.partition("#")
            weight, _, ratio = head.partition("@")
            ratio = ratio or f"{row['ratio']:g}"
            mark = (
                "chosen"
                if (float(weight), float(ratio), int(steps) if steps else None)
                == (row["chosen"], row["chosen_ratio"], row.get("chosen_steps"))
                else ""
            )
            length = f" {steps} |" if lengths else ""
            lines.append(
                f"| {arch} | {weight} | {ratio} |{length} {pct(*mean_std(list(by_seed.values())))} | {len(by_seed)} | {mark} |"
            )
    return lines + [
        "",
        "The test split was not looked at to choose them; the main table uses each student's chosen setting.",
        "",
    ]


def ratio_text(plan: Plan, percent: bool = True) -> str:
    """'at ratio 2 (200 %)' (or 'at ratio 2'), or each student's ratio where it was chosen on the validation split."""
    if plan.e.ratio_grid and plan.chosen:
        return (
            "at the ratio chosen on the validation split ("
            + ", ".join(f"{a} {plan.ratio(a):g}" for a in plan.e.archs)
            + ")"
        )
    return f"at ratio {plan.e.ratio:g}" + (f" ({100 * plan.e.ratio:.0f} %)" if percent else "")


def main_table(r: Results) -> list[str]:
    e = r.e
    lines = [
        f"## Main comparison {ratio_text(r.plan)}: mIoU / mean F1",
        "",
        "Mean ± standard deviation (ddof 1) over the seeds each cell holds (the column's seeds, or n = the "
        "fewer that have finished); the verdicts below are over same-seed differences, not these cells.",
        "",
        "| method | " + " | ".join(f"{arch} ({len(e.seeds_of(arch))} seeds)" for arch in e.archs) + " |",
        "|---|" + "---|" * len(e.archs),
    ]
    for m in r.methods():
        cells = []
        for arch in e.archs:
            mi, ms = r.cell(m, arch, r.plan.ratio(arch), "miou")
            fi, fs = r.cell(m, arch, r.plan.ratio(arch), "mean_f1")
            n = len(r.by_seed(m, arch, r.plan.ratio(arch), "miou"))
            fewer = f" (n = {n})" if 0 < n < len(e.seeds_of(arch)) else ""
            cells.append(f"{pct(mi, ms)} / {pct(fi, fs)}{fewer}")
        lines.append(f"| {labelled(r, m)} | " + " | ".join(cells) + " |")
    return lines


def labelled(r: Results, method: str) -> str:
    """A method's name, with the methods whose students are its own (Results.same_as)."""
    aliases = [method_name(m) for m in r.plan.methods() if r.same_as(m) == method]
    return method_name(method) + (f" (= {', '.join(aliases)}: the same students)" if aliases else "")


def answer_table(r: Results) -> list[str]:
    """The verdicts at a glance: one row per comparison, one column per student, each cell the mean
    same-seed difference a − b in mIoU points, its 95 % interval and the word it allows (the verdict
    table's numbers, laid out to be read first)."""
    verdicts = [v for v in r.verdicts() if v["n"]]
    if not verdicts:
        return []
    archs = list(r.e.archs)
    rows: dict[tuple[str, str], dict] = {}
    for v in verdicts:
        rows.setdefault((v["a"], v["b"]), {"claim": v["claim"], "exploratory": v.get("exploratory", False)})[
            v["arch"]
        ] = v
    lines = [
        "## The answer: same-seed differences in mIoU (points), 95 % t-interval, and the verdict it allows",
        "",
        "| a − b | " + " | ".join(archs) + " |",
        "|---|" + "---|" * len(archs),
    ]
    for (a, b), row in rows.items():
        cells = []
        for arch in archs:
            v = row.get(arch)
            if v is None:
                cells.append("–")
            elif v["low"] is None:
                cells.append(f"{100 * v['mean']:+.2f} ({v['verdict']})")
            else:
                cells.append(f"{100 * v['mean']:+.2f} [{interval(v)}] **{v['verdict']}**")
        mark = ", exploratory" if row["exploratory"] else ""
        lines.append(f"| {a} − {b} ({row['claim']}{mark}) | " + " | ".join(cells) + " |")
    return lines + [""]


def verdict_table(r: Results) -> list[str]:
    """The verdicts: per comparison and student, the same-seed differences a − b in mIoU (mean, its
    95 % t-interval, the seeds where a is ahead) and the word the interval allows (analyse.word):
    "ahead" only where the interval excludes 0. Where the validation grid trained on a table seed, its
    winner is the DAKTer arm's student at that seed (units.grid_twin): the best of the grid's trainings
    on validation, where the other arms' students are not chosen; DAKTer's verdicts follow again
    without that seed."""
    lines = _verdict_rows(r.verdicts(), "## Verdicts: same-seed differences in mIoU (points), 95 % t-interval")
    shared = sorted(set(r.plan.grid_seeds()) & set(r.e.seeds))
    if lines and shared and "dakter" in r.plan.methods():
        seeds = ", ".join(map(str, shared))
        title = (
            f"## DAKTer's verdicts without seed {seeds}, the validation grid's (its winner is DAKTer's student there)"
        )
        lines += _verdict_rows([v for v in r.verdicts(shared) if "dakter" in (v["a"], v["b"])], title)
    return lines


def _verdict_rows(verdicts: list[dict], title: str) -> list[str]:
    rows = [v for v in verdicts if v["n"]]
    if not rows:
        return []
    lines = [
        title,
        "",
        "| comparison | student | a − b | 95 % interval | a ahead | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in rows:
        lines.append(
            f"| {v['a']} − {v['b']} ({v['claim']}) | {v['arch']} | {100 * v['mean']:+.2f} | {interval(v, ' … ') or '–'} | {v['ahead']}/{v['n']} | {v['verdict']}{' (exploratory)' if v.get('exploratory') else ''} |"
        )
    if any(v.get("exploratory") for v in rows):
        lines += [
            "",
            "Exploratory: comparisons added after this study's test scores were read (experiment.exploratory).",
        ]
    return lines + [""]


def per_class_table(r: Results, classes: list[str], figure: bool = True) -> list[str]:
    e = r.e
    lines = [
        f"## Per-class IoU {ratio_text(r.plan, percent=False)} (%, mean over seeds)",
        "",
        "| student | method | " + " | ".join(classes) + " |",
        "|---|---|" + "---|" * len(classes),
    ]
    for arch in e.archs:
        for m in r.methods():
            lines.append(
                f"| {arch} | {method_name(m)} | "
                + " | ".join(pct(mu) for mu, _ in r.per_class(m, arch, r.plan.ratio(arch), len(classes)))
                + " |"
            )
    return lines + ["", "![per-class IoU](per_class_iou.png)", ""] if figure else lines + [""]


def _sweep_seeds(r: Results) -> list[int]:
    return sorted(
        set(r.e.seeds) | set(r.e.sweep_seeds or [])
    )  # a sweep ratio equal to e.ratio has the main table's seeds too


def sweep_table(r: Results, figure: bool = True) -> list[str]:
    e = r.e
    if not e.sweep_archs:
        return []
    lines = [
        "## Augmentation ratio sweep: mIoU (%)",
        "",
        "| student | method | 0 | " + " | ".join(f"{100 * x:.0f} %" for x in e.sweep_ratios) + " |",
        "|---|---|---|" + "---|" * len(e.sweep_ratios),
    ]
    seeds = _sweep_seeds(r)
    for arch in e.sweep_archs:
        none = r.cell("none", arch, 0, "miou", seeds)
        for m in e.sweep_methods:
            cells = [r.cell(m, arch, x, "miou", seeds) for x in e.sweep_ratios]
            lines.append(
                f"| {arch} | {METHOD_NAMES[m]} | {pct(*none)} | " + " | ".join(pct(mu, sd) for mu, sd in cells) + " |"
            )
        if {"dakter", "hard"} <= set(e.sweep_methods) and len(e.sweep_seeds or e.seeds) > 1:
            diffs = [diff_cell(r.differences("dakter", "hard", arch, x, seeds)) for x in e.sweep_ratios]
            lines.append(
                f"| {arch} | DAKTer − hard labels, same seeds (points; seeds ahead) | – | " + " | ".join(diffs) + " |"
            )
    for arch in e.sweep_archs if figure else []:
        lines += ["", f"![ratio sweep {arch}](ratio_sweep_{arch}.png)", ""]
    return lines if figure else lines + [""]


def quality_table(p: dict, plan: Plan) -> list[str]:
    e = plan.e
    lines = [
        "## Generation quality",
        "",
        "| model | b | label alignment mIoU | pixel agreement | class-fraction TV | mean max-prob. | ENL gen / real | histogram TV / W1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    model = {s.name: s.model for s in plan.generated_sets()}  # a set's model (b_cfg_target's is b_cfg)
    for tag, q in p["quality"].items():
        hd = q.get("histogram_distance", {})
        base = tag.removesuffix(DRAWN_SUFFIX)
        lines.append(
            f"| {tag} | {p['b'][model.get(base, base)]:.3f} | {pct(q['label_alignment']['miou'])} | {pct(q['label_alignment']['pixel_agreement'])} | {q['class_fraction_tv']:.3f} | {q['mean_confidence']:.3f} | "
            f"{q['enl_generated']:.2f} / {q.get('enl_real', float('nan')):.2f} | {hd.get('tv', float('nan')):.3f} / {hd.get('w1', float('nan')):.1f} |"
        )
    lines += [
        "",
        f"Label alignment: the real-only {e.archs[0]} student (seed {e.seeds[0]}) segments the generated images; its argmax is scored against the generated labels.",
        "",
    ]
    if e.filter_keep > 0:
        drawn = int(math.ceil(p["generated_pairs"] / e.filter_keep))
        lines += [
            f"Filter: the students use the {p['generated_pairs']} best-aligned of {drawn} drawn pairs per model, scored by the real-only "
            f"{e.filter_arch} student (seed {e.seeds[0]}); rows TAG{DRAWN_SUFFIX} are the draw before the filter.",
            "",
        ]
    for name, g in p.get("generated", {}).items():
        t = g.get("target")
        if t:
            achieved = ", ".join(
                f"{k} {100 * v:.2f} % (target {100 * t['shares'][k]:.2f} %, training {100 * t['training'][k]:.2f} %)"
                for k, v in t["achieved"].items()
            )
            lines += [
                f"Class target of {name}: {t['spec']} by {t['route']}, {'met' if t['met'] else 'NOT MET'}: {achieved}; "
                f"{t['cost']['pairs_drawn_per_kept_pair']:.2f} pairs drawn per pair kept.",
                "",
            ]
    for tag in p.get("generated", p["b"]):
        lines += [f"![samples {tag}](samples_{tag}.png)", ""]
    return lines


def study_tables(p: dict, plan: Plan) -> list[str]:
    e, lines = plan.e, []
    for kind, title in (("sampler", "Sampler study"), ("decode", "Soft-label decode study")):
        rows = p["studies"].get(kind) or []
        if not rows:
            continue
        students = any(row["miou"] for row in rows)
        lines += [
            f"## {title} ({e.study_arch}, DAKTer at ratio {e.study_ratio:g}, seeds {list(e.study_seeds)})"
            if students
            else f"## {title} (generation quality only, no students)",
            "",
            "| variant | pairs/s (run / sampling loop) | label alignment mIoU | class-fraction TV | mean max-prob. | ENL generated / real | histogram TV / W1 |"
            + (" student mIoU |" if students else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if students else ""),
        ]
        for row in rows:
            q, hd = row["quality"], row["quality"].get("histogram_distance", {})
            pps = " / ".join(
                f"{v:.2f}" if v else "–" for v in (row["pairs_per_second"], row.get("sampling_pairs_per_second"))
            )
            cells = (
                f"| {row['variant']} | {pps} | {pct(q['label_alignment']['miou'])} | {q['class_fraction_tv']:.3f} | {q['mean_confidence']:.3f} | "
                f"{q['enl_generated']:.2f} / {q.get('enl_real', float('nan')):.2f} | {hd.get('tv', float('nan')):.3f} / {hd.get('w1', float('nan')):.1f} |"
            )
            lines.append(cells + (f" {pct(*mean_std(row['miou']))} |" if students else ""))
        lines.append("")
        if kind == "sampler":
            lines += [
                "Pairs/s: the whole generation run (actor start-up included) / the writers' sampling loops alone (from the shard markers).",
                "",
                "![sampler frontier](sampler_frontier.png)",
                "",
            ]
    return lines


def sampler_frontier_figure(p: dict, path: str | Path) -> Path | None:
    """Generation quality against network evaluations per pair, one curve per sampler (and solver order)."""
    rows = (p.get("studies") or {}).get("sampler") or []
    if not rows:
        return None
    curves: dict[str, list[tuple[int, dict]]] = {}
    for row in rows:
        s = row["sampling"]
        name = s["sampler"] + (f" (order {s['solver_order']})" if "solver_order" in s else "")
        curves.setdefault(name, []).append((int(s["steps"]), row["quality"]))
    metrics = {
        "label alignment mIoU (%)": lambda q: 100 * q["label_alignment"]["miou"],
        "class-fraction TV": lambda q: q["class_fraction_tv"],
        "mean max-probability": lambda q: q["mean_confidence"],
        "ENL generated / real": lambda q: q["enl_generated"] / q.get("enl_real", float("nan")),
        "grey-level histogram TV": lambda q: q.get("histogram_distance", {}).get("tv", float("nan")),
    }
    panels = {
        title: {
            name: ([n for n, _ in sorted(pts, key=lambda t: t[0])], [f(q) for _, q in sorted(pts, key=lambda t: t[0])])
            for name, pts in curves.items()
        }
        for title, f in metrics.items()
    }
    return panel_figure(panels, path, "network evaluations per pair (NFE)", title="sampler frontier")


def time_table(timings: dict[str, float], title: str = "## Time (s)", per_student: bool = False) -> list[str]:
    """One column per model and generated set; the students summed as 'students (N)' unless per_student."""
    columns: dict[str, float] = {}
    students = [k for k in timings if k.startswith("student_")]
    for key, seconds in timings.items():
        if key in students and not per_student:
            key = f"students ({len(students)})"
            seconds = columns.get(key, 0.0) + seconds
        columns[key] = seconds
    return [
        title,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        "| " + " | ".join(f"{v:.0f}" for v in columns.values()) + " |",
        "",
    ]


def write_figures(p: dict, plan: Plan, classes: list[str], out: str | Path) -> None:
    """per_class_iou.png (mean over students and seeds), ratio_sweep_ARCH.png per swept student, and
    sampler_frontier.png with a sampler study."""
    r, e, out = Results(p["runs"], plan), plan.e, Path(out)
    sampler_frontier_figure(p, out / "sampler_frontier.png")
    bars = {}
    for m in plan.methods():
        means = [0.0] * len(classes)
        for arch in e.archs:
            for c, (mu, _) in enumerate(r.per_class(m, arch, plan.ratio(arch), len(classes))):
                means[c] += (0 if math.isnan(mu) else 100 * mu) / len(e.archs)
        bars[method_name(m)] = (means, None)
    bar_figure(
        classes,
        bars,
        out / "per_class_iou.png",
        "IoU (%) mean over students and seeds",
        f"per-class IoU {ratio_text(plan, percent=False)}",
    )
    for arch in e.sweep_archs:
        none = r.cell("none", arch, 0, "miou", _sweep_seeds(r))
        series = {}
        for m in e.sweep_methods:
            cells = [r.cell(m, arch, x, "miou", _sweep_seeds(r)) for x in e.sweep_ratios]
            series[METHOD_NAMES[m]] = (
                [0.0] + [100 * x for x in e.sweep_ratios],
                [100 * none[0]] + [100 * mu for mu, _ in cells],
                [100 * (none[1] or 0)] + [100 * (sd or 0) for _, sd in cells],
            )
        curve_figure(
            series,
            out / f"ratio_sweep_{arch}.png",
            "augmentation ratio (%)",
            "mIoU (%)",
            f"{arch}: mIoU vs augmentation ratio",
        )


# -- rescored students -------------------------------------------------------------------------


def rescore_markdown(p: dict, plan: Plan, classes: list[str]) -> str:
    """The main table, same-seed differences, per-class IoU and sweep of students scored on p['spec']."""
    r = Results(p["runs"], plan)
    head = [
        f"# DAKTer experiment, students re-scored on `{p['spec']}` ({p['tag']})",
        "",
        f"The {len(p['runs'])} finished students of this experiment, trained as in results.md, scored on the test split of `{p['spec']}` "
        "(one confusion matrix per run); mean ± std (%) over seeds.",
        "",
    ]
    sections = [
        head,
        main_table(r),
        [""],
        verdict_table(r),
        per_class_table(r, classes, figure=False),
        sweep_table(r, figure=False),
    ]
    return "\n".join(line for section in sections for line in section)


def partial_markdown(p: dict, plan: Plan, classes: list[str]) -> str:
    """A study's tables while it runs (jobs/experiment.py --partial): the validation grid's scores so far,
    then the main table, verdicts and per-class IoU over the table students scored on the test split
    (p: {"grid": {name: validation mIoU}, "grid_planned", "runs": {name: metrics}, "planned", "chosen"})."""
    r = Results(p["runs"], plan)
    lines = [
        "# DAKTer study, partial results",
        "",
        f"Written while the study runs, from the students finished so far: {len(p['grid'])} of "
        f"{p['grid_planned']} validation-grid students, {len(p['runs'])} of {p['planned']} table students. "
        "A verdict needs two seeds of both arms; its interval narrows as seeds finish.",
        "",
    ]
    if p["grid_planned"]:
        lines += ["## Validation grid (validation mIoU, %)", "", "| student | mIoU |", "|---|---|"]
        lines += [f"| {name} | {pct(miou)} |" for name, miou in sorted(p["grid"].items())] + [""]
    if p["chosen"] is None:
        lines.append("The table's students wait for the validation grid's choice.")
        return "\n".join(lines) + "\n"
    lines.append("Chosen on the validation split: " + ", ".join(f"{a} {c}" for a, c in p["chosen"].items()) + ".")
    lines.append("")
    sections = [answer_table(r), main_table(r), [""], verdict_table(r), per_class_table(r, classes, figure=False)]
    return "\n".join(lines + [line for section in sections for line in section]) + "\n"


# -- the demo's report.md ----------------------------------------------------------------------


def demo_markdown(p: dict, plan: Plan, classes: list[str]) -> str:
    """jobs/demo.py's report: b, the sample figure, generation quality, the students' test metrics, time."""
    cfg, e = plan.cfg, plan.e
    gen, q = p["generated"]["b_cfg"], p["quality"]["b_cfg"]
    mode = p["b_mode"]["b_cfg"]
    pps = f"{gen['pairs_per_second']:.2f} pairs/s" if gen.get("pairs_per_second") else "drawn by an earlier run"
    lines = [
        "# DAKTer demo report",
        "",
        f"Data: `{redact_url(cfg.data.spec)}` ({p['n_train']} training images), {cfg.data.resolution} px. "
        "All numbers below were measured by this run; the scale is tiny (CPU, minutes), so they show the pipeline working, not the method's ceiling.",
        "",
        "## Balancing factor",
        f"b = **{p['b']['b_cfg']:.4f}** (`{mode}`" + (f": {B_MODES[mode]}" if mode in B_MODES else "") + ").",
        "",
        "## Generated samples",
        "![generated samples](samples_b_cfg.png)",
        "",
        f"{gen['count']} pairs in {gen['shards']} shards, {cfg.sampling.sampler} x {cfg.sampling.steps} steps, {pps}.",
        "",
        "| | " + " | ".join(classes) + " |",
        "|---|" + "---|" * len(classes),
        "| class pixel fractions, real train | "
        + " | ".join(f"{100 * v:.2f}%" for v in q["class_fractions_real"])
        + " |",
        "| class pixel fractions, generated (argmax) | "
        + " | ".join(f"{100 * v:.2f}%" for v in q["class_fractions_generated"])
        + " |",
        "",
        f"- mean max-probability of the soft labels: {gen['mean_confidence']:.3f}; total variation between the class fractions: {q['class_fraction_tv']:.3f}",
        f"- label alignment (the real-only student segments the generated images, scored against the generated labels): mIoU {pct(q['label_alignment']['miou'])}, pixel agreement {pct(q['label_alignment']['pixel_agreement'])}",
        f"- equivalent number of looks over sea: generated {q['enl_generated']:.2f}"
        + (f", real {q['enl_real']:.2f}" if "enl_real" in q else ""),
    ]
    if "histogram_distance" in q:
        hd = q["histogram_distance"]
        lines.append(
            f"- 8-bit intensity histogram distance to real images: TV {hd['tv']:.3f}, W1 {hd['w1']:.2f} grey levels"
        )
    lines += [f"- **WARNING**: {w}" for w in gen.get("warnings", [])]
    several = len(e.archs) > 1 or len(e.seeds) > 1
    rows = [
        (method_name(run.method) + (f", {run.arch} seed {run.seed}" if several else ""), p["runs"][run.name])
        for run in plan.main_runs()
        if run.name in p["runs"]
    ]
    lines += [
        "",
        f"## Students ({', '.join(e.archs)}, {cfg.student.max_steps} steps of batch {cfg.student.batch_size}, generated ratio {e.ratio:g} = {100 * e.ratio:.0f} %: "
        f"{p['generated_pairs']} distinct generated pairs beside {p['n_train']} real images)",
        "Test split, full images, one confusion matrix over the split; values in %.",
        "",
        metrics_table(rows, classes),
        "",
        *time_table(p["timings_s"], "## Time per stage (s)", per_student=True),
        "Resolved config: `config.yaml`; raw numbers: `results.json`.",
        "",
    ]
    return "\n".join(lines)
