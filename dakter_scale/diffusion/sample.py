"""Draw (SAR image, soft label) pairs from a joint diffusion model.

Every sample owns a ``torch.Generator`` seeded from its own seed: its starting noise and every
step's noise come from it alone, so a pair does not depend on which batch it was drawn in and can
be regenerated on its own from its seed.

At each step the network output is turned into a clean-sample estimate x0_hat, clipped per
modality (image to [-1, 1], labels to [-b, b]; without it epsilon-prediction samplers diverge, see
PAPER.md pitfalls), and handed to the diffusers scheduler as the noise consistent with the clipped
x0_hat. The soft label is the decoded label part of x0_hat at the last step, or its average over
the last ``decode_last`` steps.

With ``relabel_repeats`` > 0 the soft label is instead re-read from the finished image: the label
posterior p(label | image) under the same model, by RePaint-style conditioning (Lugmayr et al.,
CVPR 2022). Starting at ``relabel_start`` * T from the forward-noised label of the joint sample
(pure noise at 1.0), the label channels are denoised while the image channel is replaced at every
step by the finished image noised to that step's level; the decoded labels of ``relabel_repeats``
such runs (each with its own noise) are averaged. The joint trajectory's own label is near one-hot
wherever the label branch committed early, whether or not the finished image shows it; the
posterior is soft where the image leaves the label open.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from dakter_scale.config import SamplingConfig
from dakter_scale.core.joint import clip_x0
from dakter_scale.core.schedule import add_noise, eps_from_x0, joint_to_x0_eps
from dakter_scale.core.soft_labels import decode
from dakter_scale.diffusion.model import JointDiffusion


@dataclass
class Samples:
    images: torch.Tensor  # (N, 1, H, W) float in [-1, 1]
    q: torch.Tensor  # (N, K, H, W) probabilities, sum to 1 over K


def sampling_scheduler(model: JointDiffusion, cfg: SamplingConfig):
    """A fresh scheduler for one batch, stepping with epsilon (the clipped-x0-consistent noise)."""
    common = dict(prediction_type="epsilon", clip_sample=False)
    if cfg.sampler == "ddim":
        sched = DDIMScheduler.from_config(model.scheduler.config, set_alpha_to_one=True, timestep_spacing="trailing", **common)
    elif cfg.sampler == "ddpm":
        sched = DDPMScheduler.from_config(model.scheduler.config, timestep_spacing="trailing", **common)
    else:
        raise ValueError(f"unknown sampler {cfg.sampler!r}; expected ddpm or ddim")
    steps = min(cfg.steps, model.scheduler.config.num_train_timesteps)
    sched.set_timesteps(steps)
    return sched


def _autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def sample_pairs(model: JointDiffusion, seeds: Sequence[int], cfg: SamplingConfig, device: str | torch.device | None = None) -> Samples:
    """Sample len(seeds) pairs in one batch; pair i depends only on seeds[i], the model and cfg."""
    device = torch.device(device) if device is not None else next(model.unet.parameters()).device
    unet = model.unet
    b, k, r = model.b, model.num_classes, model.resolution
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    z = torch.stack([torch.randn((1 + k, r, r), generator=g, device=device) for g in gens])
    sched = sampling_scheduler(model, cfg)
    alpha_bar = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
    timesteps = list(sched.timesteps)
    decoded: list[torch.Tensor] = []
    for i, t in enumerate(timesteps):
        with _autocast(device):
            output = unet(z, t.to(device)).sample.float()
        a = alpha_bar[t].expand(z.shape[0])
        x0, eps = joint_to_x0_eps(output, z, a, model.prediction_type, model.label_prediction_type)
        if cfg.clip:
            x0 = clip_x0(x0, b)
            eps = eps_from_x0(x0, z, a)
        if i >= len(timesteps) - cfg.decode_last:
            decoded.append(decode(x0[:, 1:], b, cfg.decode, cfg.decode_tau))
        if cfg.sampler == "ddim":
            noise = None
            if cfg.eta > 0:
                noise = torch.stack([torch.randn(z.shape[1:], generator=g, device=device) for g in gens])
            z = sched.step(eps, t, z, eta=cfg.eta, variance_noise=noise).prev_sample
        else:
            z = sched.step(eps, t, z, generator=gens).prev_sample
    q = torch.stack(decoded).mean(dim=0)
    q = q / q.sum(dim=1, keepdim=True)
    images = z[:, :1].clamp(-1.0, 1.0)
    if cfg.relabel_repeats > 0:
        q = label_posterior(model, images, q, seeds, cfg, device)
    return Samples(images=images, q=q)


def _relabel_generator(seed: int, repeat: int, device: torch.device) -> torch.Generator:
    # a stream apart from the joint sample's (seed) and from the other repeats
    return torch.Generator(device=device).manual_seed((int(seed) * 1_000_003 + 7919 * (repeat + 1)) % (2**63))


@torch.no_grad()
def label_posterior(
    model: JointDiffusion, images: torch.Tensor, q: torch.Tensor, seeds: Sequence[int], cfg: SamplingConfig, device: str | torch.device | None = None
) -> torch.Tensor:
    """p(label | image): the soft label re-read from finished images by the joint model.

    images: (N, 1, H, W) in [-1, 1]; q: (N, K, H, W) the pairs' current soft labels (the starting
    point when cfg.relabel_start < 1); seeds: one per pair. Each of cfg.relabel_repeats runs starts
    at timestep relabel_start * T with the label channels at q(z_t | label) and takes the sampler's
    steps from there down, replacing the image channel at every step by the image noised to that
    step's level (fresh noise each step); the label decoded at the last step is averaged over the
    runs. Pair i depends only on images[i], q[i], seeds[i], the model and cfg.
    """
    device = torch.device(device) if device is not None else next(model.unet.parameters()).device
    b = model.b
    images = images.to(device=device, dtype=torch.float32)
    y0 = b * (2.0 * q.to(device=device, dtype=torch.float32) - 1.0)
    sched = sampling_scheduler(model, cfg)
    alpha_bar = sched.alphas_cumprod.to(device=device, dtype=torch.float32)
    t_max = int(round(cfg.relabel_start * (model.scheduler.config.num_train_timesteps - 1)))
    timesteps = [t for t in sched.timesteps if int(t) <= t_max]
    if not timesteps:
        raise ValueError(f"sampling.relabel_start {cfg.relabel_start} leaves no {cfg.sampler} step of {cfg.steps} below it; raise it or the steps")
    n = images.shape[0]
    total = torch.zeros_like(y0)
    for repeat in range(cfg.relabel_repeats):
        gens = [_relabel_generator(s, repeat, device) for s in seeds]

        def noise(shape: torch.Size) -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g, device=device) for g in gens])

        y = add_noise(y0, noise(y0.shape[1:]), alpha_bar[timesteps[0]].expand(n))
        for i, t in enumerate(timesteps):
            a = alpha_bar[t].expand(n)
            z = torch.cat([add_noise(images, noise(images.shape[1:]), a), y], dim=1)
            with _autocast(device):
                output = model.unet(z, t.to(device)).sample.float()
            x0, eps = joint_to_x0_eps(output, z, a, model.prediction_type, model.label_prediction_type)
            if cfg.clip:
                x0 = clip_x0(x0, b)
                eps = eps_from_x0(x0, z, a)
            if i == len(timesteps) - 1:
                total += decode(x0[:, 1:], b, cfg.decode, cfg.decode_tau)
                break
            if cfg.sampler == "ddim":
                y = sched.step(eps, t, z, eta=cfg.eta, variance_noise=noise(z.shape[1:]) if cfg.eta > 0 else None).prev_sample[:, 1:]
            else:
                y = sched.step(eps, t, z, generator=gens).prev_sample[:, 1:]
    q = total / cfg.relabel_repeats
    return q / q.sum(dim=1, keepdim=True)
