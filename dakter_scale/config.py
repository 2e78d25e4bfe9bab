"""Typed, validated configuration for every stage, loaded from YAML with ``key=value`` overrides.

One YAML file holds a section per stage (``data``, ``diffusion``, ``sampling``, ``synthesis``,
``student``, ``eval``, ``experiment``, ``distill``); a job reads the sections it needs. Overrides use dotted paths relative to
the root (``student.lr=3e-4``, ``diffusion.unet.block_out_channels=[32,64]``); values are parsed as
YAML (1.2's booleans: only true and false; ``no`` is a string). Unknown keys and ill-typed values raise ``ConfigError`` naming the key and the file. The
resolved config is written next to every output with ``save_config``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import yaml

from dakter_scale.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be used; the message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# the trainers' mixed precision (diffusion, student, distill; training.resolve_mixed_precision reads auto)
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


def _check_mixed_precision(value: str, key: str) -> None:
    _check(
        value in MIXED_PRECISIONS, key, f"{value!r} is not {', '.join(MIXED_PRECISIONS[:-1])} or {MIXED_PRECISIONS[-1]}"
    )


def _check_budget(minutes: float, key: str) -> None:
    """A trainer's max_minutes: a wall-clock budget, 0 = none."""
    _check(minutes >= 0 and math.isfinite(minutes), key, f"must be >= 0 (0 = no time budget), got {minutes}")


def _check_grad_norm(norm: float, key: str) -> None:
    # training.run_steps clips only when > 0: a negative or NaN value would turn clipping off unseen
    _check(norm >= 0 and math.isfinite(norm), key, f"must be >= 0 (0 = no gradient clipping), got {norm}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class DataConfig:
    """Which real data, and how a training sample is cut from it."""

    spec: str = "synthetic:64"  # osd:PATH | sos:PATH | synthetic:N[?size=S&test=M&seed=X]
    resolution: int = 64  # side of the square patch every model sees
    crop: int = 0  # side of the random crop taken before resizing to `resolution`; 0 = whole image
    scale_min: float = 1.0  # random rescale of the crop side, as in common OSD practice (0.5 - 1.5)
    scale_max: float = 1.0
    flip: bool = True  # random horizontal and vertical flips
    stats_max_images: int = 2000  # images read to compute b = "auto" and the class fractions
    # The training data's licence (an SPDX or Hugging Face id, e.g. cc-by-4.0), stated in the cards of the
    # models, students and shard sets made from it; empty: "other", not stated (their terms are the data's).
    license: str = ""

    def validate(self) -> None:
        _check(bool(self.spec), "data.spec", "must name a dataset, e.g. synthetic:64 or osd:/path")
        _check(
            self.resolution >= 8 and self.resolution % 8 == 0,
            "data.resolution",
            f"must be a multiple of 8 and >= 8, got {self.resolution}",
        )
        _check(self.crop >= 0, "data.crop", f"must be >= 0, got {self.crop}")
        _check(
            0 < self.scale_min <= self.scale_max,
            "data.scale_min/scale_max",
            f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}",
        )
        _check(self.stats_max_images > 0, "data.stats_max_images", "must be > 0")
        _check(
            re.fullmatch(r"[a-z0-9][a-z0-9.+-]{0,63}", self.license) is not None or not self.license,
            "data.license",
            f"must be a licence id in lower case (e.g. cc-by-4.0, apache-2.0, other), got {self.license!r}",
        )


