"""Distillation of the joint sampler: a model folder whose sampler takes N steps, from a teacher folder's
sampler at more, by progressive distillation (Salimans & Ho 2022; distill.method progressive, one halving
per round) or consistency distillation (Song et al. 2023; distill.method consistency, one run).

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

Consistency distillation (Algorithm 2 of Song et al. 2023) trains one student, started from the teacher's
weights, on the teacher's grid of K = distill.teacher_steps levels (core.distill.distill_timesteps): z_t is
a training pair forward-noised to a level t_n of that grid, the teacher's one DDIM step (``grid_step``, x0
clipped as the project's DDIM clips it: the ODE solver Phi) takes it to the next level t_{n+1}, and the
target is the target network's clean estimate there (core.distill.consistency_target; at the clean end,
the point itself). The consistency function is the network's own clean estimate in the teacher's
parameterisation (core/distill.py says why no skip/out scalings are needed). The target network is an
EMA of the student (distill.target_ema_decay, Song et al.'s mu), checkpointed beside the usual EMA, which
is what the folder holds. The folder samples by multistep consistency sampling (diffusion/sample.py) at
distill.steps, or at any step count whose grid lies on the K-level grid (one model, several points).

The distance is the squared L2 of the clean estimates, per modality and weighted as the teacher's loss
(core.schedule.joint_denoising_loss with the "sample" parameterisation: label_loss_weight as trained),
lambda(t) = 1 as in Song et al.'s CD runs. LPIPS, the paper's best-scoring metric, needs downloaded weights
and means nothing for the soft-label channels; the pseudo-Huber distance (Song & Dhariwal 2023) was tuned
for consistency *training* without a teacher, and brings a scale c that would need tuning per modality;
squared L2 is the teacher's own objective in x0 and has no setting.

With distill.class_balance = p > 0 either method weights each pixel's squared error (every channel) by
its real class's share f_c of the teacher's training pixels as f_c^-p, normalised to mean 1 over those
pixels (``class_pixel_weights``). Matching the teacher's output alone loses the rarest class a little
more with every halving (docs/synthesis.md, "Distilled samplers": ship pixels 0.15 % at the DDIM-32
teacher, 0.03 % at 4 steps); the weight makes its pixels count as much as their class matters, the
class-balanced loss of segmentation.

Training runs in the diffusion trainer's pieces: the Accelerator, ``training.run_steps`` (learning-rate
schedule, clipping, logging, progress, checkpoints, ``max_minutes``), the EMA, the per-step re-seeding
and the data stream of diffusion/train.py, so one process or many, ``--resume latest`` and a time budget
work as there. Each progressive round is its own folder: OUT/rounds/steps-NNNN for every round but the
last, OUT for the last; a resumed run skips the rounds whose folder is finished for its teacher. A
consistency run is one folder, OUT, skipped in the same way when finished.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from dakter_scale.cards import write_model_card
from dakter_scale.config import Config, save_config, to_dict
from dakter_scale.core.distill import (
    consistency_target,
    distill_timesteps,
    halvings,
    next_alpha_bar,
    progressive_target,
    steps_on_grid,
)
from dakter_scale.core.joint import one_hot, pack
from dakter_scale.core.schedule import add_noise, eps_from_x0, joint_denoising_loss, joint_to_x0_eps
from dakter_scale.core.steps import EMA
from dakter_scale.data.real import open_source, patch_dataset
from dakter_scale.data.storage import redact_url
from dakter_scale.diffusion.model import (
    CONSISTENCY,
    DISTILLED,
    INFO_FILE,
    PROGRESSIVE,
    JointDiffusion,
    check_model_folder,
    distilled_method,
    distilled_timesteps,
    load_model_folder,
    model_hash,
    save_model_folder,
)
from dakter_scale.diffusion.sample import clean_estimate, grid_schedule, grid_step
from dakter_scale.diffusion.train import data_layout, patch_batches, prepare_training, train_steps
from dakter_scale.errors import UserError
from dakter_scale.training import (
    make_accelerator,
    resolve_resume,
    setup_logging,
    start_trackers,
)

log = logging.getLogger("dakter_scale")


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


def _finished(
    folder: Path, teacher_hash: str, steps: int, method: str = PROGRESSIVE, teacher_steps: int | None = None
) -> bool:
    """A round's folder holds its distilled model for this teacher, step count and method (and, where
    given, the teacher's steps)."""
    try:
        record = json.loads((check_model_folder(folder) / INFO_FILE).read_text()).get(DISTILLED) or {}
    except (UserError, OSError, ValueError):
        return False
    return (
        record.get("teacher", {}).get("model_hash") == teacher_hash
        and record.get("evaluations_per_pair") == steps
        and record.get("method", PROGRESSIVE) == method
        and teacher_steps in (None, record.get("teacher", {}).get("steps"))
    )


