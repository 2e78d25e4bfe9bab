"""Draw (SAR image, soft label) pairs from a joint diffusion model.

Every sample owns a ``torch.Generator`` seeded from its own seed: its starting noise and every
step's noise come from it alone, so a pair does not depend on which batch it was drawn in and can
be regenerated on its own from its seed.

At each step the network output is turned into a clean-sample estimate x0_hat, clipped per
modality (image to [-1, 1], labels to [-b, b]; without it epsilon-prediction samplers diverge, see
PAPER.md pitfalls), and handed to the diffusers scheduler:
  ddim, ddpm          as the noise consistent with the clipped x0_hat (prediction_type epsilon);
  dpmsolver++, unipc  as the clipped x0_hat itself (prediction_type sample): both integrate the data
                      prediction (DPM-Solver++, Lu et al. 2022, Alg. 2; UniPC with predict_x0, Zhao et
                      al. 2023), so handing them x0 makes the clipped estimate exactly what they use,
                      where an eps would be turned back into x0 with their own alpha_t, sigma_t.
  distilled           a model folder written by jobs/distill.py. Progressive: deterministic DDIM on the
                      timesteps it was distilled for (core/distill.py), x0_hat clipped at the last step only
                      (the distillation target of an inner step is the x0 whose step lands on the teacher's
                      two, which may lie outside the range); on an undistilled model, DDIM on the distillation
                      grid clipped at every step: the first round's teacher (``grid_step``). Consistency:
                      multistep consistency sampling (Song et al. 2023, Algorithm 1) on the grid of the
                      steps asked for (``consistency_step``): x0 = f(z, t), clipped at every step, since each
                      is a finished sample that the next level starts from (as the paper's sampler clips
                      it), then z = alpha_s x0 + sigma_s eps at the next level with fresh noise from the
                      pair's generator; the last step's x0 is the pair.
The multistep solvers and the progressive distilled sampler are deterministic: a pair's only randomness
is its starting noise. The soft
label is the decoded label part of x0_hat at the last step, or its average over the last
``decode_last`` steps.

With ``given_label`` the image is drawn given a label map (replacement conditioning: Song et al.
2021, "Score-based generative modeling through SDEs", imputation; Lugmayr et al. 2022, RePaint): after
every step the label channels are replaced by the given label forward-noised to the next step's
noise level, so the joint model needs no retraining. The soft label is still the model's own
estimate (the decoded x0_hat label channels), not the given map. Replacement alone lets the image
ignore small given structures (a ship of a few pixels); RePaint's resampling (``resample`` = u)
takes each replaced step u times, forward-noising the result back to the step's own level in
between (q(z_t | z_t'), a per-pair draw), so the image gets u chances to agree with the label.
It needs a sampler without memory between steps (ddim, ddpm).

With ``given_image`` as well, and ``given_where``, both modalities are given, at some pixels only
(RePaint's inpainting, over the joint): at the pixels given_where marks, image and label channels
are replaced by the given pair forward-noised; everywhere else the pair is drawn jointly, so the
model paints the rest around what is given and harmonises the edges. The targeted route `pasted`
(synth/targeted.py) gives real instances of rare classes this way: the image then shows what the
label says, because both are real at those pixels. A slick is dark against its own sea, so with
``given_sea`` (the given image's own sea level at each given pixel) the given image is moved, after
every step, to the sea level of the pair being drawn (the median of x0_hat's image where its label
says sea and nothing is given): the images are dB-scaled, so a shift keeps each pasted slick's
contrast against its sea. With ``place`` and ``given_at`` = k, what is given is decided after the
first k steps, from their clean estimate: the pasted route places its instances on the layout (land,
look-alikes, slicks) those steps drew, onto its sea.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from dakter_scale.config import SAMPLERS, SamplingConfig
from dakter_scale.core.distill import ddim_step, distill_timesteps, next_alpha_bar
from dakter_scale.core.joint import clip_x0
from dakter_scale.core.schedule import add_noise, eps_from_x0, joint_to_x0_eps
from dakter_scale.core.soft_labels import decode
from dakter_scale.diffusion.model import (
    CONSISTENCY,
    JointDiffusion,
    distilled_grid,
    distilled_method,
    distilled_timesteps,
)


@dataclass
class Samples:
    images: torch.Tensor  # (N, 1, H, W) float in [-1, 1]
    q: torch.Tensor  # (N, K, H, W) probabilities, sum to 1 over K


class GridSchedule:
    """The `distilled` sampler's steps on a distillation grid (core.distill), the level each step lands on
    the next grid point (the clean end, abar = 1, after the last): DDIM (eta 0), or with `consistency`
    multistep consistency sampling. clip_every_step: clip x0_hat at every step (an undistilled model's
    DDIM, the first round's teacher; a consistency model) or at the last only (a progressive folder's own
    steps)."""

    def __init__(
        self, alphas_cumprod: torch.Tensor, timesteps: list[int], clip_every_step: bool, consistency: bool = False
    ):
        self.alphas_cumprod = alphas_cumprod
        self.timesteps = torch.tensor(timesteps, dtype=torch.long)
        self.clip_every_step = clip_every_step
        self.consistency = consistency
        self._next = dict(zip(timesteps, next_alpha_bar(alphas_cumprod, timesteps).tolist()))

    def next_alpha_bar(self, t: torch.Tensor) -> float:
        return self._next[int(t)]


def grid_schedule(model: JointDiffusion, steps: int) -> GridSchedule:
    """A progressive folder's own grid (its step count checked), a consistency folder's grid of `steps`
    steps (on the grid it was trained on), or the undistilled model's DDIM on the distillation grid of
    `steps` steps."""
    num_train = model.scheduler.config.num_train_timesteps
    if distilled_method(model.info) == CONSISTENCY:
        timesteps = distilled_grid(model.info, num_train, steps)
        if timesteps is None:
            raise ValueError(f"this consistency model's grid has no {steps} steps on the grid it was trained on")
        return GridSchedule(model.scheduler.alphas_cumprod, timesteps, clip_every_step=True, consistency=True)
    recorded = distilled_timesteps(model.info)
    if recorded is not None and len(recorded) != steps:
        raise ValueError(f"this model was distilled for {len(recorded)} steps, not {steps}")
    timesteps = recorded or distill_timesteps(num_train, steps)
    return GridSchedule(model.scheduler.alphas_cumprod, timesteps, clip_every_step=recorded is None)


def clean_estimate(
    model: JointDiffusion,
    z: torch.Tensor,
    t: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    precision: str = "fp32",
    unet=None,
) -> torch.Tensor:
    """The network's clean estimate x0_hat (N, 1+K, H, W) of z (N, 1+K, H, W) at timesteps t (N,) with abar
    alpha_bar_t (N,), unclipped, in the model's parameterisation: a consistency model's f(z, t). unet:
    another network than model.unet (a student, a target network) with the model's parameterisation."""
    with _autocast(z.device, precision):
        output = (unet or model.unet)(z, t).sample.float()
    return joint_to_x0_eps(output, z, alpha_bar_t, model.prediction_type, model.label_prediction_type)[0]


