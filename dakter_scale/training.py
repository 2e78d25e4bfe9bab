"""What both trainers share: the Accelerator, the step loop, checkpoints, cross-rank records, exit.

The maths of a step's randomness, data positions, learning rate and EMA is pure and lives in
``core/steps.py``; this module is where it meets processes and files. ``run_steps`` is the one
loop skeleton of both trainers (diffusion/train.py, student/train.py): learning rate, gradient
clipping, optimiser step, logging, progress, checkpoints and the wall-clock budget
(``StepBudget``); each trainer passes in what one step computes. The noise and dropout of a step
come from the global RNG re-seeded at every step (``seed_step``), so a checkpoint holds only the
step, the model, the optimiser, the EMA (and the student's reader positions) and a resumed run
continues exactly as an uninterrupted one would (tests/test_resume.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from dakter_scale.config import TRACKERS
from dakter_scale.core.steps import EMA, derive_seed, lr_factor
from dakter_scale.errors import UserError

log = logging.getLogger("dakter_scale")


class LaunchError(UserError, RuntimeError):
    """The processes were launched in a way that cannot train correctly."""


class ResumeError(UserError, FileNotFoundError):
    """--resume names a folder that holds no checkpoint, or one this run cannot continue (another network or
    length), or a fresh start would mix with an earlier run's."""


class DivergedError(UserError, FloatingPointError):
    """Training diverged: the weights are no longer finite. Nothing more is written, so the checkpoints
    already written (finite) are kept."""


def resolve_mixed_precision(setting: str) -> str:
    """auto -> what `accelerate launch --mixed_precision` asked for (when not "no"), else bf16 on a CUDA
    device that has it, fp16 on older CUDA devices, and no (fp32) on CPU."""
    if setting != "auto":
        return setting
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched in ("bf16", "fp16"):
        return launched
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def check_one_precision(cfg) -> None:
    """A study (jobs/experiment.py, jobs/demo.py) trains its diffusion models, students and distilled sampler
    in one process, where accelerate keeps the first Accelerator's mixed precision: refuse, before any work,
    settings that resolve differently here (a later trainer would stop with accelerate's ValueError after
    the earlier ones trained). ConfigError naming the keys."""
    from dakter_scale.config import ConfigError

    e = cfg.experiment
    keys = {
        "diffusion.mixed_precision": cfg.diffusion.mixed_precision,
        "student.mixed_precision": cfg.student.mixed_precision,
    }
    if "dakter_distilled" in e.methods + e.sweep_methods:  # only that arm distils
        keys["distill.mixed_precision"] = cfg.distill.mixed_precision
    resolved = {key: resolve_mixed_precision(value) for key, value in keys.items()}
    if len(set(resolved.values())) > 1:
        settings = ", ".join(
            f"{key}={keys[key]}" + (f" ({resolved[key]})" if keys[key] != resolved[key] else "") for key in keys
        )
        raise ConfigError(
            f"{settings}: a study trains them in one process, which takes one mixed precision: set them alike"
        )


LAUNCH_HELP = (
    "on CPU launch N processes with `torchrun --nproc_per_node N jobs/...` (gloo); "
    "on GPUs with `accelerate launch --num_processes N jobs/...` (or torchrun)"
)