def distill(
    cfg: Config,
    model_dir: str | Path,
    out: str | Path,
    resume: str | None = None,
    progress: bool = True,
    accelerator=None,
) -> Path:
    """Distil the sampler of the folder `model_dir` to cfg.distill.steps steps into the folder `out`, by
    cfg.distill.method. Returns `out`. resume: "latest" (skip finished rounds, continue the current one
    from its newest checkpoint) or a checkpoint folder of the first unfinished round."""
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
    if distilled_method(info) == CONSISTENCY:  # its steps are not DDIM's: no round can halve them
        raise DistillError(
            f"--model {model_dir} is consistency-distilled: it teaches no further distillation; distil its undistilled model"
        )
    if d.method == CONSISTENCY:
        return distill_consistency(cfg, model_dir, info, num_train, out, resume, progress, accelerator)
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


@dataclass
class _Run:
    """A distillation run's student, prepared by _start: the teacher (frozen), the student network (as
    accelerate prepared it), its optimiser and EMA, where it starts, the data stream, and the network
    arithmetic of the teacher's evaluations."""

    teacher: JointDiffusion
    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: EMA
    start: int
    total: int | None
    layout: dict
    batches: Any
    precision: str
    more_emas: dict[str, EMA]


def _start(
    cfg: Config,
    teacher_dir: Path,
    out: Path,
    resume: str | None,
    accelerator,
    more_emas: Callable[[torch.nn.Module], dict[str, EMA]] | None = None,
) -> _Run:
    """Load the teacher and prepare a student started from its weights, restored from a checkpoint of
    `out` where `resume` names one. more_emas(teacher network): further averages of the student's weights
    by name, checkpointed with it (consistency distillation's target network)."""
    d = cfg.distill
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    checkpoint = resolve_resume(out, resume)
    teacher = load_model_folder(teacher_dir, device)
    teacher.unet.requires_grad_(False)
    student = copy.deepcopy(teacher.unet).requires_grad_(True).train()
    averages = more_emas(teacher.unet) if more_emas is not None else {}
    layout = data_layout(d, world)
    student, optimizer, ema, start, total = prepare_training(
        accelerator, student, d, 0.0, layout, checkpoint, resume, out, "distill", averages or None
    )
    if accelerator.is_main_process:  # after the restore: a checkpoint this run cannot continue leaves it as it was
        save_config(cfg, out)
    # --report-to: each round (or the consistency run) is one tracker run, named by its folder
    start_trackers(accelerator, f"distill-{out.name}", {**to_dict(d), "teacher": str(teacher_dir)}, start)
    source = open_source(cfg.data.spec)
    if source.num_classes != teacher.num_classes:
        raise DistillError(
            f"data.spec {redact_url(cfg.data.spec)} has {source.num_classes} classes, the teacher {teacher.num_classes}"
        )
    dataset = patch_dataset(source, cfg.data, "train", seed=d.seed)
    accumulation = d.gradient_accumulation_steps
    batches = patch_batches(dataset, d.batch_size, d.seed, rank, world, start * accumulation, d.num_workers, device)
    precision = "bf16" if accelerator.mixed_precision == "bf16" else "fp32"
    return _Run(teacher, student, optimizer, ema, start, total, layout, batches, precision, averages)


def _train(
    cfg: Config,
    run: _Run,
    out: Path,
    name: str,
    loss_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]],
    progress: bool,
    accelerator,
    after_update: Callable[[torch.nn.Module], None] | None = None,
):
    """Train run.student on loss_of(x, mask) for distill.max_steps optimiser steps (or distill.max_minutes)
    in train.train_steps at distill.lr_schedule (a cosine decays to 0), the EMAs updated after every step
    (then after_update(the student)), with its checkpoints in OUT/checkpoints and its records in OUT/logs.
    Returns run_steps' LoopResult."""
    return train_steps(
        accelerator,
        cfg.distill,
        out,
        name,
        cfg.distill.lr_schedule,
        0.0,
        run.student,
        run.optimizer,
        run.ema,
        run.start,
        run.total,
        run.layout,
        run.batches,
        loss_of,
        progress,
        more_emas=run.more_emas,
        after_update=after_update,
    )


def _write_folder(run: _Run, out: Path, info: dict) -> None:
    """The distilled model folder (main process only): the student's EMA weights, the teacher's scheduler,
    `info` as its dakter.json, a card."""
    final = copy.deepcopy(run.teacher.unet)
    run.ema.copy_to(final)
    save_model_folder(out, final, run.teacher.scheduler, info)
    write_model_card(out)