@dataclass(frozen=True)
class UNetConfig:
    """The diffusers UNet2DModel over 1 + K channels."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention: bool = False  # self-attention blocks at the lowest resolution
    norm_num_groups: int = 8
    dropout: float = 0.0

    def validate(self) -> None:
        _check(len(self.block_out_channels) >= 1, "diffusion.unet.block_out_channels", "needs at least one level")
        # first: the channel check below divides by it
        _check(self.norm_num_groups >= 1, "diffusion.unet.norm_num_groups", f"must be >= 1, got {self.norm_num_groups}")
        for c in self.block_out_channels:
            _check(
                c > 0 and c % self.norm_num_groups == 0,
                "diffusion.unet.block_out_channels",
                f"{c} is not a positive multiple of norm_num_groups={self.norm_num_groups}",
            )
        _check(self.layers_per_block >= 1, "diffusion.unet.layers_per_block", "must be >= 1")
        _check(0 <= self.dropout < 1, "diffusion.unet.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class DiffusionConfig:
    """The balanced joint DDPM and how it is trained."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    b: Union[str, float] = "auto"  # "auto" (RMS of images), "auto-std", or a number; 1.0 = no balancing
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear | squaredcos_cap_v2
    prediction_type: str = "epsilon"  # epsilon | v_prediction | sample: what the network predicts for the image channel
    label_prediction_type: str = "same"  # same | epsilon | v_prediction | sample: for the K label channels
    rescale_zero_terminal_snr: bool = False
    label_loss_weight: float = 1.0  # weight of the K label channels in the denoising MSE
    label_ce_weight: float = 0.0  # auxiliary CE between the decoded x0 label and the true mask
    max_steps: int = 1000
    # wall-clock budget in minutes (0 = none): train as many steps as fit, at most max_steps; the
    # count is measured over the first steps and fixed, so the LR schedule still completes
    max_minutes: float = 0.0
    batch_size: int = 32
    lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # gradient clipping; 0 = none
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay grows as (1 + u) / (10 + u) after u updates until ema_decay (core/steps.EMA)
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "auto"  # auto (bf16 on a GPU that has it, else no) | no | bf16 | fp16
    checkpoint_every: int = 0  # steps; 0 = only the final model folder
    checkpoints_total_limit: int = 2
    num_workers: int = 0
    seed: int = 0
    log_every: int = 50

    def validate(self) -> None:
        from dakter_scale.core.joint import resolve_b
        from dakter_scale.core.schedule import PREDICTION_TYPES

        self.unet.validate()
        if not (isinstance(self.b, str) and self.b in ("auto", "auto-std")):
            try:
                resolve_b(self.b, None)
            except ValueError as e:
                raise ConfigError(f"diffusion.b: {e}") from None
        _check(
            self.prediction_type in PREDICTION_TYPES,
            "diffusion.prediction_type",
            f"{self.prediction_type!r} is not one of {PREDICTION_TYPES}",
        )
        _check(
            self.label_prediction_type in PREDICTION_TYPES + ("same",),
            "diffusion.label_prediction_type",
            f"{self.label_prediction_type!r} is not same or one of {PREDICTION_TYPES}",
        )
        _check(
            self.beta_schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"),
            "diffusion.beta_schedule",
            f"{self.beta_schedule!r} is not linear, scaled_linear or squaredcos_cap_v2",
        )
        _check(self.seed >= 0, "diffusion.seed", f"must be >= 0, got {self.seed}")
        _check(self.num_workers >= 0, "diffusion.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.num_train_timesteps >= 10, "diffusion.num_train_timesteps", "must be >= 10")
        for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "checkpoints_total_limit"):
            _check(getattr(self, key) >= 1, f"diffusion.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.lr > 0, "diffusion.lr", "must be > 0")
        _check(
            self.warmup_steps >= 0 and self.weight_decay >= 0,
            "diffusion.warmup_steps/weight_decay",
            f"must be >= 0, got {self.warmup_steps}, {self.weight_decay}",
        )
        _check_budget(self.max_minutes, "diffusion.max_minutes")
        _check(0 <= self.ema_decay < 1, "diffusion.ema_decay", "must be in [0, 1)")
        _check_grad_norm(self.max_grad_norm, "diffusion.max_grad_norm")
        _check(self.checkpoint_every >= 0, "diffusion.checkpoint_every", "must be >= 0")
        _check_mixed_precision(self.mixed_precision, "diffusion.mixed_precision")
        _check(
            self.label_loss_weight >= 0 and self.label_ce_weight >= 0,
            "diffusion.label_loss_weight/label_ce_weight",
            f"must be >= 0, got {self.label_loss_weight}, {self.label_ce_weight}",
        )
        # Zero terminal SNR makes alpha_bar_T exactly 0: an epsilon prediction then gives no clean
        # estimate there (x0 = (z - sqrt(1 - a) eps) / sqrt(a) divides by 0; Lin et al. 2023 pair it with v)
        label = self.prediction_type if self.label_prediction_type == "same" else self.label_prediction_type
        _check(
            not self.rescale_zero_terminal_snr or "epsilon" not in (self.prediction_type, label),
            "diffusion.rescale_zero_terminal_snr",
            "needs v_prediction or sample for both modalities (prediction_type, label_prediction_type): "
            "with epsilon the clean estimate at the last timestep divides by alpha_bar_T = 0",
        )


# diffusion/sample.py builds each one's scheduler; "distilled" is a distilled model folder's own sampler
# (jobs/distill.py), which such a folder fixes (diffusion/model.sampling_for)
SAMPLERS = ("ddim", "ddpm", "dpmsolver++", "unipc", "distilled")
# jobs/distill.py's methods (diffusion/distill.py): progressive distillation, consistency distillation
DISTILL_METHODS = ("progressive", "consistency")
MULTISTEP_SAMPLERS = ("dpmsolver++", "unipc")  # the ones sampling.solver_order applies to
PRECISIONS = ("auto", "fp32", "bf16")  # sampling.precision (diffusion/sample.py)
COMPILE_MODES = ("reduce-overhead",)  # sampling.compile's torch.compile modes beside true and false: CUDA graphs
TRACKERS = ("none", "tensorboard", "mlflow", "wandb")  # --report-to: Accelerate's; none logs to the log only
GEOMETRIES = ("none", "flip", "d4")  # student.augment (student/augment.py)


def parse_sampler_entry(entry: str) -> dict[str, Any] | None:
    """A sampler study entry SAMPLER:STEPS[:ORDER] (ddim:50, dpmsolver++:20:3) as sampling.* values,
    or None when it is not one. ORDER only for the multistep solvers."""
    parts = entry.split(":")
    if len(parts) not in (2, 3) or parts[0] not in SAMPLERS or not parts[1].isdigit() or int(parts[1]) < 1:
        return None
    out: dict[str, Any] = {"sampler": parts[0], "steps": int(parts[1])}
    if len(parts) == 3:
        if parts[0] not in MULTISTEP_SAMPLERS or parts[2] not in ("1", "2", "3"):
            return None
        out["solver_order"] = int(parts[2])
    return out


@dataclass(frozen=True)
class SamplingConfig:
    """How pairs are drawn from a trained model and how soft labels are read out."""

    # ddim | ddpm | dpmsolver++ (DPM-Solver++ multistep, Lu et al. 2022) | unipc (UniPC, Zhao et al. 2023);
    # one network evaluation per step for each (docs/synthesis.md, "Samplers"; the frontier in docs/journal/results-history.md)
    # The default is the cheapest frontier point whose students were not worse than DDIM-50's beyond the
    # seed noise (docs/journal/results-history.md, "Sampler frontier"); configs that name a sampler keep theirs.
    sampler: str = "dpmsolver++"
    steps: int = 20  # denoising steps = network evaluations per pair, at most the model's num_train_timesteps
    solver_order: int = 2  # dpmsolver++ and unipc: order of the multistep solver (1-3); ddim and ddpm ignore it
    eta: float = 0.0  # DDIM stochasticity
    clip: bool = True  # clip x0 per modality: image to [-1, 1], labels to [-b, b]
    decode: str = "mean"  # mean (posterior mean) | softmax
    decode_tau: float = 0.5  # softmax decode temperature
    decode_last: int = 1  # average the decoded label over the last N steps
    # The network's arithmetic: auto = bf16 autocast on a CUDA device that has it, fp32 elsewhere (what every
    # set before this setting was written with); fp32; bf16 (autocast on any device). Part of a set's fingerprint.
    precision: str = "auto"
    # torch.compile the network in each writer: false | true (torch.compile's default mode) | reduce-overhead
    # (its CUDA graphs mode: the step's kernels replayed as one graph). Changes the floats: fingerprinted.
    compile: bool | str = False

    def validate(self) -> None:
        _check(self.sampler in SAMPLERS, "sampling.sampler", f"{self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        _check(self.steps >= 1, "sampling.steps", f"must be >= 1, got {self.steps}")
        _check(self.solver_order in (1, 2, 3), "sampling.solver_order", f"must be 1, 2 or 3, got {self.solver_order}")
        _check(self.decode in ("mean", "softmax"), "sampling.decode", f"{self.decode!r} is not mean or softmax")
        _check(self.decode_tau > 0, "sampling.decode_tau", "must be > 0")
        _check(1 <= self.decode_last <= self.steps, "sampling.decode_last", f"must be in [1, steps={self.steps}]")
        _check(0 <= self.eta <= 1, "sampling.eta", "must be in [0, 1]")
        _check(
            self.precision in PRECISIONS,
            "sampling.precision",
            f"{self.precision!r} is not one of {', '.join(PRECISIONS)}",
        )
        _check(
            isinstance(self.compile, bool) or self.compile in COMPILE_MODES,
            "sampling.compile",
            f"{self.compile!r} is not false, true or {', '.join(COMPILE_MODES)}",
        )

    def check_steps(self, num_train_timesteps: int) -> None:
        """Refuse more steps than the model's training timesteps (known once a model folder is)."""
        _check(
            self.steps <= num_train_timesteps,
            "sampling.steps",
            f"{self.steps} is more than the model's {num_train_timesteps} training timesteps",
        )


ROUTES = ("selection", "conditioned", "pasted")  # how synth/targeted.py meets a class target
MAX_DRAW_FACTOR = 20.0  # the selection route's default bound on the pairs drawn per pair kept
DRAWN_SUFFIX = "_all"  # a set's draw beside it, NAME_all: the selection route's (--draw-out's default) and, in a study, the filter's
# The student architectures by name (segmentation-models-pytorch class names; student/models.py builds
# them), here so that the config refuses an unknown one on load without importing torch or smp.
ARCHS = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}


@dataclass(frozen=True)
class TargetConfig:
    """Targeted synthesis (synth/targeted.py; docs/synthesis.md, "Targeted synthesis"): a class target
    and how it is met. jobs/synthesize.py's --class-target, --target-route, --max-draw-factor and
    --resample set the first four; the study runner reads the same keys (its dakter_target set, and the
    classes its copy-paste arms paste: study/plan.py)."""

    spec: str = ""  # CLASS:FACTORx or CLASS:SHARE entries (oil:3x,ship:3x; oil:0.05); "" = untargeted
    route: str = "selection"  # selection (from a larger draw) | conditioned (given composed maps) | pasted (around pasted real instances)
    max_draw_factor: float = MAX_DRAW_FACTOR  # selection: at most this many pairs drawn per pair kept
    resample: int = 1  # conditioned, pasted: each replaced step taken this many times (RePaint; ddim or ddpm)
    free_steps: int = 0  # conditioned, pasted: the last sampling steps run jointly, replacing nothing
    max_pastes: int = 8  # conditioned, pasted: donor masks pasted per class at most
    # pasted: the share of the sampling steps run jointly before the instances are placed, from the layout
    # the pair has by then (its x0_hat label: onto its sea, counting what it holds); 0: before sampling,
    # anywhere. 0.8 by measurement (docs/journal/results-history.md, "Placing the pasted instances"): the label estimate
    # shows oil only after about 60 % of the steps
    paste_at: float = 0.8
    by_component: bool = True  # pasted: a donor's instances one at a time, those that fit what is missing
    sea: bool = True  # pasted: each pasted image moved to the sea level of the pair being drawn

    def validate(self) -> None:
        # the spec's grammar is synth/target's (check_spec_grammar, before a study's work): it needs the model's classes
        _check(self.route in ROUTES, "synthesis.target.route", f"{self.route!r} is not one of {', '.join(ROUTES)}")
        _check(
            self.max_draw_factor >= 1 and math.isfinite(self.max_draw_factor),
            "synthesis.target.max_draw_factor",
            f"must be >= 1 (pairs drawn per pair kept), got {self.max_draw_factor}",
        )
        _check(self.resample >= 1, "synthesis.target.resample", f"must be >= 1, got {self.resample}")
        _check(self.free_steps >= 0, "synthesis.target.free_steps", f"must be >= 0, got {self.free_steps}")
        _check(self.max_pastes >= 1, "synthesis.target.max_pastes", f"must be >= 1, got {self.max_pastes}")
        _check(
            0.0 <= self.paste_at < 1.0,
            "synthesis.target.paste_at",
            f"must be a share of the sampling steps in [0, 1), got {self.paste_at}",
        )


@dataclass(frozen=True)
class BankConfig:
    """The instance bank (synth/bank.py; docs/synthesis.md, "Instance bank"): instances of these classes
    cut from generated pairs (4-connected components of the pixels whose soft label gives the class at
    least `threshold`, with `edge` pixels of soft edge) and kept where a real-only judge agrees."""

    classes: tuple[str, ...] = ("oil", "ship")  # the classes cut, by name
    threshold: float = 0.5  # a pixel belongs to a class's confident region where its probability reaches this
    edge: int = 2  # pixels of soft edge kept around each component, its soft label with it
    min_pixels: int = 2  # components smaller than this (pixels) are not cut
    min_agreement: float = 0.5  # the judge's IoU with the component needed to keep it (0: keep every one)
    max_pairs: int = 1_000_000  # a growing bank (synth/bank.grow_bank) draws at most this many pairs

    def validate(self) -> None:
        _check(
            len(self.classes) >= 1 and all(isinstance(c, str) and c for c in self.classes),
            "synthesis.bank.classes",
            f"must name at least one class, got {list(self.classes)}",
        )
        _check(0 < self.threshold <= 1, "synthesis.bank.threshold", f"must be in (0, 1], got {self.threshold}")
        _check(0 <= self.edge <= 16, "synthesis.bank.edge", f"must be in [0, 16] pixels, got {self.edge}")
        _check(self.min_pixels >= 1, "synthesis.bank.min_pixels", f"must be >= 1, got {self.min_pixels}")
        _check(
            0 <= self.min_agreement <= 1, "synthesis.bank.min_agreement", f"must be in [0, 1], got {self.min_agreement}"
        )
        _check(self.max_pairs >= 1, "synthesis.bank.max_pairs", f"must be >= 1, got {self.max_pairs}")


@dataclass(frozen=True)
class SynthesisConfig:
    """Sharded generation of image / soft-label pairs."""

    n: int = 64
    samples_per_shard: int = 1000
    batch_size: int = 32
    seed: int = 0
    actors: Union[int, str] = "auto"  # a number, or auto (one per GPU, else cpus // threads_per_actor)
    threads_per_actor: int = 1
    max_in_flight: int = 0  # shards submitted at once; 0 = 2 per actor
    retries: int = 2  # extra attempts per shard after a failure
    call_timeout_s: float = 0.0  # Ray: a shard still being written after this long is presumed hung (0: no limit)
    verify: str = "size"  # how a rerun checks finished shards: size | sha256
    divergence_threshold: float = 0.1  # warn when generated class fractions or confidence drift past this
    lease_seconds: float = 120.0  # a run's lock on its --out lapses this long after its last renewal (data/lease.py)
    # warn when the generated images' ENL is outside this factor of the training images' (recorded in
    # the model folder), or their grey-level histograms differ by more than this total variation
    enl_ratio_threshold: float = 2.0
    histogram_threshold: float = 0.25
    # warn when a class holding >= 0.1 % of the training pixels (or the target's) is generated at under
    # its share divided by this factor: the total variation cannot see a rare class vanish
    class_share_ratio_threshold: float = 3.0
    target: TargetConfig = field(default_factory=TargetConfig)
    bank: BankConfig = field(default_factory=BankConfig)

    def validate(self) -> None:
        self.target.validate()
        self.bank.validate()
        _check(self.n >= 1, "synthesis.n", f"must be a positive count, got {self.n}")
        _check(
            self.samples_per_shard >= 1, "synthesis.samples_per_shard", f"must be >= 1, got {self.samples_per_shard}"
        )
        _check(self.batch_size >= 1, "synthesis.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(
            self.actors == "auto" or (isinstance(self.actors, int) and self.actors >= 1),
            "synthesis.actors",
            f"must be auto or >= 1, got {self.actors!r}",
        )
        _check(self.seed >= 0, "synthesis.seed", f"must be >= 0, got {self.seed}")
        _check(self.threads_per_actor >= 1, "synthesis.threads_per_actor", "must be >= 1")
        _check(self.retries >= 0, "synthesis.retries", "must be >= 0")
        _check(self.max_in_flight >= 0, "synthesis.max_in_flight", "must be >= 0")
        _check(
            self.call_timeout_s >= 0,
            "synthesis.call_timeout_s",
            f"must be >= 0 (0: no limit), got {self.call_timeout_s}",
        )
        _check(self.verify in ("size", "sha256"), "synthesis.verify", f"{self.verify!r} is not size or sha256")
        _check(self.divergence_threshold > 0, "synthesis.divergence_threshold", "must be > 0")
        _check(
            10 <= self.lease_seconds <= 7 * 86400,
            "synthesis.lease_seconds",
            f"must be in [10, 604800] (the lock is renewed every quarter of it; data/lease.py MAX_LEASE_SECONDS), got {self.lease_seconds}",
        )
        _check(
            self.enl_ratio_threshold > 1,
            "synthesis.enl_ratio_threshold",
            f"must be > 1 (a factor), got {self.enl_ratio_threshold}",
        )
        _check(
            0 < self.histogram_threshold <= 1,
            "synthesis.histogram_threshold",
            f"must be in (0, 1] (a total variation), got {self.histogram_threshold}",
        )
        _check(
            self.class_share_ratio_threshold > 1,
            "synthesis.class_share_ratio_threshold",
            f"must be > 1 (a factor), got {self.class_share_ratio_threshold}",
        )


@dataclass(frozen=True)
class StudentConfig:
    """A segmentation-models-pytorch student trained on real + generated pairs."""

    arch: str = "unet"  # unet | deeplabv3plus | segformer | fpn | ... (any smp architecture)
    encoder: str = "auto"  # auto = a small encoder suited to the architecture
    encoder_weights: Union[str, None] = None  # None here: nothing can be downloaded; "imagenet" where it can
    encoder_depth: int = 5
    max_steps: int = 500
    max_minutes: float = 0.0  # wall-clock budget (0 = none): as many steps as fit, at most max_steps
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    ratio: float = 0.0  # generated samples per real sample (2.0 = 200 %)
    labels: str = "soft"  # soft (KD loss, DAKTer) | hard (argmax + CE, the DDPM / SatSynth baseline)
    kd_temperature: float = 1.0
    kd_weight: float = 1.0  # lambda: weight of the KD loss on generated soft labels
    ce_weight: float = 1.0  # weight of the CE on real masks
    hard_weight: Union[float, None] = None  # weight of the CE on generated hard labels (labels=hard); None = ce_weight
    kd_confidence_power: float = (
        0.0  # gamma: KD pixels weighted by (teacher max-prob)^gamma (labels=soft); 0 = plain mean
    )
    min_confidence: float = 0.0  # drop generated samples whose mean max-probability is below this
    max_generated: int = 0  # use only the first N generated pairs (0 = all): the paper's r * |D| distinct pairs
    shuffle_buffer: int = 256
    on_bad_shard: str = "warn"  # warn (skip it, count it) | raise
    verify_shards: str = "size"  # size (each tar's against its marker) | sha256 (its hash too: every tar read twice)
    num_workers: int = 0
    mixed_precision: str = "auto"
    checkpoint_every: int = 0
    checkpoints_total_limit: int = 2
    seed: int = 0
    log_every: int = 50
    # The per-sample augmentation (student/augment.py), the same for real and generated samples:
    # none | flip | d4 (a flip and a quarter turn). A study gives every arm the same one.
    augment: str = "none"
    # Copy-paste of real instances: a class target in the grammar of --class-target (oil:3x,ship:3x;
    # "" = off); the shares of real and of generated samples pasted.
    copy_paste: str = ""
    copy_paste_real: float = 0.5
    copy_paste_generated: float = 0.0
    # Copy-paste donors from an instance bank (synth/bank.py) instead of the real pairs: its URL ("" =
    # real donors), and how many of its instances (the first N in key order; 0 = all): the bank's size.
    instance_bank: str = ""
    instance_bank_size: int = 0
    # A student folder whose weights this student starts from ("" = fresh): fine-tuning a pretrained student.
    init: str = ""

    def validate(self) -> None:
        _check(self.arch in ARCHS, "student.arch", f"{self.arch!r} is not one of {', '.join(ARCHS)}")
        _check(bool(self.encoder), "student.encoder", "must name an smp encoder, or auto")
        _check(self.seed >= 0, "student.seed", f"must be >= 0, got {self.seed}")
        _check(self.labels in ("soft", "hard"), "student.labels", f"{self.labels!r} is not soft or hard")
        # inf: generated samples only (pretraining, study/plan.py pretrain_finetune)
        _check(self.ratio >= 0 and not math.isnan(self.ratio), "student.ratio", f"must be >= 0, got {self.ratio}")
        for key in ("max_steps", "batch_size", "log_every", "checkpoints_total_limit", "shuffle_buffer"):
            _check(getattr(self, key) >= 1, f"student.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.lr > 0, "student.lr", "must be > 0")
        _check_budget(self.max_minutes, "student.max_minutes")
        _check(self.kd_temperature > 0, "student.kd_temperature", "must be > 0")
        _check(
            self.kd_weight >= 0 and self.ce_weight >= 0,
            "student.kd_weight/ce_weight",
            f"must be >= 0, got {self.kd_weight}, {self.ce_weight}",
        )
        _check(self.hard_weight is None or self.hard_weight >= 0, "student.hard_weight", "must be >= 0 or null")
        _check(self.kd_confidence_power >= 0, "student.kd_confidence_power", "must be >= 0")
        _check(0 <= self.min_confidence <= 1, "student.min_confidence", "must be in [0, 1]")
        _check(self.max_generated >= 0, "student.max_generated", "must be >= 0")
        _check(
            self.on_bad_shard in ("warn", "raise"),
            "student.on_bad_shard",
            f"{self.on_bad_shard!r} is not warn or raise",
        )
        _check(
            self.verify_shards in ("size", "sha256"),
            "student.verify_shards",
            f"{self.verify_shards!r} is not size or sha256",
        )
        _check_mixed_precision(self.mixed_precision, "student.mixed_precision")
        _check(self.num_workers >= 0, "student.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.checkpoint_every >= 0, "student.checkpoint_every", "must be >= 0")
        _check(self.warmup_steps >= 0, "student.warmup_steps", "must be >= 0")
        _check(self.weight_decay >= 0, "student.weight_decay", "must be >= 0")
        _check(3 <= self.encoder_depth <= 5, "student.encoder_depth", "must be in [3, 5]")
        _check(self.augment in GEOMETRIES, "student.augment", f"{self.augment!r} is not one of {', '.join(GEOMETRIES)}")
        for key in ("copy_paste_real", "copy_paste_generated"):
            _check(
                0.0 <= getattr(self, key) <= 1.0,
                f"student.{key}",
                f"is a share of the samples in [0, 1], got {getattr(self, key)}",
            )
        _check(
            self.instance_bank_size >= 0, "student.instance_bank_size", f"must be >= 0, got {self.instance_bank_size}"
        )
        _check(
            not self.instance_bank or bool(self.copy_paste),
            "student.instance_bank",
            "pastes the instances of a class target: give student.copy_paste too, e.g. oil:3x,ship:3x",
        )


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"
    batch_size: int = 1  # test images per forward pass (same-size images only); larger is faster on a GPU
    pad_multiple: int = 32  # full images are reflect-padded to a multiple of this

    def validate(self) -> None:
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _check(self.pad_multiple >= 1, "eval.pad_multiple", "must be >= 1")


@dataclass(frozen=True)
class ExperimentConfig:
    """The paper's comparison (jobs/experiment.py): methods x students x ratios x seeds, plus studies."""

    archs: tuple[str, ...] = ("deeplabv3plus", "segformer", "unet")
    methods: tuple[str, ...] = (
        "none",
        "hard",
        "dakter",
        "dakter_b1",
    )  # the arms of study/plan.py's docstring (none | hard | hard_matched | dakter | dakter_b1 | ...)
    # Per-student KD weight lambda, e.g. [unet:1.0]; a student not listed uses the lambda chosen on
    # kd_weight_grid, else student.kd_weight. hard_matched (the control) gives hard labels the same
    # weight on generated data.
    kd_weights: tuple[str, ...] = ()
    # Choosing lambda on a validation split before the main table: for each student not in kd_weights,
    # one DAKTer student per grid value and kd_weight_seeds seed at `ratio`, scored on the test split
    # of validation_spec (other scenes than the experiment's test split, e.g.
    # synthetic:40?size=32&test=200&seed=7); the best mean mIoU wins (ties: the first grid value).
    validation_spec: str = ""
    kd_weight_grid: tuple[float, ...] = ()
    kd_weight_seeds: tuple[int, ...] = ()  # empty = seeds (the seeds of the whole validation grid)
    # Choosing the augmentation ratio on the validation split too: every main-table student's DAKTer
    # students at each ratio of the grid (times kd_weight_grid, if any) are scored on validation_spec;
    # the best (lambda, ratio) by mean mIoU is the student's setting in the main table.
    ratio_grid: tuple[float, ...] = ()
    ratio: float = 2.0  # the main table's augmentation ratio (2.0 = 200 %)
    sweep_archs: tuple[str, ...] = ("segformer",)  # students that get the full ratio sweep
    sweep_methods: tuple[str, ...] = ("hard", "dakter")
    sweep_ratios: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 5.0, 10.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    # More main-table seeds for some students, ARCH:SEED entries (e.g. [unet:3, unet:4]): their students
    # train after every student's `seeds`, and that student's cells and verdicts are over all its seeds
    more_seeds: tuple[str, ...] = ()
    sweep_seeds: tuple[int, ...] = ()  # seeds of the ratio sweep; empty = the same as seeds
    quality_pairs: int = 256  # generated pairs scored for label alignment and SAR statistics
    study_arch: str = "unet"  # the student of the sampler and decode studies
    study_ratio: float = 2.0
    study_seeds: tuple[int, ...] = (0,)
    # e.g. [ddpm:1000, ddim:50, dpmsolver++:20, dpmsolver++:20:3, unipc:10] (SAMPLER:STEPS[:SOLVER_ORDER]);
    # study_seeds: [] scores generation quality only (the frontier, docs/journal/results-history.md), without students
    sampler_study: tuple[str, ...] = ()
    decode_study: tuple[str, ...] = ()  # e.g. [mean:1, softmax:1, mean:5, softmax:5] (decode:last-N steps)
    figure_samples: int = 6
    # Label-alignment filter (dakter_scale/synth/filter.py): draw n / filter_keep pairs and keep the n
    # whose images the real-only filter_arch student (first seed) segments most like their labels.
    # 0 = no filter. The hard and soft students get the same kept pairs.
    filter_keep: float = 0.0
    filter_arch: str = "unet"
    # Targeted DAKTer (method dakter_target; dakter_scale/synth/targeted.py) takes its class target and
    # route from synthesis.target (spec, route, max_draw_factor, ...): the same number of pairs as dakter,
    # whose pooled class pixel shares meet synthesis.target.spec (e.g. "oil:3x,ship:3x"). No alignment filter.
    # copy_paste and dakter_copy_paste paste synthesis.target.spec's instances onto this share of the real samples
    copy_paste_share: float = 0.5
    # Choosing the student length on the validation split too (a grid of student.max_steps, crossed with
    # ratio_grid and kd_weight_grid); empty = student.max_steps.
    steps_grid: tuple[int, ...] = ()
    # The split every table student is scored on, once: the test split of this spec ("" = data.spec's).
    # A study that chooses anything (a grid) must choose it on validation_spec, which may not be this split.
    test_spec: str = ""
    # instance_paste: copy-paste of synthesis.target.spec's classes from an instance bank of generated instances
    # (generated/bank, synth/bank.py, judged by the real-only filter_arch student), one arm per bank size
    bank_sizes: tuple[int, ...] = ()
    # pretrain_finetune: this share of the student's steps on generated pairs alone (KD), the rest on real
    # scenes with copy-paste: the same total steps as every other arm
    pretrain_share: float = 0.5
    # Comparisons ("A-B", methods of COMPARISONS in study/analyse.py) added after this study's test scores
    # were read: their verdicts are marked exploratory in results.json and the reports, never confirmatory
    exploratory: tuple[str, ...] = ()

    def seeds_of(self, arch: str) -> tuple[int, ...]:
        """The main table's seeds of `arch`: seeds, then its more_seeds (validated ARCH:SEED entries)."""
        more = [int(seed) for name, _, seed in (entry.partition(":") for entry in self.more_seeds) if name == arch]
        return tuple(self.seeds) + tuple(more)

    def kd_weight(self, arch: str, default: float) -> float:
        """arch's KD weight from kd_weights (validated ARCH:WEIGHT entries), else default."""
        weights = {name: float(weight) for name, _, weight in (entry.partition(":") for entry in self.kd_weights)}
        return weights.get(arch, default)

    def validate(self) -> None:
        known = (
            "none",
            "hard",
            "hard_matched",
            "dakter",
            "dakter_b1",
            "dakter_target",
            "copy_paste",
            "copy_paste_matched",
            "pasted_after",
            "dakter_copy_paste",
            "instance_paste",
            "pretrain_finetune",
            "dakter_distilled",
        )
        for key in ("archs", "sweep_archs", "study_arch", "filter_arch"):
            value = getattr(self, key)
            for arch in (value,) if isinstance(value, str) else value:
                _check(arch in ARCHS, f"experiment.{key}", f"{arch!r} is not one of {', '.join(ARCHS)}")
        for key in ("seeds", "sweep_seeds", "study_seeds", "kd_weight_seeds"):
            _check(
                all(s >= 0 for s in getattr(self, key)),
                f"experiment.{key}",
                f"seeds must be >= 0, got {list(getattr(self, key))}",
            )
        _check(
            self.quality_pairs >= 1 and self.figure_samples >= 1,
            "experiment.quality_pairs/figure_samples",
            f"must be >= 1, got {self.quality_pairs}, {self.figure_samples}",
        )
        _check(
            0.0 <= self.filter_keep < 1.0,
            "experiment.filter_keep",
            f"{self.filter_keep} is not in [0, 1) (0 = no filter, 0.5 = keep the best-aligned half)",
        )
        for key in ("methods", "sweep_methods"):
            for m in getattr(self, key):
                _check(m in known, f"experiment.{key}", f"{m!r} is not one of {known}")
        for entry in self.exploratory:
            a, _, b = entry.partition("-")
            _check(
                a in self.methods and b in self.methods,
                "experiment.exploratory",
                f"{entry!r} is not A-B with A and B among experiment.methods",
            )
        _check(
            "instance_paste" not in self.methods + self.sweep_methods or bool(self.bank_sizes),
            "experiment.bank_sizes",
            "method instance_paste needs the bank sizes to try, e.g. [1000, 10000]",
        )
        _check(
            all(n >= 1 for n in self.bank_sizes),
            "experiment.bank_sizes",
            f"bank sizes are instance counts >= 1, got {list(self.bank_sizes)}",
        )
        _check(
            0 < self.pretrain_share < 1,
            "experiment.pretrain_share",
            f"is a share of the student's steps in (0, 1), got {self.pretrain_share}",
        )
        _check(
            0.0 < self.copy_paste_share <= 1.0,
            "experiment.copy_paste_share",
            f"is a share of the real samples in (0, 1], got {self.copy_paste_share}",
        )
        _check(
            all(n >= 1 for n in self.steps_grid),
            "experiment.steps_grid",
            f"student lengths must be >= 1, got {list(self.steps_grid)}",
        )
        _check(
            not self.steps_grid or bool(self.validation_spec),
            "experiment.validation_spec",
            "steps_grid chooses the student length on a validation split: give its data spec",
        )
        # the filter's judge (the real-only student, a table student too) trains before the grid has chosen
        # the length, so the table would reuse it at student.max_steps, not at the length chosen
        _check(
            not (self.steps_grid and self.filter_keep > 0),
            "experiment.filter_keep",
            "the filter's judge is trained before steps_grid chooses the student length: use one of the two",
        )
        _check(
            len(self.seeds) >= 1 and len(self.archs) >= 1,
            "experiment.seeds/archs",
            f"need at least one, got {list(self.seeds)}, {list(self.archs)}",
        )
        _check(
            self.ratio > 0 and all(r > 0 for r in self.sweep_ratios),
            "experiment.ratio/sweep_ratios",
            f"must be > 0, got {self.ratio}, {list(self.sweep_ratios)}",
        )
        students = set(self.archs) | set(self.sweep_archs) | {self.study_arch}
        for entry in self.kd_weights:
            arch, _, weight = entry.partition(":")
            _check(
                bool(arch) and _is_number(weight) and float(weight) >= 0,
                "experiment.kd_weights",
                f"{entry!r} is not ARCH:WEIGHT with a weight >= 0 (e.g. unet:1.0)",
            )
            _check(
                arch in students,
                "experiment.kd_weights",
                f"{arch!r} is not a student of this experiment ({', '.join(sorted(students))})",
            )
        for entry in self.more_seeds:
            arch, _, seed = entry.partition(":")
            _check(
                arch in self.archs and seed.isdigit(),
                "experiment.more_seeds",
                f"{entry!r} is not ARCH:SEED with ARCH one of {', '.join(self.archs)} and a seed >= 0 (e.g. unet:3)",
            )
            _check(
                int(seed) not in self.seeds,
                "experiment.more_seeds",
                f"{entry!r}: seed {seed} is already one of experiment.seeds {list(self.seeds)}",
            )
        _check(
            len(set(self.more_seeds)) == len(self.more_seeds),
            "experiment.more_seeds",
            f"an entry is given twice: {list(self.more_seeds)}",
        )
        _check(
            all(w >= 0 for w in self.kd_weight_grid),
            "experiment.kd_weight_grid",
            f"weights must be >= 0, got {list(self.kd_weight_grid)}",
        )
        _check(
            not self.kd_weight_grid or bool(self.validation_spec),
            "experiment.validation_spec",
            "kd_weight_grid chooses lambda on a validation split: give its data spec",
        )
        _check(
            all(r > 0 for r in self.ratio_grid),
            "experiment.ratio_grid",
            f"ratios must be > 0, got {list(self.ratio_grid)}",
        )
        _check(
            not self.ratio_grid or bool(self.validation_spec),
            "experiment.validation_spec",
            "ratio_grid chooses the ratio on a validation split: give its data spec",
        )
        for entry in self.sampler_study:
            _check(
                parse_sampler_entry(entry) is not None,
                "experiment.sampler_study",
                f"{entry!r} is not SAMPLER:STEPS or SAMPLER:STEPS:ORDER with a sampler of {', '.join(SAMPLERS)} (ORDER 1-3 for {' and '.join(MULTISTEP_SAMPLERS)})",
            )
        for entry in self.decode_study:
            name, _, last = entry.partition(":")
            _check(
                name in ("mean", "softmax") and last.isdigit() and int(last) >= 1,
                "experiment.decode_study",
                f"{entry!r} is not mean:N or softmax:N",
            )


@dataclass(frozen=True)
class DistillConfig:
    """Distillation of a model folder's sampler (jobs/distill.py; docs/synthesis.md, "Distilled samplers").
    progressive: each round halves the steps and trains a student that starts from its teacher's weights;
    the settings below apply to every round. consistency: one run trains a consistency model, started from
    the teacher's weights, on the teacher's DDIM grid of teacher_steps levels; it samples at `steps` (and at
    any step count whose grid lies on that one)."""

    method: str = "progressive"  # progressive (Salimans & Ho 2022) | consistency (Song et al. 2023); docs/synthesis.md
    steps: int = 4  # the distilled sampler's steps = network evaluations per pair
    # DDIM steps of the undistilled teacher, 0 = 2 * steps. progressive: steps * 2^k (one round per halving);
    # consistency: the grid it learns on, a multiple of steps (Song et al.'s N)
    teacher_steps: int = 0
    max_steps: int = 2000  # optimiser steps per round (consistency: of its one run)
    max_minutes: float = 0.0  # wall-clock budget per round (0 = none), as diffusion.max_minutes
    batch_size: int = 32
    lr: float = 5e-5
    warmup_steps: int = 0
    lr_schedule: str = "cosine"  # cosine | constant (core/steps.lr_factor)
    max_grad_norm: float = 1.0  # gradient clipping; 0 = none
    ema_decay: float = 0.999  # the EMA of the student's weights: what the distilled folder holds
    ema_warmup: bool = True
    # consistency only: the target network theta- = this EMA of the student (Song et al. 2023's mu, 0.95 in
    # their CD runs), without warm-up, from the teacher's weights; 0 = the student itself (stop-gradient)
    target_ema_decay: float = 0.95
    # class-balanced distillation: each pixel's squared error weighted by its real class's share f_c of the
    # training pixels as f_c^-p (normalised to mean 1 over those pixels), so a rare class's pixels count
    # more; 0 = the plain method (docs/synthesis.md, "Distilled samplers": rare classes fade with each halving)
    class_balance: float = 0.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "auto"
    checkpoint_every: int = 0
    checkpoints_total_limit: int = 2
    num_workers: int = 0
    seed: int = 0
    log_every: int = 50

    def validate(self) -> None:
        _check(
            self.method in DISTILL_METHODS,
            "distill.method",
            f"{self.method!r} is not progressive or consistency",
        )
        _check(self.steps >= 1, "distill.steps", f"must be >= 1, got {self.steps}")
        _check(self.teacher_steps >= 0, "distill.teacher_steps", f"must be >= 0, got {self.teacher_steps}")
        for key in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every", "checkpoints_total_limit"):
            _check(getattr(self, key) >= 1, f"distill.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.lr > 0, "distill.lr", "must be > 0")
        _check(self.warmup_steps >= 0, "distill.warmup_steps", "must be >= 0")
        _check(self.lr_schedule in ("cosine", "constant"), "distill.lr_schedule", "must be cosine or constant")
        _check_budget(self.max_minutes, "distill.max_minutes")
        _check(0 <= self.ema_decay < 1, "distill.ema_decay", "must be in [0, 1)")
        _check_grad_norm(self.max_grad_norm, "distill.max_grad_norm")
        _check(0 <= self.target_ema_decay < 1, "distill.target_ema_decay", "must be in [0, 1)")
        _check(0 <= self.class_balance <= 1, "distill.class_balance", f"must be in [0, 1], got {self.class_balance}")
        _check(
            self.checkpoint_every >= 0 and self.num_workers >= 0,
            "distill.checkpoint_every/num_workers",
            f"must be >= 0, got {self.checkpoint_every}, {self.num_workers}",
        )
        _check(self.seed >= 0, "distill.seed", f"must be >= 0, got {self.seed}")
        _check_mixed_precision(self.mixed_precision, "distill.mixed_precision")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> "Config":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        methods = set(self.experiment.methods + self.experiment.sweep_methods)
        targeted = sorted(methods & {"dakter_target"})
        pasting = sorted(
            methods & {"copy_paste", "pasted_after", "dakter_copy_paste", "instance_paste", "pretrain_finetune"}
        )
        _check(
            not (targeted or pasting) or bool(self.synthesis.target.spec.strip()),
            "synthesis.target.spec",
            f"methods {', '.join(targeted + pasting)} need a class target (what dakter_target meets and the"
            " copy-paste arms paste), e.g. oil:3x,ship:3x",
        )
        return self

    def replace(self, **sections: Any) -> "Config":
        """A copy with whole sections or dotted keys replaced: cfg.replace(**{"student.lr": 1e-3})."""
        return from_dict(merge(to_dict(self), _dotted_to_nested(sections)), "replace()").validate()


# -- dict <-> dataclass --------------------------------------------------------------------------


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r} ({source})")
        return _build(tp, value, key, source)
    if origin in (Union, types.UnionType):
        # Try the more specific members first so "0.5" -> float and "auto" -> str.
        for member in sorted(typing.get_args(tp), key=lambda t: t is str):
            try:
                return _coerce(value, member, key, source)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} matches none of {tp} ({source})")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r} ({source})")
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(v, inner, key, source) for v in value)
    if tp not in _SCALARS:
        raise ConfigError(f"{key}: unsupported config type {tp}")  # an internal error: extend _SCALARS
    expected, convert = _SCALARS[tp]
    out = convert(value)
    if out is _NOT:
        raise ConfigError(f"{key}: expected {expected}, got {value!r} ({source})")
    return out