def check_launch() -> None:
    """Refuse, before any work, a launch known to start fewer processes than asked for.

    `accelerate launch --num_processes N` (N > 1) starts ONE process when it does not use torchrun
    underneath: with --cpu (it wants mpirun for several CPU processes) and on a machine without
    GPUs (measured with accelerate 1.15). That process has MASTER_ADDR and accelerate's launch
    variables but no WORLD_SIZE.
    """
    launched_by_accelerate = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by every `accelerate launch`
    mpi = any(os.environ.get(k) for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if launched_by_accelerate and os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ and not mpi:
        raise LaunchError(
            "`accelerate launch --num_processes N` started a single process (with --cpu, or without GPUs, accelerate "
            f"needs mpirun to start several): {LAUNCH_HELP}"
        )


def make_accelerator(
    mixed_precision: str = "auto", log_with: Any = None, project_dir: str | None = None, cpu: bool | None = None
):
    """An Accelerator that works the same under `python`, `torchrun` and `accelerate launch`.

    cpu=None (auto) runs in accelerate's CPU mode when there is no CUDA device; under torchrun that
    forms a real gloo process group. A launch that sets WORLD_SIZE > 1 but ends in fewer accelerate
    processes (each would believe it is rank 0 and train alone: what plain torchrun gives with
    cpu=False on a machine without CUDA) is refused with LaunchError, as is the single process that
    `accelerate launch --cpu --num_processes N` starts (``check_launch``).
    """
    from accelerate import Accelerator

    check_launch()
    if cpu is None:
        cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("ACCELERATE_USE_CPU", "1")
    kwargs: dict[str, Any] = {"cpu": cpu, "mixed_precision": resolve_mixed_precision(mixed_precision)}
    if log_with:
        kwargs["log_with"] = log_with
        kwargs["project_dir"] = project_dir
    accelerator = Accelerator(**kwargs)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes != world:
        raise LaunchError(
            f"launched with WORLD_SIZE={world} but accelerate formed {accelerator.num_processes} process(es): "
            f"each process would train alone as rank 0; {LAUNCH_HELP}"
        )
    return accelerator


_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
_TRACKER_INSTALL = {
    "tensorboard": "pip install 'dakter-scale[tracking]'",
    "mlflow": "pip install mlflow",
    "wandb": "pip install wandb",
}


def report_to(name: str | None) -> str | None:
    """The Accelerate tracker for --report-to NAME (None for none), refused unless its package is installed."""
    import importlib.util

    name = name or "none"
    if name not in TRACKERS:
        raise LaunchError(f"--report-to must be one of {', '.join(TRACKERS)}, got {name!r}")
    if name == "none":
        return None
    if not any(importlib.util.find_spec(package) for package in _TRACKER_PACKAGES[name]):
        raise LaunchError(
            f"--report-to {name}: {_TRACKER_PACKAGES[name][0]} is not installed ({_TRACKER_INSTALL[name]})"
        )
    return name


def log_launch(accelerator) -> None:
    """The trainers' line on how the run was launched."""
    log.info(
        "%d process(es), device %s, mixed precision %s",
        accelerator.num_processes,
        accelerator.device,
        accelerator.mixed_precision,
    )


def tracked_accelerator(mixed_precision: str, report: str | None, out: str | Path):
    """A training job's Accelerator: its mixed precision, and --report-to's tracker writing to OUT/logs."""
    return make_accelerator(mixed_precision, log_with=report_to(report), project_dir=f"{out}/logs")


def start_trackers(accelerator, name: str, settings: dict, start: int) -> None:
    """Accelerate's trackers of the run (report_to), when it has any: `settings` as strings with credentials
    redacted (hparams files and tracker servers keep them), and on a resume from step `start` TensorBoard's
    purge_step, so the steps the stopped run logged after its last checkpoint are dropped rather than shown
    twice (the resumed run logs them again)."""
    if not accelerator.log_with:
        return
    from dakter_scale.data.storage import redact_url

    accelerator.init_trackers(
        name,
        config={key: redact_url(str(value)) for key, value in settings.items()},
        init_kwargs={"tensorboard": {"purge_step": start + 1}} if start else {},
    )


def seed_step(seed: int, rank: int, step: int, micro: int = 0) -> None:
    """Re-seed the global RNGs so that a step's noise depends only on (seed, rank, step, micro)."""
    s = derive_seed(seed, rank, step, micro)
    torch.manual_seed(s)


def accumulate(
    accelerator,
    model: torch.nn.Module,
    batches,
    accumulation: int,
    seed: int,
    rank: int,
    step: int,
    device,
    loss_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]],
) -> tuple[torch.Tensor, dict]:
    """One optimiser step's micro-batches of `batches` (image, mask): each moved to `device` and re-seeded
    (seed_step) before loss_of(x, mask) -> (loss, parts) draws its noise, its gradient synced across ranks
    on the last micro-batch only. Returns the last micro-batch's (loss, parts)."""
    for micro in range(accumulation):
        x, mask = next(batches)
        x, mask = x.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        seed_step(seed, rank, step, micro)
        with contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(model):
            loss, parts = loss_of(x, mask)
            accelerator.backward(loss / accumulation)
    return loss, parts