def class_pixel_weights(info: dict, power: float, device) -> torch.Tensor | None:
    """(K,) weights f_c^-power of the classes' shares f_c of the training pixels (dakter.json's train_stats),
    normalised so that sum_c f_c w_c = 1; None at power 0. A class absent from the training data gets
    weight 0 (it has no pixels to weight)."""
    if power <= 0:
        return None
    f = torch.tensor(info["train_stats"]["class_fractions"], dtype=torch.float64)
    w = torch.where(f > 0, f.clamp_min(1e-12) ** -power, torch.zeros_like(f))
    return (w / (f * w).sum()).to(device=device, dtype=torch.float32)


def distill_round(
    cfg: Config, teacher_dir: Path, out: Path, steps: int, resume: str | None, progress: bool, accelerator
) -> Path:
    """One round: a student of `steps` steps from the teacher folder's sampler at 2 * steps, written to
    the model folder `out` (checkpoints in OUT/checkpoints)."""
    device = accelerator.device
    run = _start(cfg, teacher_dir, out, resume, accelerator)
    teacher = run.teacher
    grid = grid_schedule(teacher, 2 * steps)  # the teacher's sampler: its own grid, or DDIM on the 2N grid
    timesteps = grid.timesteps.tolist()
    num_train = teacher.scheduler.config.num_train_timesteps
    assert timesteps[::2] == distill_timesteps(num_train, steps), "the rounds' grids nest"
    alpha_bar = teacher.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    student_t = torch.tensor(timesteps[::2], device=device)
    middle_t = torch.tensor(timesteps[1::2], device=device)
    end_alpha_bar = next_alpha_bar(alpha_bar.cpu(), timesteps[::2]).to(device=device, dtype=torch.float32)
    b, k, precision = teacher.b, teacher.num_classes, run.precision
    label_weight = cfg.diffusion.label_loss_weight
    class_weight = class_pixel_weights(teacher.info, cfg.distill.class_balance, device)

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
            output = run.student(z_t, t).sample
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
            pixel_weight=None if class_weight is None else class_weight[mask][:, None],
        )

    result = _train(cfg, run, out, f"distill {2 * steps}->{steps}", loss_of, progress, accelerator)
    if accelerator.is_main_process:
        _write_folder(run, out, distilled_info(teacher.info, teacher_dir, steps, grid.clip_every_step, cfg, result))
        log.info(
            "distilled model folder (%d -> %d steps, %d optimiser steps) written to %s",
            2 * steps,
            steps,
            result.steps,
            out,
        )
    accelerator.wait_for_everyone()
    return out


