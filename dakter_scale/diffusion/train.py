"""Train the balanced joint DDPM with accelerate: 1 process, N processes, or M nodes, unchanged.

Each rank reads its own disjoint positions of a seeded sample stream (core.steps.StreamPositions),
re-seeds its noise at every step, and accumulates gradients over
``gradient_accumulation_steps`` micro-batches. The EMA of the weights is what gets saved as the
model folder. ``resume="latest"`` continues from the newest checkpoint exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from dakter_scale.cards import write_model_card
from dakter_scale.config import Config, save_config, to_dict
from dakter_scale.core.joint import one_hot, pack, resolve_b
from dakter_scale.core.schedule import add_noise, joint_denoising_loss
from dakter_scale.core.steps import EMA, StreamPositions
from dakter_scale.data.real import open_source, patch_dataset, sar_counts, split_stats
from dakter_scale.data.sar_stats import SAR, enl_from_counts
from dakter_scale.data.storage import redact_url
from dakter_scale.diffusion.model import build_scheduler, build_unet, model_info, save_model_folder
from dakter_scale.training import (
    LoopResult,
    LoopSpec,
    accumulate,
    log_launch,
    make_accelerator,
    resolve_resume,
    restore,
    run_steps,
    save_checkpoint,
    seed_init,
    setup_logging,
    start_trackers,
    write_rank_report,
    write_train_record,
)

log = logging.getLogger("dakter_scale")


class _PositionBatches(torch.utils.data.Sampler):
    """Batch sampler over StreamPositions starting at a micro-batch, endless."""

    def __init__(self, positions: StreamPositions, first_micro_batch: int):
        self.positions, self.first = positions, first_micro_batch

    def __iter__(self):
        return self.positions.batches(self.first)


def patch_batches(
    dataset, batch_size: int, seed: int, rank: int, world: int, first_micro_batch: int, num_workers: int, device
):
    """An endless iterator of (x, mask) batches: this rank's positions of the seeded stream over `dataset`
    from micro-batch `first_micro_batch` on (a resume continues where the run stopped). Stop its workers
    with ``getattr(it, "_shutdown_workers", lambda: None)()`` when done."""
    positions = StreamPositions(len(dataset), batch_size, seed, rank, world)
    loader = DataLoader(
        dataset,
        batch_sampler=_PositionBatches(positions, first_micro_batch),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    return iter(loader)


def data_layout(d, world: int) -> dict:
    """What decides which samples a step reads (a resume with a different layout continues, but not
    exactly): the ranks and d's batch_size, gradient_accumulation_steps and seed."""
    return {
        "ranks": world,
        "batch_size": d.batch_size,
        "gradient_accumulation_steps": d.gradient_accumulation_steps,
        "seed": d.seed,
    }


def prepare_training(
    accelerator,
    unet,
    d,
    weight_decay: float,
    layout: dict,
    checkpoint: Path | None,
    resume: str | None,
    out: Path,
    section: str,
    more_emas: dict | None = None,
):
    """The network to train, prepared with its AdamW optimiser and EMA, and where it starts:
    (unet, optimizer, ema, start step, recorded total or None). `d` holds lr, ema_decay, ema_warmup,
    max_steps and max_minutes (DiffusionConfig, DistillConfig: `section` names it). A checkpoint is
    restored into all three (and into more_emas, the caller's further averages by name:
    training.save_checkpoint) by training.restore; (0, None) without one. Every rank must agree (a collective)."""
    optimizer = torch.optim.AdamW(unet.parameters(), lr=d.lr, weight_decay=weight_decay)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    ema = EMA(accelerator.unwrap_model(unet), d.ema_decay, d.ema_warmup)
    length = (d.max_steps, d.max_minutes)
    state, _ = restore(accelerator, checkpoint, resume, out, unet, optimizer, layout, section, length, ema, more_emas)
    return unet, optimizer, ema, int(state.get("step", 0)), state.get("total_steps")


def train_steps(
    accelerator,
    d,
    out: Path,
    name: str,
    schedule: str,
    lr_floor: float,
    unet,
    optimizer,
    ema: EMA,
    start: int,
    total: int | None,
    layout: dict,
    batches,
    loss_of: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]],
    progress: bool,
    more_emas: dict[str, EMA] | None = None,
    after_update: Callable[[torch.nn.Module], None] | None = None,
) -> LoopResult:
    """Train `unet` (from prepare_training, with its optimizer, ema, start and total) on loss_of(x, mask) over
    `batches` (patch_batches) in training.run_steps, for d's budget and settings (DiffusionConfig,
    DistillConfig); `name` labels the progress, `schedule` and `lr_floor` shape the learning rate. After
    every step the EMA, then more_emas, are updated, then after_update(the unwrapped network). Checkpoints
    (with `layout` and more_emas) go to OUT/checkpoints, the rank report and the training record to
    OUT/logs. Stops the data workers. Returns run_steps' LoopResult."""
    rank, device = accelerator.process_index, accelerator.device
    averages = more_emas or {}

    def step(i: int):
        return accumulate(accelerator, unet, batches, d.gradient_accumulation_steps, d.seed, rank, i, device, loss_of)

    def updated(i: int) -> None:
        network = accelerator.unwrap_model(unet)
        ema.update(network)
        for average in averages.values():
            average.update(network)
        if after_update is not None:
            after_update(network)

    spec = LoopSpec(
        name,
        d.max_steps,
        d.max_minutes,
        d.lr,
        d.warmup_steps,
        schedule,
        lr_floor,
        d.max_grad_norm,
        d.log_every,
        d.checkpoint_every,
    )
    result = run_steps(
        accelerator,
        spec,
        start,
        optimizer,
        unet.parameters(),
        step,
        after_step=updated,
        checkpoint=lambda done, extra: save_checkpoint(
            accelerator,
            out,
            done,
            d.checkpoints_total_limit,
            unet,
            optimizer,
            ema,
            extra={"layout": layout, **extra},
            more_emas=averages or None,
        ),
        total=total,
        progress=progress,
    )
    # Worker processes stop now rather than at garbage collection: a multi-process run ends in os._exit.
    getattr(batches, "_shutdown_workers", lambda: None)()
    write_rank_report(accelerator, out, unet)
    write_train_record(accelerator, out, result)
    return result