def seed_init(seed: int) -> None:
    """Seed the global RNGs for building a model: the same seed gives the same initial weights on
    every run and rank (DDP would copy rank 0's anyway; an exact resume test needs them per run)."""
    torch.manual_seed(derive_seed(seed, 1 << 62))


def freeze_unused(model: torch.nn.Module, example: torch.Tensor) -> list[str]:
    """Set requires_grad=False on parameters the forward pass never uses; returns their names.

    DDP expects a gradient for every trainable parameter at every step; an smp encoder cut to
    encoder_depth < 5 keeps its deeper stages as unused parameters, which stops a multi-process run
    with "Expected to have finished reduction in the prior iteration". Without a gradient the
    optimiser never touches them, so freezing changes nothing else. The probe runs in eval mode
    (BatchNorm statistics stay as they are) on `example`, e.g. zeros of one batch's shape.
    """
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    out = model(example)
    out = out.sample if hasattr(out, "sample") else out
    out.float().sum().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for name, p in model.named_parameters():
        p.grad = None
        if name in unused:
            p.requires_grad_(False)
    model.train(was_training)
    return unused


# -- the step loop ----------------------------------------------------------------------------------


class StepBudget:
    """How many optimiser steps a run takes: ``max_steps``, or, with ``max_minutes`` > 0, as many as
    fit in that much wall-clock time (never more than max_steps).

    A time budget is turned into a step count once, early: the loop times ``timed_steps`` steps
    after ``warm_steps`` warm-up steps (allocation, autotuning) and fixes ``total`` from the time
    left. The learning-rate schedule then decays over the steps that will really run, and the
    count is recorded in checkpoints so that a resumed run keeps it. Every rank takes rank 0's
    count (``agree``), so the ranks stop together.
    """

    def __init__(
        self,
        max_steps: int,
        max_minutes: float = 0.0,
        start: int = 0,
        total: int | None = None,
        warm_steps: int = 3,
        timed_steps: int = 20,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.max_steps, self.seconds, self.clock = max_steps, 60.0 * max_minutes, clock
        self.start, self.warm_steps, self.timed_steps = start, warm_steps, timed_steps
        self.total = total if total is not None else max_steps
        self.fixed = total is not None or self.seconds <= 0
        self.t0 = clock()
        self._mark: tuple[int, float] | None = None

    def step_done(self, done: int, agree: Callable[[int], int] = lambda n: n) -> None:
        """Call after step `done` (1-based count of steps finished); may fix `total`."""
        if self.fixed:
            return
        ran = done - self.start
        if ran == self.warm_steps:
            self._mark = (done, self.clock())
        elif self._mark is not None and ran == self.warm_steps + self.timed_steps:
            now = self.clock()
            per_step = (now - self._mark[1]) / (done - self._mark[0])
            left = self.seconds - (now - self.t0)
            self.total = agree(min(self.max_steps, done + max(0, int(left / per_step))))
            self.fixed = True
            log.info(
                "time budget %.3g min: %d steps (%.1f ms/step measured)", self.seconds / 60, self.total, 1000 * per_step
            )
        elif done >= self.max_steps:
            self.fixed = True

    def schedule_total(self) -> int:
        """The step count the learning-rate schedule decays over (max_steps until the budget is fixed)."""
        return self.total


@dataclass(frozen=True)
class LoopSpec:
    """What the shared loop needs to know about a trainer's settings."""

    name: str  # progress-bar label
    max_steps: int
    max_minutes: float
    lr: float
    warmup_steps: int
    schedule: str  # constant | cosine
    lr_floor: float
    max_grad_norm: float
    log_every: int
    checkpoint_every: int


@dataclass
class LoopResult:
    steps: int  # the step count reached (the run's total)
    seconds: float
    steps_per_second: float
    last_log: dict = field(default_factory=dict)


def run_steps(
    accelerator,
    spec: LoopSpec,
    start: int,
    optimizer,
    parameters,
    step: Callable[[int], tuple[torch.Tensor, dict]],
    after_step: Callable[[int], None] | None = None,
    checkpoint: Callable[[int, dict], None] | None = None,
    total: int | None = None,
    progress: bool = True,
) -> LoopResult:
    """The training loop of both trainers, from step `start` to the budget's total.

    step(i) runs the forward and backward passes of step i (micro-batches included) and returns the
    loss and the values to log; the loop then clips the gradients, steps the optimiser, calls
    after_step(i) (the EMA update), logs every spec.log_every steps, shows progress, and calls
    checkpoint(done, {"total_steps": ..., "max_steps": ..., "max_minutes": ...}) every spec.checkpoint_every
    steps before the last (total_steps None while a time budget is still being measured; the other two are
    spec's, which a resume must keep: restore). Weights no longer finite are refused (DivergedError) before a
    checkpoint and at the end, before the caller writes its model, so a diverged run overwrites nothing.
    `total` is the step count a resumed run recorded (its budget is not measured again).
    """
    rank = accelerator.process_index
    budget = StepBudget(spec.max_steps, spec.max_minutes, start, total)
    params = [p for p in parameters if p.requires_grad]
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget.total, initial=start, desc=spec.name, unit="step", dynamic_ncols=True)
    t0, last_log, i = time.perf_counter(), {}, start
    logged = (start, t0)  # the step and time of the last log: the trackers' steps/s is over the steps since
    while i < budget.total:
        set_lr(
            optimizer,
            spec.lr * lr_factor(i, spec.warmup_steps, budget.schedule_total(), spec.schedule, floor=spec.lr_floor),
        )
        loss, parts = step(i)
        if spec.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, spec.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(i)
        done = i + 1
        budget.step_done(done, agree=lambda n: gather_objects(accelerator, n)[0])
        if bar is not None and bar.total != budget.total:
            bar.total = budget.total
        if done % spec.log_every == 0 or done == budget.total:
            # reading the loss is a device sync: only at logging steps
            last_log = {
                "loss": float(loss.detach()),
                # a part no sample of this batch took is NaN (core/kd.py mixed_loss): left out
                **{k: v for k, v in ((k, float(v)) for k, v in parts.items()) if not math.isnan(v)},
                "lr": optimizer.param_groups[0]["lr"],
            }
            now = time.perf_counter()
            accelerator.log(
                {**last_log, "steps_per_second": (done - logged[0]) / max(now - logged[1], 1e-9)}, step=done
            )
            logged = (done, now)
            if bar is not None:
                bar.set_postfix(loss=f"{last_log['loss']:.4f}", refresh=False)
            elif accelerator.is_main_process:
                log.info(
                    "%s step %d/%d loss %.4f (%.3f s/step)",
                    spec.name,
                    done,
                    budget.total,
                    last_log["loss"],
                    (time.perf_counter() - t0) / max(1, done - start),
                )
        if bar is not None:
            bar.update(1)
        if (
            checkpoint is not None
            and spec.checkpoint_every
            and done % spec.checkpoint_every == 0
            and done < budget.total
        ):
            check_finite(params, spec.name, done)
            # a count not yet measured is not recorded: a run resumed from here measures it itself
            total_steps = budget.total if budget.fixed else None
            checkpoint(done, {"total_steps": total_steps, "max_steps": spec.max_steps, "max_minutes": spec.max_minutes})
        maybe_kill(done, rank)
        i = done
    if bar is not None:
        bar.close()
    check_finite(params, spec.name, i)
    seconds = time.perf_counter() - t0
    return LoopResult(
        steps=budget.total,
        seconds=seconds,
        steps_per_second=(budget.total - start) / seconds if seconds > 0 else 0.0,
        last_log=last_log,
    )


