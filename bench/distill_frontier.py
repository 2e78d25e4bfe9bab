"""The frontier below 10 evaluations per pair (issue 31, item 2): a generator's sampler distilled 16 -> 8 -> 4
-> 2 -> 1 steps, each point's pairs scored with the project's quality measures beside DPM-Solver++-20 and
DDIM-50 of the undistilled generator.

    OMP_NUM_THREADS=1 nice -n 19 python bench/distill_frontier.py --model runs/evidence64/models/b_cfg \\
        --out runs/distill/frontier                          (resumable: rerun the same command)
    ... --teacher-steps 32 --chain 16,8,4 --judge runs/distill/frontier/judge --out runs/distill/frontier32
                                                             (another first teacher, the same judge)
    ... --method consistency --teacher-steps 32 --chain 4,2,1 --round-steps 1200 \
        --judge runs/distill/frontier/judge --beside runs/distill/frontier32 --out runs/distill/consistency32
                                                             (one consistency model on the DDIM-32 grid, as many
                                                             optimiser steps as 3 progressive rounds of 400,
                                                             sampled at 4, 2 and 1 evaluations)
    ... --teacher-steps 32 --chain 16,8,4 --set distill.class_balance=0.5 --judge runs/distill/frontier/judge \
        --beside runs/distill/frontier32 --out runs/distill/balanced32
                                                             (the chain with class-balanced rounds: does it keep
                                                             the rarest class?)
    ... --markdown-only --out DIR [--model M | --judge J] [--beside B]
                                                             (rewrite DIR/frontier.md from DIR/frontier.json,
                                                             nothing measured; class names from M or J)

Stages, each kept in OUT and skipped when finished, so a rerun continues:
  judge/       a real-only student (jobs/train_student.py on the generator's data, --judge-steps steps): the
               segmenter label alignment and calibration are scored with (or --judge DIR)
  m8 m4 m2 m1  the distilled folders (jobs/distill.py's rounds, one folder per round, --round-steps optimiser
               steps each, checkpoints every 50 so a killed round resumes); each round's CPU and wall seconds
  cd           with --method consistency instead: one consistency-distilled folder (--round-steps optimiser
               steps in one run on the DDIM grid of --teacher-steps), sampled at every --chain step count
               (each on that grid); its CPU and wall seconds
  sets/NAME    --pairs pairs per sampler point (jobs/synthesize.py's writer in this process, one thread)
  frontier.json, frontier.md   per point: evaluations per pair, label alignment (mIoU, pixel agreement),
               class-fraction total variation, the rarest real class's generated share (the smallest nonzero
               real share; a total variation cannot see it vanish), mean max-probability, expected calibration
               error of the soft labels against the judge, ENL (real beside), grey-level histogram distance,
               pairs/s, and the distillation's cost so far
With --beside DIR (another run's OUT, e.g. the progressive frontier of the same teacher and judge) its points
and rounds are listed in frontier.md below this run's, and the undistilled samplers are not measured again
(their rows are DIR's): one table at equal judge and quality columns. Pairs/s of two runs were measured at
different times, under whatever else the machine ran.
The --model folder is only read. Nothing here is a test: it measures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dakter_scale.config import SamplingConfig, SynthesisConfig, load_config  # noqa: E402

CHAIN = (8, 4, 2, 1)  # the distilled points (--chain), each the next one's teacher
CONSISTENCY_CHAIN = (4, 2, 1)  # --method consistency: the step counts one consistency model is sampled at
TEACHER_STEPS = 16  # the undistilled generator's DDIM steps the first round halves (--teacher-steps)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def record(out: Path) -> dict:
    path = out / "frontier.json"
    return json.loads(path.read_text()) if path.is_file() else {"rounds": {}, "points": {}}


def save(out: Path, rec: dict) -> None:
    (out / "frontier.json").write_text(json.dumps(rec, indent=2) + "\n")


def train_judge(model: Path, out: Path, steps: int) -> Path:
    judge = out / "judge"
    if (judge / "student.json").is_file():
        return judge
    log(f"judge: a real-only student, {steps} steps")
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "train_student.py"),
        "--config",
        str(model / "config.yaml"),
        "--out",
        str(judge),
        f"student.max_steps={steps}",
        "student.ratio=0",
    ]
    subprocess.run(cmd, check=True)
    return judge


def timed_distill(
    model: Path, teacher: Path, folder: Path, settings: list[str], steps: int, lr: float, batch: int
) -> dict:
    """One distillation run (diffusion/distill.py) of `teacher` into `folder`, resumed from its newest
    checkpoint, with the model's config and `settings`; its cost as a round's record."""
    from dakter_scale.diffusion.distill import distill
    from dakter_scale.training import list_checkpoints, make_accelerator

    cfg = load_config(
        model / "config.yaml",
        [
            *settings,
            f"distill.max_steps={steps}",
            f"distill.lr={lr}",
            f"distill.batch_size={batch}",
            "distill.checkpoint_every=50",
            "distill.log_every=25",
        ],
    )
    kept = list_checkpoints(folder)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    distill(cfg, teacher, folder, resume="latest", progress=False, accelerator=make_accelerator("no"))
    return {
        "method": cfg.distill.method,
        "optimizer_steps": steps,
        "resumed_at_step": kept[-1][0] if kept else 0,  # the seconds below count from this step on
        "batch_size": batch,
        "lr": lr,
        **({"target_ema_decay": cfg.distill.target_ema_decay} if cfg.distill.method == "consistency" else {}),
        "cpu_seconds": cpu_seconds() - cpu0,  # of this run; a resumed run counts only its own part
        "wall_seconds": time.perf_counter() - wall0,
    }


def distil_chain(
    model: Path, out: Path, rec: dict, round_steps: int, first: int, chain: tuple[int, ...], train
) -> None:
    """The progressive rounds first -> chain[0] -> ..., each by train(teacher, folder, settings, steps)
    (timed_distill with the run's lr, batch and --set), skipped when finished; their costs in rec["rounds"]."""
    teacher, teacher_steps = model, first
    for steps in chain:
        folder = out / f"m{steps}"
        name = f"{teacher_steps}->{steps}"
        if name not in rec["rounds"] or not (folder / "dakter.json").is_file():
            log(f"round {name}: {round_steps} optimiser steps into {folder}")
            first_teacher = teacher_steps if teacher == model else 0
            done = train(
                teacher, folder, [f"distill.steps={steps}", f"distill.teacher_steps={first_teacher}"], round_steps
            )
            rec["rounds"][name] = {**rec["rounds"].get(name, {}), **done}
            save(out, rec)
        teacher, teacher_steps = folder, steps


def distil_consistency(
    model: Path, out: Path, rec: dict, optimizer_steps: int, first: int, chain: tuple[int, ...], train
) -> None:
    """One consistency run on the DDIM-`first` grid into OUT/cd, its default sampler at chain[0] steps; its
    cost in rec["rounds"] as a progressive round's."""
    folder, name = out / "cd", f"consistency DDIM-{first}"
    if name in rec["rounds"] and (folder / "dakter.json").is_file():
        return
    log(f"{name}: {optimizer_steps} optimiser steps into {folder}")
    settings = ["distill.method=consistency", f"distill.steps={chain[0]}", f"distill.teacher_steps={first}"]
    rec["rounds"][name] = train(model, folder, settings, optimizer_steps)
    save(out, rec)


def points(
    model: Path, out: Path, first: int, chain: tuple[int, ...], method: str = "progressive", baselines: bool = True
) -> dict[str, tuple[Path, SamplingConfig]]:
    p = {}
    if baselines:
        p = {
            "ddim-50": (model, SamplingConfig(sampler="ddim", steps=50)),
            "dpmsolver++-20": (model, SamplingConfig(sampler="dpmsolver++", steps=20)),
            # the project's DDIM at the first teacher's steps (diffusers' trailing grid, within a timestep of the
            # distillation grid the first round's teacher steps on)
            f"ddim-{first}": (model, SamplingConfig(sampler="ddim", steps=first)),
        }
    for steps in chain:
        if method == "consistency":  # one model, sampled at each step count on its grid
            p[f"consistency-{steps}"] = (out / "cd", SamplingConfig(sampler="distilled", steps=steps))
        else:
            p[f"distilled-{steps}"] = (out / f"m{steps}", SamplingConfig(sampler="distilled", steps=steps))
    return p


def expected_calibration_error(q: np.ndarray, judged: np.ndarray, bins: int = 15) -> float:
    """ECE of the soft labels' max-probability against agreement with the judge's segmentation, per pixel.
    q: (N, K, H, W) probabilities; judged: (N, H, W) class ids."""
    confidence = q.max(axis=1).ravel()
    correct = (q.argmax(axis=1) == judged).ravel().astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


def score(
    model: Path,
    out: Path,
    judge: Path,
    rec: dict,
    pairs: int,
    first: int,
    chain: tuple[int, ...],
    method: str = "progressive",
    baselines: bool = True,
    beside: Path | None = None,
) -> None:
    from dakter_scale.student.evaluate import segment
    from dakter_scale.student.models import load_student
    from dakter_scale.study.quality import generation_quality, read_generated
    from dakter_scale.synth import run as synth_run

    cfg = load_config(model / "config.yaml")
    for name, (folder, sampling) in points(model, out, first, chain, method, baselines).items():
        if name in rec["points"]:
            continue
        url = str(out / "sets" / name)
        log(f"{name}: {pairs} pairs into {url}")
        wall0 = time.perf_counter()
        summary = synth_run.synthesize(
            str(folder),
            url,
            SynthesisConfig(n=pairs, samples_per_shard=50, batch_size=25, seed=11, threads_per_actor=1),
            sampling,
            progress=False,
            use_ray=False,
        )
        seconds = time.perf_counter() - wall0
        if not summary.ok:
            raise SystemExit(f"{name}: synthesis failed: {summary.failed}")
        quality = generation_quality(cfg, url, str(judge), n=pairs)
        images, q = read_generated(url, pairs)
        segmenter, _ = load_student(str(judge))
        judged = segment(segmenter, images, 32).numpy()
        rec["points"][name] = {
            "evaluations_per_pair": sampling.steps,
            "model": str(folder),
            "pairs_per_second": pairs / seconds if summary.pairs_written == pairs else None,
            "seconds": seconds,
            "ece": expected_calibration_error(q, judged),
            **quality,
        }
        save(out, rec)
        write_markdown(out, rec, beside, model_classes(model, judge))


def rarest_class(points: dict) -> tuple[int, float] | None:
    """(index, real share) of the class with the smallest nonzero real share, from the first point that
    recorded the real class fractions: the class a sampler loses first (progressive distillation erases it)."""
    real = next((p["class_fractions_real"] for p in points.values() if p.get("class_fractions_real")), None)
    shares = [(v, k) for k, v in enumerate(real or []) if v > 0]
    return (min(shares)[1], min(shares)[0]) if shares else None


def model_classes(*folders: Path | None) -> list[str] | None:
    """The class names of the first folder that records them: a generator's dakter.json, a student's student.json."""
    for folder in folders:
        for name in ("dakter.json", "student.json"):
            path = None if folder is None else folder / name
            if path is not None and path.is_file() and json.loads(path.read_text()).get("classes"):
                return list(json.loads(path.read_text())["classes"])
    return None


def write_markdown(out: Path, rec: dict, beside: Path | None = None, classes: list[str] | None = None) -> None:
    """frontier.md: the points and rounds of rec, then those of the run in `beside` (named "DIR: point").
    The rarest real class's share is named from `classes` (else by its index)."""
    if beside is not None:
        other = record(beside)
        rec = {
            "points": {**rec["points"], **{f"{beside.name}: {k}": v for k, v in other["points"].items()}},
            "rounds": {**rec["rounds"], **{f"{beside.name}: {k}": v for k, v in other["rounds"].items()}},
        }
    rare = rarest_class(rec["points"])
    rare_header = ""
    if rare is not None:
        k, real = rare
        name = classes[k] if classes and k < len(classes) else f"class {k}"
        rare_header = f" {name} share % (real {100 * real:.2f}) |"
    lines = [
        "| point | NFE | label mIoU | pixel agreement | class-fraction TV |"
        + rare_header
        + " mean max-prob | ECE | ENL (real) | histogram TV | pairs/s |",
        "|---|---|---|---|---|" + ("---|" if rare_header else "") + "---|---|---|---|---|",
    ]
    for name, p in rec["points"].items():
        hist = p.get("histogram_distance", {})
        hist_tv = hist.get("tv") if isinstance(hist, dict) else hist
        pps = p["pairs_per_second"]
        generated = p.get("class_fractions_generated")
        rare_cell = ""
        if rare is not None:
            rare_cell = f" {100 * generated[rare[0]]:.2f} |" if generated else " - |"
        lines.append(
            f"| {name} | {p['evaluations_per_pair']} | {p['label_alignment']['miou']:.2f} | "
            f"{p['label_alignment']['pixel_agreement']:.3f} | {p['class_fraction_tv']:.3f} |{rare_cell} {p['mean_confidence']:.3f} | "
            f"{p['ece']:.3f} | {p['enl_generated']:.2f} ({p.get('enl_real', float('nan')):.2f}) | "
            f"{hist_tv if hist_tv is None else round(float(hist_tv), 3)} | {'-' if pps is None else f'{pps:.2f}'} |"
        )
    lines += ["", "| round | optimiser steps | batch | CPU s | wall s |", "|---|---|---|---|---|"]
    for name, r in rec["rounds"].items():
        resumed = r.get("resumed_at_step", 0)
        part = f" (steps {resumed}-{r['optimizer_steps']} only: resumed)" if resumed else ""
        lines.append(
            f"| {name} | {r['optimizer_steps']} | {r['batch_size']} | {r['cpu_seconds']:.0f}{part} | {r['wall_seconds']:.0f}{part} |"
        )
    (out / "frontier.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", type=Path, help="the undistilled generator's folder (only read; required unless --markdown-only)"
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--judge", type=Path, help="a real-only student folder (default: train one in OUT/judge)")
    p.add_argument("--judge-steps", type=int, default=600)
    p.add_argument(
        "--method",
        choices=("progressive", "consistency"),
        default="progressive",
        help="progressive: a chain of rounds; consistency: one run of --round-steps optimiser steps, sampled at every --chain step count",
    )
    p.add_argument(
        "--round-steps",
        type=int,
        default=400,
        help="optimiser steps per distillation round (consistency: of its one run)",
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--pairs", type=int, default=200, help="pairs per sampler point")
    p.add_argument("--teacher-steps", type=int, default=TEACHER_STEPS, help="the DDIM steps the first round halves")
    p.add_argument(
        "--chain",
        help="the distilled points: progressive, each half the one before (default 8,4,2,1); consistency, the step "
        "counts its one model is sampled at, each on the --teacher-steps grid, the first its default (default 4,2,1)",
    )
    p.add_argument(
        "--beside",
        type=Path,
        help="another run's OUT (its frontier.json) listed in this run's frontier.md; the undistilled samplers are then not measured again",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a distill.* setting for every round (repeatable), e.g. distill.class_balance=0.5; recorded in "
        "frontier.json. Give a new --out: a finished round is not redone with other settings",
    )
    p.add_argument(
        "--markdown-only",
        action="store_true",
        help="rewrite OUT/frontier.md from OUT/frontier.json (and --beside's) and stop: nothing is measured; the "
        "class names come from --model or --judge when given",
    )
    args = p.parse_args()
    if args.beside is not None and not (args.beside / "frontier.json").is_file():
        raise SystemExit(f"--beside {args.beside}: no frontier.json there")
    if args.markdown_only:
        if not (args.out / "frontier.json").is_file():
            raise SystemExit(f"--markdown-only: no frontier.json in --out {args.out}")
        write_markdown(args.out, record(args.out), args.beside, model_classes(args.model, args.judge))
        log(f"rewritten: {args.out / 'frontier.md'}")
        return
    if args.model is None:
        raise SystemExit("--model is required (the undistilled generator's folder) unless --markdown-only")
    consistency = args.method == "consistency"
    chain = (
        tuple(int(n) for n in args.chain.split(",")) if args.chain else (CONSISTENCY_CHAIN if consistency else CHAIN)
    )
    if consistency:
        from dakter_scale.core.distill import distill_timesteps, steps_on_grid
        from dakter_scale.diffusion.model import num_train_timesteps

        num_train = num_train_timesteps(args.model)
        on_grid = steps_on_grid(num_train, distill_timesteps(num_train, args.teacher_steps))
        if not set(chain) <= set(on_grid):
            raise SystemExit(
                f"--chain {args.chain}: a consistency model samples at step counts on the --teacher-steps {args.teacher_steps} grid: {on_grid}"
            )
    elif [args.teacher_steps // 2**k for k in range(1, len(chain) + 1)] != list(chain):
        raise SystemExit(
            f"--chain {args.chain}: each point halves the one before, from --teacher-steps {args.teacher_steps}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    rec = record(args.out)
    rec["command"] = " ".join(sys.argv)
    if any(not s.startswith("distill.") or "=" not in s for s in args.set):
        raise SystemExit(f"--set {args.set}: each is distill.KEY=VALUE")
    if rec.setdefault("settings", args.set) != args.set:
        raise SystemExit(f"--set {args.set}: {args.out} was distilled with {rec['settings']}; give a new --out")
    save(args.out, rec)
    judge = args.judge or train_judge(args.model, args.out, args.judge_steps)
    distil = distil_consistency if consistency else distil_chain

    def train(teacher: Path, folder: Path, settings: list[str], steps: int) -> dict:
        return timed_distill(args.model, teacher, folder, settings + args.set, steps, args.lr, args.batch_size)

    distil(args.model, args.out, rec, args.round_steps, args.teacher_steps, chain, train)
    score(
        args.model,
        args.out,
        judge,
        rec,
        args.pairs,
        args.teacher_steps,
        chain,
        args.method,
        baselines=args.beside is None,
        beside=args.beside,
    )
    write_markdown(args.out, rec, args.beside, model_classes(args.model, judge))
    log(f"done: {args.out / 'frontier.md'}")


if __name__ == "__main__":
    main()