def distill_consistency(
    cfg: Config,
    teacher_dir: Path,
    teacher_info: dict,
    num_train: int,
    out: Path,
    resume: str | None,
    progress: bool,
    accelerator,
) -> Path:
    """Consistency distillation (module docstring) of the undistilled folder `teacher_dir`'s DDIM on the
    grid of distill.teacher_steps levels (0: 2 x distill.steps) into the model folder `out`, whose sampler
    takes distill.steps steps. Raises DistillError naming --model, --steps or --teacher-steps."""
    d = cfg.distill
    if distilled_timesteps(teacher_info) is not None:
        raise DistillError(
            f"--model {teacher_dir} is distilled: consistency distillation's teacher is an undistilled model's DDIM "
            "(its ODE solver); pass that model"
        )
    teacher_steps = d.teacher_steps or 2 * d.steps
    if teacher_steps > num_train:
        raise DistillError(f"--teacher-steps {teacher_steps} is more than the model's {num_train} training timesteps")
    grid_levels = distill_timesteps(num_train, teacher_steps)
    if d.steps not in steps_on_grid(num_train, grid_levels):
        raise DistillError(
            f"--steps {d.steps}: a consistency model samples on the grid it learns, and {d.steps} steps are not on "
            f"the --teacher-steps {teacher_steps} grid (make it a multiple of {d.steps})"
        )
    out, device = Path(out), accelerator.device
    if resume == "latest" and _finished(out, model_hash(teacher_dir), d.steps, CONSISTENCY, teacher_steps):
        log.info(
            "consistency distillation (DDIM-%d grid, %d steps) already finished in %s", teacher_steps, d.steps, out
        )
        return out
    log.info("consistency distillation of %s: DDIM-%d grid, sampled at %d steps", teacher_dir, teacher_steps, d.steps)

    # the target network theta-: an EMA of the student without warm-up, from the teacher's weights
    run = _start(
        cfg,
        teacher_dir,
        out,
        resume,
        accelerator,
        more_emas=lambda unet: {"target_ema": EMA(unet, d.target_ema_decay, warmup=False)},
    )
    teacher, target = run.teacher, run.more_emas["target_ema"]
    target_net = copy.deepcopy(teacher.unet).eval()  # frozen: only copied into
    target.copy_to(target_net)
    grid = grid_schedule(teacher, teacher_steps)  # the undistilled model's DDIM, x0 clipped at every step
    alpha_bar = teacher.scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    level_t = grid.timesteps.to(device)
    # the level each step lands on; the clean end's timestep is a stand-in (the boundary replaces its target)
    next_t = torch.tensor(grid_levels[1:] + [0], device=device)
    next_ab = next_alpha_bar(alpha_bar.cpu(), grid_levels).to(device=device, dtype=torch.float32)
    b, k, precision = teacher.b, teacher.num_classes, run.precision
    types = (teacher.prediction_type, teacher.label_prediction_type)
    class_weight = class_pixel_weights(teacher.info, d.class_balance, device)

    def loss_of(x: torch.Tensor, mask: torch.Tensor):
        z0 = pack(x, one_hot(mask, k), b)
        n = torch.randint(0, teacher_steps, (z0.shape[0],), device=device)  # a level of the teacher's grid
        t, t_next = level_t[n], next_t[n]
        a_t, a_next = alpha_bar[t], next_ab[n]
        z_t = add_noise(z0, torch.randn_like(z0), a_t)
        with torch.no_grad():  # Algorithm 2: one step of the teacher's ODE solver, then the target network
            z_next, _ = grid_step(teacher, z_t, t, a_t, a_next, grid.clip_every_step, True, precision)
            x0_next = clean_estimate(teacher, z_next, t_next, alpha_bar[t_next], precision, unet=target_net)
            target_x0 = consistency_target(z_next, x0_next, a_next)
        with accelerator.autocast():
            output = run.student(z_t, t).sample
        x0, _ = joint_to_x0_eps(output.float(), z_t, a_t, *types)
        # the x0 parameterisation on both modalities makes the joint loss the squared L2 of the clean estimates
        return joint_denoising_loss(
            x0,
            target_x0,
            eps_from_x0(target_x0, z_t, a_t),
            z_t,
            a_t,
            "sample",
            b,
            label_loss_weight=cfg.diffusion.label_loss_weight,
            label_prediction_type="sample",
            pixel_weight=None if class_weight is None else class_weight[mask][:, None],
        )

    result = _train(
        cfg,
        run,
        out,
        f"consistency DDIM-{teacher_steps}",
        loss_of,
        progress,
        accelerator,
        after_update=lambda student: target.copy_to(target_net),
    )
    if accelerator.is_main_process:
        _write_folder(run, out, consistency_info(teacher.info, teacher_dir, d.steps, teacher_steps, cfg, result))
        log.info(
            "consistency-distilled model folder (DDIM-%d grid, %d steps, %d optimiser steps) written to %s",
            teacher_steps,
            d.steps,
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
            # only when used, so the plain method's records (and the folders kept by studies) stay as they were
            **({"class_balance": d.class_balance} if d.class_balance > 0 else {}),
            "last_loss": (result.last_log or {}).get("loss"),
        }
    ]
    info = {k: v for k, v in teacher_info.items() if k != DISTILLED}
    info["sampling"] = dict(to_dict(cfg.sampling), sampler=DISTILLED, steps=steps, eta=0.0)
    info[DISTILLED] = {
        "method": PROGRESSIVE,
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


def consistency_info(
    teacher_info: dict, teacher_dir: Path, steps: int, teacher_steps: int, cfg: Config, result
) -> dict:
    """A consistency-distilled folder's dakter.json: distilled_info's, with the method, the grid it was
    trained on ("trained_timesteps", every step count it samples at lies on it), every x0 clipped, and
    its one run as the one entry of "rounds" (from the teacher's steps, with the target network's decay)."""
    num_train = int(json.loads((teacher_dir / "scheduler/scheduler_config.json").read_text())["num_train_timesteps"])
    info = distilled_info(teacher_info, teacher_dir, steps, True, cfg, result)
    record = info[DISTILLED]
    record.update(method=CONSISTENCY, trained_timesteps=distill_timesteps(num_train, teacher_steps), clip="every step")
    record["teacher"]["steps"] = teacher_steps
    record["rounds"][-1].update(from_steps=teacher_steps, target_ema_decay=cfg.distill.target_ema_decay)
    return info