def check_finite(params: list[torch.Tensor], name: str, step: int) -> None:
    """Refuse weights with a NaN or inf (DivergedError): the parameters, not the loss, since a mixed-precision
    scaler skips the steps whose gradients overflow. Every rank holds the same weights, so all refuse."""
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise DivergedError(
            f"{name} step {step}: the weights are no longer finite (NaN or inf): training diverged; nothing more is "
            "written, the checkpoints before are kept; lower the learning rate or raise warmup_steps"
        )


# -- checkpoints ----------------------------------------------------------------------------------
#
# Written by this module rather than accelerate's save_state/load_state, which pickle RNG states and
# custom objects and load them with weights_only=False. Here the model and EMA are safetensors, the
# optimiser state is loaded with torch.load(weights_only=True), and no RNG state is needed because
# every step re-seeds (seed_step). Under DDP all ranks hold the same state; the main process writes.


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:08d}"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and not d.name.endswith(".tmp") and (d / "state.json").is_file():
            found.append((int(d.name.split("-")[1]), d))
    return sorted(found)


def drop_checkpoints(out: Path) -> None:
    """Remove a finished run's checkpoints/: they serve only a resume, which a finished run does not need
    (213 students of the scarcity studies kept 40 GB of them)."""
    shutil.rmtree(Path(out) / "checkpoints", ignore_errors=True)