_NOT = object()  # a scalar converter's "not of this type" (None is a value: the null type's)


def _to_null(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and value.lower() in ("none", "null")) else _NOT


def _to_int(value: Any) -> Any:
    if isinstance(value, bool):  # a bool is an int to Python, never to a config
        return _NOT
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return _NOT
    return int(value) if isinstance(value, float) and math.isfinite(value) and value.is_integer() else _NOT


def _to_float(value: Any) -> Any:
    if isinstance(value, bool):
        return _NOT
    try:
        return float(value)
    except (TypeError, ValueError):
        return _NOT


# the scalar types a config field may have: what a wrong value is told it should be, and the converter
_SCALARS: dict[Any, tuple[str, Callable[[Any], Any]]] = {
    type(None): ("null", _to_null),
    bool: ("true or false", lambda v: v if isinstance(v, bool) else _NOT),
    int: ("an integer", _to_int),
    float: ("a number", _to_float),
    str: ("a string", lambda v: str(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else _NOT),
}


def _build(cls: type, values: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        if f"{where}{unknown[0]}" in MOVED_KEYS:
            raise ConfigError(f"{where}{unknown[0]} is now {MOVED_KEYS[where + unknown[0]]} ({source})")
        raise ConfigError(f"unknown config key {where}{unknown[0]} ({source}); known keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, source)
    return cls(**kwargs)


# Keys that moved: a config that still holds one (a config file, a model folder's or study's saved
# config.yaml, results.json) is read with it moved (migrate_keys) and a warning naming the new key.
MOVED_KEYS = {
    "experiment.class_target": "synthesis.target.spec",
    "experiment.target_route": "synthesis.target.route",
    "experiment.max_draw_factor": "synthesis.target.max_draw_factor",
}


def migrate_keys(values: dict) -> tuple[dict, list[str]]:
    """A saved config's values with MOVED_KEYS moved to their new place: a value other than the key's
    default replaces the new key's, a default one is dropped (saved configs hold every key). Returns
    (values, the old keys found)."""
    out, found = copy.deepcopy(values), []
    for old, new in MOVED_KEYS.items():
        section, _, key = old.partition(".")
        if key in (out.get(section) or {}):
            value = out[section].pop(key)
            found.append(old)
            if value != _default(new):
                out = merge(out, _dotted_to_nested({new: value}))
    return out, found


def _default(dotted: str) -> Any:
    node: Any = Config()
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def from_dict(values: dict, source: str = "<dict>") -> Config:
    return _build(Config, values or {}, "", source)


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _dotted_to_nested(flat: dict) -> dict:
    nested: dict = {}
    for dotted, value in flat.items():
        parts = dotted.split(".")
        node = nested
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return nested


class _Loader(yaml.SafeLoader):
    """yaml.safe_load's loader with only true and false as booleans, as in YAML 1.2: YAML 1.1's yes, no, on
    and off would turn diffusion.mixed_precision=no into False. yaml.safe_dump quotes those strings, so a
    saved config reads the same either way."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """["student.lr=1e-3", "data.flip=false"] -> nested dict; values parsed as YAML."""
    flat = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. student.lr=1e-3)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = _load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        flat[key] = value
    return _dotted_to_nested(flat)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), flags: dict[str, Any] | None = None
) -> Config:
    """Defaults <- YAML file <- overrides <- flags ({dotted key: value}, a job's flags: values as given), validated."""
    values: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = _load_yaml(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        values = loaded or {}
        source = str(p)
    if overrides:
        values = merge(values, parse_overrides(overrides))
        source += " + overrides"
    if flags:
        values = merge(values, _dotted_to_nested(flags))
        source += " + flags"
    values, moved = migrate_keys(values)
    for key in moved:  # e.g. a model folder's config.yaml saved before the key moved
        logging.getLogger("dakter_scale").warning("%s: %s is now %s; read there", source, key, MOVED_KEYS[key])
    return from_dict(values, source).validate()


def save_config(cfg: Config, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to an output (a local folder)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_text(dump_config(cfg))
    return path


def dump_config(cfg: Config) -> str:
    """The config as YAML, as printed and saved beside outputs: credentials in a URL are hidden."""
    from dakter_scale.data.storage import redact_url

    return redact_url(yaml.safe_dump(to_dict(cfg), sort_keys=False))