def train_diffusion(
    cfg: Config, out: str | Path, resume: str | None = None, progress: bool = True, accelerator=None
) -> Path:
    """Train, checkpoint, and write the model folder to `out`. Returns `out`."""
    out = Path(out)
    d = cfg.diffusion
    accelerator = accelerator or make_accelerator(d.mixed_precision)
    setup_logging(accelerator.is_main_process)
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device

    checkpoint = resolve_resume(out, resume)  # a bad --resume fails before any work
    source = open_source(cfg.data.spec)
    stats = split_stats(source, "train", cfg.data.stats_max_images)
    b = resolve_b(d.b, stats.image_stats)
    k = source.num_classes
    if accelerator.is_main_process:
        log.info(
            "data %s: %d train images, class fractions %s; b = %.4f (%s)",
            cfg.data.spec,
            stats.images,
            [round(f, 4) for f in stats.class_fractions],
            b,
            d.b,
        )
        # the training patches' ENL and grey-level histogram: synthesis checks its images against them
        sar = sar_counts(source, cfg.data, "train", cfg.data.stats_max_images)
        log.info(
            "training patches: ENL %.2f over %d sea windows of %d px",
            enl_from_counts(sar.enl),
            int(sar.enl.sum()),
            sar.window,
        )

    log_launch(accelerator)
    seed_init(d.seed)
    unet = build_unet(d.unet, cfg.data.resolution, 1 + k)
    scheduler = build_scheduler(d.num_train_timesteps, d.beta_schedule, d.prediction_type, d.rescale_zero_terminal_snr)
    label_type = d.prediction_type if d.label_prediction_type == "same" else d.label_prediction_type
    alpha_bar = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    layout = data_layout(d, world)
    unet, optimizer, ema, start, total = prepare_training(
        accelerator, unet, d, d.weight_decay, layout, checkpoint, resume, out, "diffusion"
    )
    if accelerator.is_main_process:  # after the restore: a checkpoint this run cannot continue leaves it as it was
        save_config(cfg, out)

    dataset = patch_dataset(source, cfg.data, "train", seed=d.seed)
    accumulation = d.gradient_accumulation_steps
    batches = patch_batches(dataset, d.batch_size, d.seed, rank, world, start * accumulation, d.num_workers, device)
    start_trackers(accelerator, "diffusion", to_dict(cfg.diffusion), start)

    def loss_of(x: torch.Tensor, mask: torch.Tensor):
        z0 = pack(x, one_hot(mask, k), b)
        t = torch.randint(0, d.num_train_timesteps, (z0.shape[0],), device=device)
        eps = torch.randn_like(z0)
        z_t = add_noise(z0, eps, alpha_bar[t])
        with accelerator.autocast():
            output = unet(z_t, t).sample
        return joint_denoising_loss(
            output,
            z0,
            eps,
            z_t,
            alpha_bar[t],
            d.prediction_type,
            b,
            mask,
            d.label_loss_weight,
            d.label_ce_weight,
            label_type,
        )

    unet.train()
    # a constant learning rate after the warm-up: the floor (1.0) only shapes a cosine decay
    result = train_steps(
        accelerator,
        d,
        out,
        "diffusion",
        "constant",
        1.0,
        unet,
        optimizer,
        ema,
        start,
        total,
        layout,
        batches,
        loss_of,
        progress,
    )

    if accelerator.is_main_process:
        final = build_unet(d.unet, cfg.data.resolution, 1 + k)
        ema.copy_to(final)
        info = model_info(
            b=b,
            b_mode=str(d.b),
            classes=source.classes,
            resolution=cfg.data.resolution,
            prediction_type=d.prediction_type,
            label_prediction_type=label_type,
            data_spec=redact_url(cfg.data.spec),
            data_license=cfg.data.license,
            radiometry=source.radiometry,
            train_stats={
                "images": stats.images,
                "class_fractions": list(stats.class_fractions),
                "image_mean": stats.image_stats.mean,
                "image_rms": stats.image_stats.rms,
                "image_std": stats.image_stats.std,
                SAR: sar.to_json(),
            },
            sampling=to_dict(cfg.sampling),
            steps_trained=result.steps,
        )
        save_model_folder(out, final, scheduler, info)
        write_model_card(out)
        log.info(
            "model folder written to %s (b = %.4f, %d steps%s)",
            out,
            b,
            result.steps,
            f", last loss {result.last_log['loss']:.4f}" if result.last_log else "",
        )
    accelerator.wait_for_everyone()
    return out