def resolve_resume(out: Path, resume: str | None) -> Path | None:
    """--resume latest | PATH | None -> a checkpoint folder (None: start fresh; latest with none found too).
    Starting fresh in an OUT that holds an earlier run's checkpoints is refused: the checkpoint rotation
    would keep the old run's newer steps and delete the new run's, and a later --resume latest would
    continue the old run."""
    if not resume:
        found = list_checkpoints(out)
        if found:
            raise ResumeError(
                f"{out / 'checkpoints'} holds an earlier run's checkpoints (up to step {found[-1][0]}): give --resume latest "
                "to continue it, or another --out (or remove that folder) to start fresh"
            )
        return None
    if resume == "latest":
        found = list_checkpoints(out)
        return found[-1][1] if found else None
    p = Path(resume)
    if not (p / "state.json").is_file():
        raise ResumeError(f"--resume {resume}: no checkpoint there (no state.json)")
    return p


def save_checkpoint(
    accelerator,
    out: Path,
    step: int,
    limit: int,
    model,
    optimizer,
    ema: "EMA | None" = None,
    extra: dict | None = None,
    more_emas: "dict[str, EMA] | None" = None,
) -> Path:
    """Write the state needed to continue exactly at `step`, then keep only the newest `limit`. more_emas:
    further averages of the weights by name (consistency distillation's target network), as NAME.safetensors."""
    from safetensors.torch import save_file, save_model

    final = checkpoint_dir(out, step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = final.with_name(final.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            save_model(accelerator.unwrap_model(model), str(tmp / "model.safetensors"))
            if ema is not None:
                save_file({k: v.contiguous() for k, v in ema.shadow.items()}, str(tmp / "ema.safetensors"))
            for name, average in (more_emas or {}).items():
                save_file({k: v.contiguous() for k, v in average.shadow.items()}, str(tmp / f"{name}.safetensors"))
            scaler = getattr(accelerator, "scaler", None)
            torch.save(
                {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None},
                tmp / "optimizer.pt",
            )
            state = {"step": step, "ema_updates": ema.updates if ema is not None else None, **(extra or {})}
            state.update({f"{name}_updates": average.updates for name, average in (more_emas or {}).items()})
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        except BaseException:  # a full disk: the half-written checkpoint would hold the space until that step again
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for _, old in list_checkpoints(out)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator, path: Path, model, optimizer, ema: "EMA | None" = None, more_emas: "dict[str, EMA] | None" = None
) -> dict:
    """Restore what save_checkpoint wrote; returns state.json (its "step" is where to continue)."""
    from safetensors.torch import load_file, load_model

    state = json.loads((path / "state.json").read_text())
    # safetensors refuses "cpu:0", the device accelerate reports for a multi-process CPU run.
    device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    # another network: torch's report of the mismatch runs over many lines (and smp warns of each key first)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_model(accelerator.unwrap_model(model), str(path / "model.safetensors"), device=device)
        blob = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
    except (RuntimeError, ValueError) as e:
        raise ResumeError(
            f"--resume {path}: its weights do not fit this run's network (was the architecture changed?): "
            f"{str(e).strip().splitlines()[0].rstrip(':')}"
        ) from None
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and blob.get("scaler") is not None:
        scaler.load_state_dict(blob["scaler"])
    if ema is not None:
        ema.shadow = {k: v.to(accelerator.device) for k, v in load_file(str(path / "ema.safetensors")).items()}
        ema.updates = int(state["ema_updates"])
    for name, average in (more_emas or {}).items():
        if not (path / f"{name}.safetensors").is_file():
            raise ResumeError(f"--resume {path}: the checkpoint has no {name}.safetensors (written by another method?)")
        average.shadow = {k: v.to(accelerator.device) for k, v in load_file(str(path / f"{name}.safetensors")).items()}
        average.updates = int(state[f"{name}_updates"])
    return state


def restore(
    accelerator,
    checkpoint: Path | None,
    resume: str | None,
    out: Path,
    model,
    optimizer,
    layout: dict,
    section: str,
    length: tuple[int, float],
    ema: "EMA | None" = None,
    more_emas: "dict[str, EMA] | None" = None,
) -> tuple[dict, list[str]]:
    """The trainers' resume: resolve_resume's checkpoint (None: a fresh start) restored into model, optimizer
    and the averages; returns (its state.json, {} without one; the data layout's changes, with a warning).
    A checkpoint written with another SECTION.max_steps or max_minutes (length) is refused (ResumeError):
    the run would silently keep the recorded count and learning-rate schedule (one written before those
    were recorded resumes as before). Every rank must agree (a collective)."""
    state: dict = {}
    changed: list[str] = []
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint, model, optimizer, ema, more_emas)
        for key, value in zip(("max_steps", "max_minutes"), length):
            if key in state and state[key] != value:
                raise ResumeError(
                    f"--resume {checkpoint}: its run has {section}.{key}={state[key]}, this one {value}: "
                    f"a resumed run keeps its length; give {section}.{key}={state[key]}, or start afresh in another --out"
                )
        log.info("resumed from %s at step %d", checkpoint, int(state["step"]))
        changed = layout_changes(state.get("layout", {}), layout)
        if changed:
            log.warning(
                "resuming with a different data layout (%s): training continues, but not exactly as the interrupted run would have",
                ", ".join(changed),
            )
    elif resume == "latest":
        log.info("--resume latest: no checkpoint in %s, starting fresh", out / "checkpoints")
    check_resume_agrees(accelerator, int(state.get("step", 0)), out)
    return state, changed


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# -- logging, cross-rank records, exit ------------------------------------------------------


