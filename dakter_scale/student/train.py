"""Train a student: CE on real pairs, KD on generated soft labels (or CE on their argmax), mixed at a ratio.

Runs under plain ``python``, ``torchrun`` and ``accelerate launch`` alike; every rank reads its own
slots of both streams (see data/stream.py) so no sample is read twice within a pass. Checkpoints
hold the model, the optimiser, the position each generated-data reader reached and the bad shards
met so far; the streams are deterministic, so ``resume="latest"`` continues exactly.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from safetensors.torch import load_model

from dakter_scale.cards import write_student_card
from dakter_scale.config import Config, StudentConfig, save_config, to_dict
from dakter_scale.core.kd import mixed_loss
from dakter_scale.data.real import open_source, patch_dataset
from dakter_scale.data.shardset import DatasetInfo, SampleShape, ShardError, ShardSet
from dakter_scale.data.storage import redact_url
from dakter_scale.data.stream import (
    MAX_BAD_REASONS,
    GeneratedStream,
    MixedBatches,
    RealStream,
    StreamError,
    consumed,
    slot_of,
    stream_loader,
)
from dakter_scale.student.augment import PASTE_RULE, Augment, build_augment
from dakter_scale.student.models import (
    STUDENT_WEIGHTS,
    StudentError,
    build_student,
    read_student_info,
    resolve_encoder,
    save_student,
)
from dakter_scale.training import (
    LoopSpec,
    freeze_unused,
    gather_objects,
    log_launch,
    make_accelerator,
    resolve_resume,
    restore,
    run_steps,
    save_checkpoint,
    seed_init,
    seed_step,
    setup_logging,
    start_trackers,
    write_rank_report,
    write_train_record,
)

log = logging.getLogger("dakter_scale")


def check_generated(
    url: str, classes: tuple[str, ...], resolution: int, on_bad_shard: str = "raise"
) -> DatasetInfo | None:
    """The generated dataset's header, checked against the real data: same classes, same resolution.
    An unreadable header stops the run under on_bad_shard="raise"; under "warn" it is ignored (the
    stream reports it and checks every sample against the real data's size and classes instead)."""
    generated = ShardSet(url)
    where = generated.where  # messages and logs: the URL with credentials hidden
    try:
        info = generated.info()
    except ShardError:
        if on_bad_shard == "raise":
            raise
        info = None
    if info is None:
        if not generated.read_markers()[0]:
            raise StreamError(f"--synthetic {where}: no generated dataset there (no dataset.json, no finished shards)")
        return None
    if list(info.classes or classes) != list(classes):
        raise StreamError(
            f"--synthetic {where}: its classes {info.classes} differ from the real data's {list(classes)}"
        )
    if (info.resolution or resolution) != resolution:
        raise StreamError(
            f"--synthetic {where}: pairs are {info.resolution} px but data.resolution is {resolution}; set data.resolution={info.resolution}"
        )
    for warning in info.warnings or []:
        log.warning("generated dataset %s: %s", where, warning)
    return info


def start_from(model: torch.nn.Module, folder: str, arch: str, encoder: str, classes: list[str]) -> None:
    """Load a trained student's weights into `model` (student.init), refused in one line (StudentError)
    when it is another architecture, encoder or class list."""
    info = read_student_info(folder)
    theirs = (info.get("arch"), info.get("encoder"), list(info.get("classes", [])))
    if theirs != (arch, encoder, classes):
        raise StudentError(
            f"student.init {folder} is {theirs[0]} / {theirs[1]} over {theirs[2]}, this student {arch} / {encoder} over {classes}"
        )
    load_model(model, str(Path(folder) / STUDENT_WEIGHTS))


def generated_stream(
    cfg: Config, synthetic: str | None, classes: list[str], rank: int, world: int
) -> tuple[DatasetInfo | None, GeneratedStream | None]:
    """(the generated set's header, this rank's stream of it) when student.ratio > 0, else (None, None):
    its finished shards listed and checked to feed every reader, and its classes and size checked
    against the real data's, before any work."""
    s = cfg.student
    if s.ratio <= 0:
        if synthetic and rank == 0:
            log.warning(
                "generated pairs %s are not read: student.ratio is 0 (real data only); give --ratio (e.g. 2 or 200%%) to train on them",
                redact_url(synthetic),
            )
        return None, None
    if not synthetic:
        raise StreamError(f"student.ratio={s.ratio} needs --synthetic URL (generated pairs)")
    info = check_generated(synthetic, classes, cfg.data.resolution, s.on_bad_shard)
    gen = GeneratedStream(
        synthetic,
        rank,
        world,
        s.seed,
        s.shuffle_buffer,
        s.min_confidence,
        s.on_bad_shard,
        max_samples=s.max_generated,
        shape=SampleShape(cfg.data.resolution, cfg.data.resolution, len(classes)),  # as the real data
        verify=s.verify_shards,
    )
    gen.check_slots(s.num_workers)
    return info, gen


def resume_streams(
    accelerator,
    checkpoint: Path | None,
    resume: str | None,
    out: Path,
    model,
    optimizer,
    layout: dict,
    s: StudentConfig,
) -> tuple[int, int | None, dict[int, tuple[int, int]], set[str], dict[str, int]]:
    """(start step, recorded total or None, the generated readers' positions, the bad shards seen and
    their count per shard):
    a checkpoint restored into model and optimizer (training.restore); with a changed data layout every
    reader restarts at the earliest pass any reader was in, since slots no longer match. Every rank
    must agree (a collective)."""
    state, changed = restore(
        accelerator, checkpoint, resume, out, model, optimizer, layout, "student", (s.max_steps, s.max_minutes)
    )
    positions = {int(slot): tuple(p) for slot, p in state.get("generated_positions", {}).items()}
    if changed:
        first_pass = min((p[0] for p in positions.values()), default=0)
        slots = slot_of(layout["ranks"], 0, layout["num_workers"])
        positions = {slot: (first_pass, 0) for slot in range(slots)}
    return (
        int(state.get("step", 0)),
        state.get("total_steps"),
        positions,
        set(state.get("bad_shards", [])),
        dict(state.get("bad_counts", {})),
    )


def train_student(
    cfg: Config,
    out: str | Path,
    synthetic: str | None = None,
    resume: str | None = None,
    progress: bool = True,
    accelerator=None,
    evaluate: str | None = None,
) -> Path:
    """Train a student on cfg.data.spec (+ generated pairs at cfg.student.ratio); write its folder to `out`.
    evaluate: a split of cfg.data.spec to evaluate the written student on (its metrics go to the trackers,
    OUT/logs/eval.json and the card), or None."""
    out = Path(out)
    s = cfg.student
    accelerator = accelerator or make_accelerator(s.mixed_precision)
    setup_logging(accelerator.is_main_process)
    rank, world, device = accelerator.process_index, accelerator.num_processes, accelerator.device
    checkpoint = resolve_resume(out, resume)  # a bad --resume fails before any work
    source = open_source(cfg.data.spec)
    k = source.num_classes
    gen_info, gen = generated_stream(cfg, synthetic, source.classes, rank, world)
    augment = build_augment(cfg, source)  # a copy-paste target no donor can meet stops here, before any work
    if augment is not None and augment.copy_paste is not None:
        cp = augment.copy_paste
        goals = ", ".join(f"{cp.target.classes[c]} {share:.4f}" for c, share in cp.target.shares)
        log.info(
            "copy-paste %s (per-sample shares %s) onto %g of real and %g of generated samples",
            s.copy_paste,
            goals,
            cp.real,
            cp.generated,
        )
    log_launch(accelerator)

    seed_init(s.seed)
    model = build_student(s.arch, s.encoder, k, s.encoder_weights, s.encoder_depth)
    if s.init:  # fine-tuning: start from a trained student's weights (a resumed run's checkpoint replaces them)
        start_from(model, s.init, s.arch, resolve_encoder(s.arch, s.encoder), list(source.classes))
    unused = freeze_unused(model, torch.zeros(2, 1, cfg.data.resolution, cfg.data.resolution))
    if unused:
        log.info("%d parameter tensors take no part in the forward pass (e.g. %s): frozen", len(unused), unused[0])
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=s.lr, weight_decay=s.weight_decay
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    # What decides which samples a step reads: a resume with a different layout continues, but not exactly.
    layout = {
        "ranks": world,
        "num_workers": s.num_workers,
        "batch_size": s.batch_size,
        "ratio": s.ratio,
        "seed": s.seed,
        "shuffle_buffer": s.shuffle_buffer,
        "min_confidence": s.min_confidence,
        # the generated shards read: a set that grew (or a new max_generated) reorders every pass
        "max_generated": s.max_generated,
        "generated_shards": len(gen.infos) if gen is not None else 0,
    }
    if augment is not None and getattr(augment.copy_paste, "read", None):
        layout["instance_bank"] = augment.copy_paste.read  # a bank grown or rebuilt since pastes other instances
    if augment is not None and augment.copy_paste is not None:
        layout["paste_rule"] = PASTE_RULE  # (a checkpoint written before the rule was recorded is not told apart)
    start, total, positions, bad_shards, bad_counts = resume_streams(
        accelerator, checkpoint, resume, out, model, optimizer, layout, s
    )
    if accelerator.is_main_process:  # after the restore: a checkpoint this run cannot continue leaves it as it was
        save_config(cfg, out)

    real_used, gen_used = consumed(start, s.batch_size, s.ratio)
    real_iter = gen_iter = None
    if not math.isinf(s.ratio):
        real = RealStream(patch_dataset(source, cfg.data, "train", seed=s.seed), rank, world, s.seed, skip=real_used)
        real_iter = stream_loader(real, s.num_workers, consumed=real_used)
    if gen is not None:
        gen.start = dict(positions)
        gen_iter = stream_loader(gen, s.num_workers, consumed=gen_used)
    batches = MixedBatches(
        real_iter,
        gen_iter,
        s.batch_size,
        s.ratio,
        k,
        start_batch=start,
        # this rank's own readers (slot = rank x workers + worker): a rank that carried the others' slots
        # from the checkpoint would report them unchanged, and the merge below would undo their progress
        positions={
            slot: p
            for slot, p in positions.items()
            if slot_of(rank, 0, s.num_workers) <= slot < slot_of(rank + 1, 0, s.num_workers)
        },
        bad_shards=bad_shards,
        bad_counts=bad_counts,
        augment=augment,
        first_place=rank * s.batch_size,  # rank 0 draws what one process draws; the others apart
    )

    def data_state() -> dict:
        """The streams' state over all ranks (a collective: every rank calls it)."""
        ranks = gather_objects(accelerator, (batches.positions, sorted(batches.bad_shards), batches.bad_counts))
        merged: dict[int, tuple[int, int]] = {}
        counts: dict[str, int] = {}
        for rank_positions, _, rank_counts in ranks:
            merged.update(rank_positions)
            for shard, n in rank_counts.items():  # ranks read disjoint samples; a shard they share counts twice
                counts[shard] = counts.get(shard, 0) + n
        return {
            "layout": layout,
            "generated_positions": {str(slot): list(p) for slot, p in sorted(merged.items())},
            "bad_shards": sorted(set().union(*(set(b) for _, b, _ in ranks)))[:MAX_BAD_REASONS],
            "bad_counts": dict(sorted(counts.items())),
        }

    start_trackers(accelerator, "student", to_dict(s), start)

    def generated_share(batches_done: int) -> float:
        """The share of generated samples in the run's first batches (exact: the mix is deterministic), so a
        resumed run records what an uninterrupted one does."""
        return consumed(batches_done, s.batch_size, s.ratio)[1] / max(1, batches_done * s.batch_size)

    def step(i: int):
        batch = next(batches)
        seed_step(s.seed, rank, i)
        x = batch["x"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        q = batch["q"].to(device, non_blocking=True)
        generated = batch["generated"].to(device)
        with accelerator.autocast():
            logits = model(x)
        loss, parts = mixed_loss(
            logits,
            mask,
            q,
            generated,
            labels=s.labels,
            ce_weight=s.ce_weight,
            kd_weight=s.kd_weight,
            temperature=s.kd_temperature,
            hard_weight=s.hard_weight,
            confidence_power=s.kd_confidence_power,
        )
        accelerator.backward(loss)
        return loss, {**parts, "generated_share": generated_share(i + 1)}

    spec = LoopSpec(
        f"student {s.arch}",
        s.max_steps,
        s.max_minutes,
        s.lr,
        s.warmup_steps,
        "cosine",
        0.01,
        1.0,
        s.log_every,
        s.checkpoint_every,
    )
    model.train()
    result = run_steps(
        accelerator,
        spec,
        start,
        optimizer,
        model.parameters(),
        step,
        checkpoint=lambda done, extra: save_checkpoint(
            accelerator, out, done, s.checkpoints_total_limit, model, optimizer, extra={**data_state(), **extra}
        ),
        total=total,
        progress=progress,
    )
    batches.close()  # stop DataLoader workers now: a multi-process run ends in os._exit
    final_state = data_state()
    write_rank_report(accelerator, out, model)
    write_train_record(accelerator, out, result)
    bad, bad_counts = final_state["bad_shards"], final_state["bad_counts"]
    if bad and accelerator.is_main_process:
        log.warning(
            "%d bad shard(s) or sample(s) skipped while streaming, in %d shard(s) (student.on_bad_shard=warn): %s",
            sum(bad_counts.values()),
            len(bad_counts),
            "; ".join(bad[:5]) + (" ..." if sum(bad_counts.values()) > 5 else ""),
        )

    if accelerator.is_main_process:
        info = {
            "arch": s.arch,
            "encoder": resolve_encoder(s.arch, s.encoder),
            "encoder_depth": s.encoder_depth,
            "classes": list(source.classes),
            "resolution": cfg.data.resolution,
            "crop": cfg.data.crop,
            # How scenes must look to this student at inference (scene/radiometry.py): the training data's
            # radiometric convention and, where the source states it, its pixel spacing.
            "radiometry": source.convention(),
            "pixel_spacing_m": source.pixel_spacing_m,
            "real": redact_url(cfg.data.spec),
            "synthetic": redact_url(synthetic) if s.ratio > 0 else None,
            "synthetic_fingerprint": gen_info.fingerprint if gen_info else None,
            "ratio": s.ratio if math.isfinite(s.ratio) else "inf",  # inf: generated samples only (strict JSON)
            "labels": s.labels if s.ratio > 0 else "none",
            "steps": result.steps,
            "batch_size_per_rank": s.batch_size,
            "ranks": world,
            "generated_share": generated_share(result.steps),
            "bad_shards": [redact_url(reason) for reason in bad],  # the first MAX_BAD_REASONS
            "bad_counts": bad_counts,
            **({"data_license": cfg.data.license} if cfg.data.license else {}),  # only when stated
        }
        info.update(_used_only(s, augment))
        save_student(out, accelerator.unwrap_model(model), info)
        evaluation = evaluate_written(accelerator, out, cfg, evaluate, result.steps) if evaluate else None
        write_student_card(out, evaluation)
        log.info("student written to %s (generated share %.3f)", out, info["generated_share"])
    accelerator.wait_for_everyone()
    return out


def _used_only(s: StudentConfig, augment: Augment | None) -> dict:
    """student.json's entries recorded only when used, so that earlier students' records stay as they were:
    the init weights, the instance bank, the augmentation and copy-paste."""
    out: dict = {}
    if s.init:
        out["init"] = redact_url(s.init)
    if s.instance_bank:
        out["instance_bank"] = {"url": redact_url(s.instance_bank), "size": s.instance_bank_size}
        paste = augment.copy_paste if augment is not None else None
        out["instance_bank"].update(getattr(paste, "read", None) or {})  # fingerprint, instances, last_key
    if augment is not None:
        out["augment"] = s.augment
        out["copy_paste"] = (
            {"target": s.copy_paste, "real": s.copy_paste_real, "generated": s.copy_paste_generated, "rule": PASTE_RULE}
            if s.copy_paste
            else None
        )
    return out


def evaluate_written(accelerator, out: Path, cfg: Config, split: str, step: int) -> dict:
    """Evaluate the written student on `split` of cfg.data.spec (student/evaluate.py), log the metrics to the
    trackers at the last step (eval/miou, eval/iou_CLASS, ...) and keep them in OUT/logs/eval.json (main process)."""
    import json

    from dakter_scale.student.evaluate import evaluate_student

    metrics = evaluate_student(str(out), cfg.data.spec, split, cfg.eval, device=str(accelerator.device))
    scalars = {
        f"eval/{name}": metrics[name] for name in ("miou", "mean_f1", "pixel_accuracy") if metrics.get(name) is not None
    }
    scalars.update({f"eval/iou_{c}": v for c, v in zip(metrics["classes"], metrics["iou"]) if v is not None})
    accelerator.log(scalars, step=step)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / "logs" / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log.info("student on %s [%s, %d images]: mIoU %.4f", metrics["data"], split, metrics["images"], metrics["miou"])
    return metrics