def grid_step(
    model: JointDiffusion,
    z: torch.Tensor,
    t: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    alpha_bar_s: torch.Tensor,
    clip_every_step: bool,
    clip: bool = True,
    precision: str = "fp32",
    unet=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step on a distillation grid, per pair: z (N, 1+K, H, W) at timesteps t (N,) with abar
    alpha_bar_t (N,) -> (z at alpha_bar_s (N,), x0_hat). x0_hat is clipped per modality (with `clip`)
    at every step, or, without clip_every_step, where the step reaches the clean end (abar_s = 1).
    The sampler and the distillation's teacher both take their steps here. unet: another network
    than model.unet (a student being trained) with the model's parameterisation."""
    x0 = clean_estimate(model, z, t, alpha_bar_t, precision, unet)
    if clip:
        where = torch.ones_like(alpha_bar_s, dtype=torch.bool) if clip_every_step else alpha_bar_s >= 1.0
        x0 = torch.where(where.view(-1, 1, 1, 1).to(x0.device), clip_x0(x0, model.b), x0)
    return ddim_step(z, x0, alpha_bar_t, alpha_bar_s), x0


def consistency_step(
    model: JointDiffusion,
    z: torch.Tensor,
    t: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    alpha_bar_s: torch.Tensor,
    noise: torch.Tensor | None,
    clip: bool = True,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of multistep consistency sampling (Song et al. 2023, Algorithm 1), per pair: z (N, 1+K, H, W)
    at timesteps t (N,) with abar alpha_bar_t (N,) -> (z at alpha_bar_s (N,), x0). x0 = f(z, t), clipped per
    modality with `clip`; the next level's z is x0 forward-noised with `noise` (N, 1+K, H, W), fresh from
    the pairs' generators, or x0 itself at the clean end (abar_s = 1, where noise may be None)."""
    x0 = clean_estimate(model, z, t, alpha_bar_t, precision)
    if clip:
        x0 = clip_x0(x0, model.b)
    return (x0 if noise is None else add_noise(x0, noise, alpha_bar_s)), x0


def sampling_scheduler(model: JointDiffusion, cfg: SamplingConfig):
    """A fresh scheduler for one batch (the multistep solvers keep past outputs), with `trailing`
    timesteps: every sampler starts at the last training timestep."""
    cfg.check_steps(model.scheduler.config.num_train_timesteps)
    if cfg.sampler == "distilled":
        return grid_schedule(model, cfg.steps)
    # As keyword arguments, not keys of the config: from_config drops the keys a scheduler built in memory
    # lists as defaulted (_use_default_values), timestep_spacing among them, so only loaded ones kept them.
    base = model.scheduler.config
    fixed = dict(clip_sample=False, timestep_spacing="trailing")
    if cfg.sampler == "ddim":
        sched = DDIMScheduler.from_config(base, set_alpha_to_one=True, prediction_type="epsilon", **fixed)
    elif cfg.sampler == "ddpm":
        sched = DDPMScheduler.from_config(base, prediction_type="epsilon", **fixed)
    elif cfg.sampler == "dpmsolver++":
        sched = DPMSolverMultistepScheduler.from_config(
            base, algorithm_type="dpmsolver++", solver_order=cfg.solver_order, prediction_type="sample", **fixed
        )
    elif cfg.sampler == "unipc":
        sched = UniPCMultistepScheduler.from_config(
            base, predict_x0=True, solver_order=cfg.solver_order, prediction_type="sample", **fixed
        )
    else:
        raise ValueError(f"unknown sampler {cfg.sampler!r}; expected one of {SAMPLERS}")
    sched.set_timesteps(cfg.steps)
    return sched


def _pair_noise(gens, shape, device) -> torch.Tensor:
    """(N, *shape) standard normal noise, row i drawn from pair i's own generator."""
    return torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])