def setup_logging(is_main: bool = True) -> None:
    """This package's log at INFO on the main process and WARNING on the others. A handler on stderr is
    added only where the application has none: a notebook's or a service's own logging (and pytest's
    capture) is left as it was, where replacing the root handlers would silence it."""
    logging.getLogger("dakter_scale").setLevel(logging.INFO if is_main else logging.WARNING)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)


def gather_objects(accelerator, obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (a collective: every rank must call it)."""
    if accelerator.num_processes == 1:
        return [obj]
    out: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(out, obj)
    return out


def check_resume_agrees(accelerator, start: int, out: Path) -> None:
    """Every rank must continue from the same step: a checkpoint folder that only some nodes can see
    (OUT not on a shared file system) would otherwise desynchronise the ranks (a collective)."""
    starts = gather_objects(accelerator, start)
    if len(set(starts)) > 1:
        raise LaunchError(
            f"ranks would resume at different steps {starts}: {out}/checkpoints must be on a file system every node shares"
        )


def layout_changes(saved: dict, current: dict) -> list[str]:
    """Differences between the data layout a checkpoint was written with and this run's, as text."""
    return [f"{k} {saved[k]} -> {current[k]}" for k in sorted(current) if k in saved and saved[k] != current[k]]


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's parameters (names and bytes; buffers such as BatchNorm statistics are
    per rank under DDP and left out)."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_rank_report(accelerator, out: Path, model: torch.nn.Module) -> dict:
    """Check that every rank ends with the same parameters; record it in OUT/logs/ranks.json (collective)."""
    digests = gather_objects(accelerator, parameter_digest(accelerator.unwrap_model(model)))
    report = {"ranks": accelerator.num_processes, "parameter_sha256": digests, "identical": len(set(digests)) == 1}
    if accelerator.is_main_process:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "logs" / "ranks.json").write_text(json.dumps(report, indent=2) + "\n")
        if not report["identical"]:
            log.error("ranks ended with different parameters: %s", digests)
    return report


