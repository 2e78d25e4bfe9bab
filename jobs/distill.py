"""Distil a model folder's sampler into a model folder whose own sampler takes --steps network evaluations per pair.

    python jobs/distill.py --model runs/model --out runs/model_4 --steps 4
    python jobs/distill.py --model runs/model --out runs/model_1 --steps 1 --teacher-steps 16      (4 rounds: 16 -> 8 -> 4 -> 2 -> 1)
    python jobs/distill.py --model runs/model_4 --out runs/model_2 --steps 2                      (one more round from a distilled folder)
    accelerate launch --num_processes 8 jobs/distill.py --model runs/model --out runs/model_4 --steps 4
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 jobs/distill.py ...                                (2 CPU processes, gloo)
    python jobs/distill.py ... distill.checkpoint_every=200 --resume latest                         (continue after a stop)
    python jobs/distill.py --model runs/model --out runs/model_cd --method consistency --steps 4 --teacher-steps 32 --max-steps 1200

--method progressive (the default). Progressive distillation (Salimans & Ho 2022): each round trains a
student with the teacher's architecture, started from the teacher's weights, to take in one DDIM step what
the teacher's sampler takes in two, on the teacher's training data, in the teacher's own parameterisation
(e.g. image as v, the b-scaled label channels as x0). The first teacher is the undistilled model's DDIM at --teacher-steps
(default 2 x --steps: one round); a distilled --model is its own sampler. Every round but the last is kept
in OUT/rounds/steps-NNNN.

--method consistency. Consistency distillation (Song et al. 2023): one run of --max-steps optimiser steps
trains a consistency model, started from the teacher's weights, on the grid of the undistilled --model's
DDIM at --teacher-steps (default 2 x --steps; a multiple of --steps): the student's clean estimate at a
level must match its target network's (an EMA, distill.target_ema_decay) one teacher DDIM step later. It
samples by multistep consistency sampling at --steps, or at any step count whose grid lies on that grid
(jobs/synthesize.py --sampler distilled --steps N).

The output is a model folder that jobs/synthesize.py reads as any other: its dakter.json records the teacher
(path, model_hash), the method, the evaluations per pair and the rounds, and fixes the sampler ("distilled"
at --steps; any other --sampler, or --steps the folder cannot sample at, is refused). Without --config the
teacher folder's config.yaml is the base config (its data and resolution); distill.* keys set the training
(--print-config lists them).
"""

from __future__ import annotations

from pathlib import Path

from dakter_scale.cli import FlagError, check_flag, config_from, parser, progress_enabled, run, script, training_flags
from dakter_scale.config import DISTILL_METHODS


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="teacher model folder (jobs/train_diffusion.py, or a distilled one)")
    p.add_argument("--out", required=True, help="distilled model folder to write (checkpoints go to OUT/checkpoints)")
    p.add_argument(
        "--steps",
        type=int,
        help="the distilled sampler's steps = network evaluations per pair (distill.steps, default 4)",
    )
    p.add_argument(
        "--teacher-steps",
        type=int,
        help="DDIM steps of an undistilled teacher: progressive, --steps times a power of 2, one round per halving; consistency, the grid it learns on, a multiple of --steps (distill.teacher_steps; default 2 x --steps)",
    )
    p.add_argument(
        "--method",
        help="progressive (rounds halving the steps) or consistency (one run on the --teacher-steps grid) (distill.method; default progressive)",
    )
    p.add_argument("--data", help="training data spec (overrides data.spec; default the teacher's)")
    p.add_argument(
        "--max-steps",
        type=int,
        help="optimiser steps per round, or of the consistency run (overrides distill.max_steps; default the config's, without --config the teacher folder's, else 2000)",
    )
    training_flags(
        p,
        "'latest' (skip finished rounds, continue from the newest checkpoint; none found: start fresh) or a checkpoint folder",
    )
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.diffusion.distill import distill
        from dakter_scale.diffusion.model import check_model_folder
        from dakter_scale.training import finish, tracked_accelerator

        check_flag("--steps", args.steps, 1)
        check_flag("--teacher-steps", args.teacher_steps, 2)
        check_flag("--max-steps", args.max_steps, 1)
        if args.method is not None and args.method not in DISTILL_METHODS:
            raise FlagError(f"--method {args.method}: expected {' or '.join(DISTILL_METHODS)}")
        teacher = check_model_folder(args.model)
        if args.config is None and (Path(teacher) / "config.yaml").is_file():
            args.config = str(Path(teacher) / "config.yaml")
        cfg = config_from(
            args,
            {
                "data.spec": args.data,
                "distill.steps": args.steps,
                "distill.teacher_steps": args.teacher_steps,
                "distill.max_steps": args.max_steps,
                "distill.method": args.method,
            },
        )
        accelerator = tracked_accelerator(cfg.distill.mixed_precision, args.report_to, args.out)
        distill(cfg, teacher, args.out, resume=args.resume, progress=progress_enabled(), accelerator=accelerator)
        finish(accelerator)
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