def check_resample(resample: int, sampler: str) -> None:
    """RePaint's resampling takes a step again from its own level: only samplers whose steps keep no
    state between calls can do that."""
    if resample < 1 or (resample > 1 and sampler not in ("ddim", "ddpm")):
        raise ValueError(
            f"resample must be an integer >= 1, and > 1 only with the ddim or ddpm sampler (the multistep solvers keep past steps), got {resample} with {sampler}"
        )


def _step(
    model: JointDiffusion,
    sched,
    cfg: SamplingConfig,
    z: torch.Tensor,
    t: torch.Tensor,
    alpha_bar: torch.Tensor,
    gens,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sampler step: z_t (N, 1+K, H, W) -> (z at the next level, the clipped clean estimate x0_hat)."""
    device = z.device
    if cfg.sampler == "distilled":
        n = z.shape[0]
        a_s = torch.full((n,), sched.next_alpha_bar(t), device=device)
        t_n = t.to(device).expand(n)
        if sched.consistency:
            noise = _pair_noise(gens, z.shape[1:], device) if sched.next_alpha_bar(t) < 1.0 else None
            return consistency_step(model, z, t_n, alpha_bar[t_n], a_s, noise, cfg.clip, precision)
        return grid_step(model, z, t_n, alpha_bar[t_n], a_s, sched.clip_every_step, cfg.clip, precision)
    with _autocast(device, precision):
        output = model.unet(z, t.to(device)).sample.float()
    a = alpha_bar[t].expand(z.shape[0])
    x0, eps = joint_to_x0_eps(output, z, a, model.prediction_type, model.label_prediction_type)
    if cfg.clip:
        x0 = clip_x0(x0, model.b)
        eps = eps_from_x0(x0, z, a)
    if cfg.sampler == "ddim":
        noise = None
        if cfg.eta > 0:
            noise = _pair_noise(gens, z.shape[1:], device)
        return sched.step(eps, t, z, eta=cfg.eta, variance_noise=noise).prev_sample, x0
    if cfg.sampler == "ddpm":
        return sched.step(eps, t, z, generator=gens).prev_sample, x0
    return sched.step(x0, t, z).prev_sample, x0


@dataclass
class _Given:
    """What a batch is drawn given: clean channels first: of z (label only: first = 1; image and
    label: first = 0), at the pixels `where` marks (None: every pixel); `sea`: the given image's own
    sea level at each given pixel, to move it to the drawn pair's (None: as given)."""

    x0: torch.Tensor  # (N, C - first, H, W)
    first: int
    where: torch.Tensor | None  # (N, 1, H, W) bool
    sea: torch.Tensor | None = None  # (N, 1, H, W)

    @classmethod
    def of(
        cls,
        device,
        given_label: torch.Tensor | None,
        given_image: torch.Tensor | None = None,
        given_where: torch.Tensor | None = None,
        given_sea: torch.Tensor | None = None,
    ) -> "_Given":
        """From sample_pairs' given_* arguments (checked here, for both ways they arrive)."""
        if (given_image is None) != (given_where is None) or (given_image is not None and given_label is None):
            raise ValueError("given_image needs given_where and given_label (a pair given at some pixels)")
        if given_sea is not None and given_image is None:
            raise ValueError("given_sea is the sea level of a given_image")
        label = given_label.to(device=device, dtype=torch.float32)
        if given_image is None:
            return cls(label, 1, None)
        sea = None if given_sea is None else given_sea.to(device=device, dtype=torch.float32)
        return cls(
            torch.cat([given_image.to(device=device, dtype=torch.float32), label], dim=1),
            0,
            given_where.to(device=device, dtype=torch.bool),
            sea,
        )

    def values(self, x0_hat: torch.Tensor | None) -> torch.Tensor:
        """The clean given channels; with `sea` and an estimate x0_hat (N, C, H, W) of the pair, the
        image moved to x0_hat's sea level (pairs where it has none keep theirs)."""
        if self.sea is None or x0_hat is None:
            return self.x0
        level = sea_level(x0_hat, self.where)
        shift = torch.where(torch.isnan(level), torch.zeros_like(self.sea), level - self.sea)
        return torch.cat([(self.x0[:, :1] + shift).clamp(-1.0, 1.0), self.x0[:, 1:]], dim=1)

    def replace(
        self, z: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, x0_hat: torch.Tensor | None = None
    ) -> None:
        """z's given channels (in place) <- the given values forward-noised to alpha_bar with `noise`."""
        noised = add_noise(self.values(x0_hat), noise, alpha_bar)
        z[:, self.first :] = noised if self.where is None else torch.where(self.where, noised, z[:, self.first :])


def sea_level(x0_hat: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(N, 1, 1, 1): per pair, the median image value of x0_hat (N, 1 + K, H, W) over the pixels not
    given (where (N, 1, H, W)) whose label estimate is sea (class 0); NaN where there are none."""
    sea = (x0_hat[:, 1:].argmax(dim=1, keepdim=True) == 0) & ~where
    image = torch.where(sea, x0_hat[:, :1], torch.full_like(x0_hat[:, :1], float("nan")))
    return image.flatten(1).nanmedian(dim=1).values.view(-1, 1, 1, 1)  # one batched call: no per-pair device sync


def compile_network(unet, setting: bool | str):
    """The network as sampling.compile runs it: unchanged (false), torch.compile'd in its default mode
    (true), or in its "reduce-overhead" mode (CUDA graphs on a CUDA device: after a warm-up call and a
    recording call per input shape, each evaluation replays one graph; an output is valid until the
    next evaluation, which sample_pairs reads it before). The compilation happens on the first call."""
    if setting is False:
        return unet
    return torch.compile(unet) if setting is True else torch.compile(unet, mode=setting)


def _autocast(device: torch.device, precision: str = "auto"):
    """The network's arithmetic for sampling.precision: bf16 autocast (bf16; auto on a CUDA device that
    has bf16), else none (fp32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def sample_pairs(
    model: JointDiffusion,
    seeds: Sequence[int],
    cfg: SamplingConfig,
    device: str | torch.device | None = None,
    given_label: torch.Tensor | None = None,
    free_steps: int = 0,
    resample: int = 1,
    given_image: torch.Tensor | None = None,
    given_where: torch.Tensor | None = None,
    given_sea: torch.Tensor | None = None,
    given_at: int = 0,
    place: Callable[[torch.Tensor], dict] | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    autocast: bool = True,
) -> Samples:
    """Sample len(seeds) pairs in one batch; pair i depends only on seeds[i], the model, cfg and
    given_label[i]: (N, K, H, W) clean label channels b * (2 * onehot - 1) to draw the images given
    (module docstring), or None for the joint. free_steps: the last steps run jointly (the label is
    no longer replaced), so that label and image can settle on each other. resample: how many times
    each replaced step is taken (RePaint's u; 1 = plain replacement), about u times the cost.
    given_image (N, 1, H, W) in [-1, 1] with given_where (N, 1, H, W) bool: image and label are both
    given, at the marked pixels only (module docstring); given_label is then read there only.
    given_sea (N, 1, H, W): the given image's own sea level at each given pixel; the given image is
    then moved to the sea level of the pair being drawn after every step (module docstring).
    place with given_at = k >= 1, instead of the given_* tensors: the first k steps run jointly, then
    place(x0_hat) (N, 1 + K, H, W), the clean estimate after step k, returns the given_* arguments
    (a dict), which hold from there on: what is given can follow the layout those steps fixed.
    on_step(i, x0_hat): hears the clipped clean estimate (N, 1 + K, H, W) after every network
    evaluation of step i (each of a resampled step's). autocast: the network's arithmetic as
    cfg.precision says (False: in fp32 everywhere)."""
    check_resample(resample, cfg.sampler)
    if place is not None and (given_label is not None or not 1 <= given_at < cfg.steps - free_steps):
        raise ValueError(
            f"place needs no given tensors and 1 <= given_at < steps - free_steps (given_at {given_at}, {cfg.steps} steps, free_steps {free_steps})"
        )
    device = torch.device(device) if device is not None else next(model.unet.parameters()).device
    b, k, r = model.b, model.num_classes, model.resolution
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    z = _pair_noise(gens, (1 + k, r, r), device)
    sched = sampling_scheduler(model, cfg)
    alpha_bar = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
    timesteps = list(sched.timesteps)
    given = None
    if any(v is not None for v in (given_label, given_image, given_where, given_sea)):
        given = _Given.of(device, given_label, given_image, given_where, given_sea)
        # the starting noise's given channels serve as the forward noise of the first level
        given.replace(z, z[:, given.first :].clone(), alpha_bar[timesteps[0]].expand(z.shape[0]))
    decoded: list[torch.Tensor] = []
    for i, t in enumerate(timesteps):
        replaced = given is not None and i + 1 < len(timesteps) - free_steps  # after the last step only x0_hat is read
        for u in range(resample if replaced else 1):
            if (
                u > 0
            ):  # back to step t's level from the next one: z_t = sqrt(abar_t / abar_t') z_t' + sqrt(1 - abar_t / abar_t') eps
                ratio = (alpha_bar[t] / alpha_bar[timesteps[i + 1]]).expand(z.shape[0])
                z = add_noise(z, _pair_noise(gens, z.shape[1:], device), ratio)
            z, x0 = _step(model, sched, cfg, z, t, alpha_bar, gens, cfg.precision if autocast else "fp32")
            if on_step is not None:
                on_step(i, x0)
            if place is not None and i + 1 == given_at:  # the first given_at steps are done: place what is given
                given = _Given.of(device, **place(x0))
                replaced = True
            if replaced:
                given.replace(
                    z, _pair_noise(gens, given.x0.shape[1:], device), alpha_bar[timesteps[i + 1]].expand(z.shape[0]), x0
                )
        if i >= len(timesteps) - cfg.decode_last:
            decoded.append(decode(x0[:, 1:], b, cfg.decode, cfg.decode_tau))
    q = torch.stack(decoded).mean(dim=0)
    q = q / q.sum(dim=1, keepdim=True)
    images = z[:, :1].clamp(-1.0, 1.0)
    return Samples(images=images, q=q)