def write_train_record(accelerator, out: Path, result: LoopResult) -> None:
    """OUT/logs/train.json: the steps run, wall-clock seconds and steps/s of the loop (main process).
    Kept out of the model and student folders' own files, which must not change from run to run."""
    if accelerator.is_main_process:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        record = {
            "steps": result.steps,
            "seconds": round(result.seconds, 3),
            "steps_per_second": round(result.steps_per_second, 3),
            "processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
            "last_log": result.last_log,
        }
        (out / "logs" / "train.json").write_text(json.dumps(record, indent=2) + "\n")


KILL_ENV = "DAKTER_KILL_AFTER_STEP"  # testing hook: see maybe_kill


def maybe_kill(step: int, rank: int) -> None:
    """Testing hook for exact-resume tests: with DAKTER_KILL_AFTER_STEP=N, rank 0 SIGKILLs itself
    once step N is done (after its checkpoint, if one falls on N) -- a real, unclean death."""
    if rank == 0 and os.environ.get(KILL_ENV) == str(step):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def finish(accelerator) -> None:
    """End a run: finish the trackers, destroy the process group, and leave a multi-process run
    with os._exit(0). Call it after every output is written (the trainers also stop their
    DataLoader workers before returning, so none is orphaned by os._exit).

    Why: a 2-process CPU run was measured once to abort about 1 time in 8 at interpreter exit with
    "terminate called without an active exception" after all work was written. That message is
    std::terminate from a C++ thread object destroyed while still joinable; in a gloo run the
    likely owner is the process group's worker threads, torn down during interpreter finalization
    when the group was not destroyed while Python was fully alive (pytorch/pytorch#179291). The
    abort did not reproduce here with this code (0 in 103 two-process runs, 53 of them without
    destroying the group), so the cause is not proven; destroying the group explicitly and then
    skipping finalization with os._exit removes both candidate paths at no cost.
    """
    accelerator.wait_for_everyone()
    accelerator.end_training()  # finishes trackers, destroys the process group
    if accelerator.num_processes > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        with contextlib.suppress(Exception):
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        os._exit(0)
