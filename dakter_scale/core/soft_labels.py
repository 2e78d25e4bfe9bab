"""Decode the generated label channels of the joint DDPM into per-pixel class probabilities.

The label modality is y = b * (2 * p - 1). The denoiser's clean-sample prediction is the posterior
mean E[y0 | z_t], so its channel k estimates b * (2 * P(class k) - 1): inverting that map gives
p_k ("mean" decode, the default). "softmax" reads the same channels as logits scaled by 1 / (b * tau).
Both return (N, K, H, W) probabilities that lie in [0, 1] and sum to 1 over K.
"""

from __future__ import annotations

import torch

DECODES = ("mean", "softmax")


def decode_mean(y0: torch.Tensor, b: float, eps: float = 1e-6) -> torch.Tensor:
    """Posterior-mean decode: p_k = clamp((y0_k / b + 1) / 2, 0, 1), renormalised over k.

    A pixel whose channels are all clamped to 0 (every class predicted absent) becomes uniform.
    y0: (N, K, H, W) predicted clean label channels.
    """
    p = ((y0 / b + 1.0) * 0.5).clamp(0.0, 1.0)
    total = p.sum(dim=1, keepdim=True)
    k = y0.shape[1]
    uniform = torch.full_like(p, 1.0 / k)
    return torch.where(total > eps, p / total.clamp_min(eps), uniform)


def decode_softmax(y0: torch.Tensor, b: float, tau: float = 0.5) -> torch.Tensor:
    """Softmax decode: p = softmax(y0 / (b * tau)) over the class channels."""
    if tau <= 0:
        raise ValueError(f"softmax decode temperature must be > 0, got {tau}")
    return torch.softmax(y0.float() / (b * tau), dim=1)


def decode(y0: torch.Tensor, b: float, method: str = "mean", tau: float = 0.5) -> torch.Tensor:
    """Dispatch to one of DECODES."""
    if method == "mean":
        return decode_mean(y0, b)
    if method == "softmax":
        return decode_softmax(y0, b, tau)
    raise ValueError(f"unknown soft-label decode {method!r}; expected one of {DECODES}")


def entropy(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-pixel Shannon entropy in nats of (N, K, H, W) probabilities -> (N, H, W)."""
    return -(q * (q + eps).log()).sum(dim=1)


def confidence(q: torch.Tensor) -> torch.Tensor:
    """Per-pixel max-probability of (N, K, H, W) probabilities -> (N, H, W)."""
    return q.max(dim=1).values


def class_fractions(q: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels whose argmax is each class: (N, K, H, W) -> (N, K), rows sum to 1."""
    k = q.shape[1]
    hard = q.argmax(dim=1)
    counts = torch.nn.functional.one_hot(hard, k).flatten(1, 2).sum(dim=1).to(torch.float64)
    return counts / counts.sum(dim=1, keepdim=True)


def sample_stats(q: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample summary used by the shard manifest: class pixel fractions (N, K), mean entropy (N),
    mean max-probability (N)."""
    return {
        "class_fractions": class_fractions(q),
        "mean_entropy": entropy(q).flatten(1).mean(dim=1),
        "mean_confidence": confidence(q).flatten(1).mean(dim=1),
    }
