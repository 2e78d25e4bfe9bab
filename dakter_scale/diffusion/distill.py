"""Progressive distillation of the joint sampler (Salimans & Ho 2022): a model folder whose sampler takes
N steps, from a teacher folder's sampler at 2N, 4N, ... steps, one halving per round.

A round trains a student network with the teacher's architecture, started from the teacher's weights,
to take in ONE deterministic DDIM step what the teacher takes in two, on the real training patches
(Algorithm 2): z_t is a training pair [x, b (2 onehot - 1)] forward-noised to a level t of the
student's grid (core.distill.distill_timesteps), the teacher steps t -> t' -> t'' (diffusion/sample.py
``grid_step``, the same function the sampler runs), and core.distill.progressive_target gives the clean
estimate x~ whose single step lands on the teacher's z_t''. The student learns x~ in the teacher's own
parameterisation and loss (core.schedule.joint_denoising_loss with z0 = x~: v for the image, x0 for the
label channels, so the image's loss is the "SNR + 1" weighting of the paper). The round's next teacher is
the student's EMA. The first round's teacher is the undistilled model's DDIM on the 2N-step grid, x0_hat
clipped at every step, as the project's DDIM sampler clips; a distilled sampler clips at its last step
only (sample.py's module docstring says why).

Training runs in the diffusion trainer's pieces: the Accelerator, ``training.run_steps`` (learning-rate
schedule, clipping, logging, progress, checkpoints, ``max_minutes``), the EMA, the per-step re-seeding
and the data stream of diffusion/train.py, so one process or many, ``--resume latest`` and a time budget
work as there. Each round is its own folder: OUT/rounds/steps-NNNN for every round but the last, OUT for
the last; a resumed run skips the rounds whose folder is finished for its teacher.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from dakter_scale.cards import write_model_card
from dakter_scale.config import Config, save_config, to_dict
from dakter_scale.core.distill import distill_timesteps, halvings, next_alpha_bar, progressive_target
from dakter_scale.core.joint import one_hot, pack
from dakter_scale.core.schedule import add_noise, eps_from_x0, joint_denoising_loss
from dakter_scale.data.real import open_source, patch_dataset
from dakter_scale.data.storage import redact_url
from dakter_scale.diffusion.model import (
    DISTILLED,
    INFO_FILE,
    check_model_folder,
    distilled_timesteps,
    load_model_folder,
    model_hash,
    save_model_folder,
)
from dakter_scale.diffusion.sample import grid_schedule, grid_step
from dakter_scale.diffusion.train import data_layout, patch_batches, prepare_training
from dakter_scale.errors import UserError
from dakter_scale.training import (
    LoopSpec,
    accumulate,
    make_accelerator,
    resolve_resume,
    run_steps,
    save_checkpoint,
    setup_logging,
    write_rank_report,
    write_train_record,
)

log = logging.getLogger("dakter_scale")

METHOD = "progressive"


class DistillError(UserError, ValueError):
    """Distillation settings that cannot be used; the message names the flag."""


def plan_rounds(teacher_info: dict, num_train_timesteps: int, steps: int, teacher_steps: int) -> tuple[int, list[int]]:
    """(the teacher's steps, the step count of each round) for a teacher folder's dakter.json: a distilled
    teacher's steps are its own (teacher_steps 0 or equal), an undistilled one's teacher_steps (0: 2 *
    steps). Raises DistillError naming --steps or --teacher-steps."""
    own = distilled_timesteps(teacher_info)
    if own is not None:
        if teacher_steps not in (0, len(own)):
            raise DistillError(
                f"--teacher-steps {teacher_steps}: the teacher is distilled for {len(own)} steps, its only sampler"
            )
        teacher_steps = len(own)
    teacher_steps = teacher_steps or 2 * steps
    if teacher_steps > num_train_timesteps:
        raise DistillError(
            f"--teacher-steps {teacher_steps} is more than the model's {num_train_timesteps} training timesteps"
        )
    try:
        return teacher_steps, halvings(teacher_steps, steps)
    except ValueError:
        raise DistillError(
            f"--steps {steps}: the teacher's {teacher_steps} steps (--teacher-steps) must be {steps} times a power of 2, "
            "each round halving them"
        ) from None


def _round_folder(out: Path, steps: int, last: bool) -> Path:
    return out if last else out / "rounds" / f"steps-{steps:04d}"


def _finished(folder: Path, teacher_hash: str, steps: int) -> bool:
    """A round's folder holds its distilled model for this teacher and step count."""
    try:
        record = json.loads((check_model_folder(folder) / INFO_FILE).read_text()).get(DISTILLED) or {}
    except (UserError, OSError, ValueError):
        return False
    return record.get("teacher", {}).get("model_hash") == teacher_hash and record.get("evaluations_per_pair") == steps


def distill(
    cfg: Config,
    model_dir: str | Path,
    out: str | Path,
    resume: str | None = None,
    progress: bool = True,
    accelerator=None,
) -> Path:
    """Distil the sampler of the folder `model_dir` to cfg.distill.steps steps into the folder `out`.
    Returns `out`. resume: "latest" (skip finished rounds, continue the current one from its newest
    checkpoint) or a checkpoint folder of the first unfinished round."""
    out, model_dir = Path(out), Path(check_model_folder(model_dir))
    d = cfg.distill
    accelerator = accelerator or make_accelerator(d.mixed_precision)
    setup_logging(accelerator.is_main_process)
    info = json.loads((model_dir / INFO_FILE).read_text())
    if int(info["resolution"]) != cfg.data.resolution:
        raise DistillError(
            f"data.resolution {cfg.data.resolution}: the teacher {model_dir} was trained at {info['resolution']} px"
        )
    num_train = int(json.loads((model_dir / "scheduler/scheduler_config.json").read_text())["num_train_timesteps"])
    teacher_steps, rounds = plan_rounds(info, num_train, d.steps, d.teacher_steps)
    log.info("distilling %s: %s steps", model_dir, " -> ".join(str(n) for n in [teacher_steps] + rounds))
    teacher = model_dir
    for k, steps in enumerate(rounds):
        folder = _round_folder(out, steps, k == len(rounds) - 1)
        if resume == "latest" and _finished(folder, model_hash(teacher), steps):
            log.info("round %d (%d -> %d steps) already finished in %s", k + 1, 2 * steps, steps, folder)
        else:
            distill_round(cfg, teacher, folder, steps, resume, progress, accelerator)
            resume = "latest" if resume else None  # a checkpoint path belongs to the first round run
        teacher = folder
    return out


def distill_round(
    cfg: Config, teacher_dir: Path, out: Path, steps: int, resume: str | None, progress: bool, accelerator
) -> Path:
    """One round: a student of `steps` steps from the teacher folder's sampler at 2 * steps, written to
    the model folder `out` (checkpoints in OUT/checkpoints)."""
    d = cfg.distill
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    checkpoint = resolve_resume(out, resume)
    teacher = load_model_folder(teacher_dir, device)
    teacher.unet.requires_grad_(False)
    grid = grid_schedule(teacher, 2 * steps)  # the teacher's sampler: its own grid, or DDIM on the 2N grid
    timesteps = grid.timesteps.tolist()
    num_train = teacher.scheduler.config.num_train_timesteps
    assert timesteps[::2] == distill_timesteps(num_train, steps), "the rounds' grids nest"
    alpha_bar = teacher.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    student_t = torch.tensor(timesteps[::2], device=device)
    middle_t = torch.tensor(timesteps[1::2], device=device)
    end_alpha_bar = next_alpha_bar(alpha_bar.cpu(), timesteps[::2]).to(device=device, dtype=torch.float32)
    precision = "bf16" if accelerator.mixed_precision == "bf16" else "fp32"

    if accelerator.is_main_process:
        save_config(cfg, out)
    student = copy.deepcopy(teacher.unet).requires_grad_(True).train()
    layout = data_layout(d, world)
    student, optimizer, ema, start, total = prepare_training(
        accelerator, student, d, 0.0, layout, checkpoint, resume, out
    )

    source = open_source(cfg.data.spec)
    if source.num_classes != teacher.num_classes:
        raise DistillError(
            f"data.spec {redact_url(cfg.data.spec)} has {source.num_classes} classes, the teacher {teacher.num_classes}"
        )
    dataset = patch_dataset(source, cfg.data, "train", seed=d.seed)
    accumulation = d.gradient_accumulation_steps
    batches = patch_batches(dataset, d.batch_size, d.seed, rank, world, start * accumulation, d.num_workers, device)
    b, k = teacher.b, teacher.num_classes
    label_weight = cfg.diffusion.label_loss_weight

    def loss_of(x: torch.Tensor, mask: torch.Tensor):
        z0 = pack(x, one_hot(mask, k), b)
        j = torch.randint(0, steps, (z0.shape[0],), device=device)  # a level of the student's grid
        t, t_mid = student_t[j], middle_t[j]
        a_t, a_mid, a_end = alpha_bar[t], alpha_bar[t_mid], end_alpha_bar[j]
        z_t = add_noise(z0, torch.randn_like(z0), a_t)
        with torch.no_grad():  # Algorithm 2: the teacher's two steps, then the one-step target
            z_mid, _ = grid_step(teacher, z_t, t, a_t, a_mid, grid.clip_every_step, True, precision)
            z_end, _ = grid_step(teacher, z_mid, t_mid, a_mid, a_end, grid.clip_every_step, True, precision)
            x_tilde = progressive_target(z_t, z_end, a_t, a_end)
            eps_tilde = eps_from_x0(x_tilde, z_t, a_t)
        with accelerator.autocast():
            output = student(z_t, t).sample
        return joint_denoising_loss(
            output,
            x_tilde,
            eps_tilde,
            z_t,
            a_t,
            teacher.prediction_type,
            b,
            label_loss_weight=label_weight,
            label_prediction_type=teacher.label_prediction_type,
        )

    def step(i: int):
        return accumulate(accelerator, student, batches, accumulation, d.seed, rank, i, device, loss_of)

    spec = LoopSpec(
        f"distill {2 * steps}->{steps}",
        d.max_steps,
        d.max_minutes,
        d.lr,
        d.warmup_steps,
        d.lr_schedule,
        0.0,
        d.max_grad_norm,
        d.log_every,
        d.checkpoint_every,
    )
    result = run_steps(
        accelerator,
        spec,
        start,
        optimizer,
        student.parameters(),
        step,
        after_step=lambda i: ema.update(accelerator.unwrap_model(student)),
        checkpoint=lambda done, extra: save_checkpoint(
            accelerator,
            out,
            done,
            d.checkpoints_total_limit,
            student,
            optimizer,
            ema,
            extra={"layout": layout, **extra},
        ),
        total=total,
        progress=progress,
    )
    getattr(batches, "_shutdown_workers", lambda: None)()
    write_rank_report(accelerator, out, student)
    write_train_record(accelerator, out, result)
    if accelerator.is_main_process:
        final = copy.deepcopy(teacher.unet)
        ema.copy_to(final)
        info = distilled_info(teacher.info, teacher_dir, steps, grid.clip_every_step, cfg, result)
        save_model_folder(out, final, teacher.scheduler, info)
        write_model_card(out)
        log.info(
            "distilled model folder (%d -> %d steps, %d optimiser steps) written to %s",
            2 * steps,
            steps,
            result.steps,
            out,
        )
    accelerator.wait_for_everyone()
    return out


def distilled_info(
    teacher_info: dict, teacher_dir: Path, steps: int, clip_every_step: bool, cfg: Config, result
) -> dict:
    """The student's dakter.json: the teacher's (b, classes, statistics...) with its sampling settings and
    the "distilled" record: method, evaluations per pair, its timesteps, the teacher (path, model_hash,
    sampler) and every round of the chain so far. Nothing in it depends on the wall clock."""
    d = cfg.distill
    num_train = int(json.loads((teacher_dir / "scheduler/scheduler_config.json").read_text())["num_train_timesteps"])
    before = teacher_info.get(DISTILLED) or {}
    teacher_hash = model_hash(teacher_dir)
    rounds = list(before.get("rounds", [])) + [
        {
            "from_steps": 2 * steps,
            "to_steps": steps,
            "teacher_model_hash": teacher_hash,
            "optimizer_steps": int(result.steps),
            "batch_size": d.batch_size,
            "lr": d.lr,
            "ema_decay": d.ema_decay,
            "last_loss": (result.last_log or {}).get("loss"),
        }
    ]
    info = {k: v for k, v in teacher_info.items() if k != DISTILLED}
    info["sampling"] = dict(to_dict(cfg.sampling), sampler=DISTILLED, steps=steps, eta=0.0)
    info[DISTILLED] = {
        "method": METHOD,
        "evaluations_per_pair": steps,
        "sampler": DISTILLED,
        "timesteps": distill_timesteps(num_train, steps),
        "clip": "last step",
        "teacher": {
            "path": redact_url(str(teacher_dir)),
            "model_hash": teacher_hash,
            "sampler": DISTILLED if before else "ddim",
            "steps": 2 * steps,
            "clip": "every step" if clip_every_step else "last step",
        },
        "undistilled_model_hash": before.get("undistilled_model_hash", teacher_hash),
        "rounds": rounds,
        "data_spec": redact_url(cfg.data.spec),
    }
    return info
