"""Noise-schedule helpers: the forward process, training targets and the x0 / eps conversions.

With z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (Ho et al. 2020, Eq. 4) a network may predict
eps ("epsilon"), v = sqrt(abar_t) eps - sqrt(1 - abar_t) z0 ("v_prediction", Salimans & Ho 2022)
or z0 itself ("sample"). The sampler needs the clean-sample estimate in every case, to clip it per
modality and to decode soft labels from it, and the matching eps to take the scheduler step.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(z0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """Forward process q(z_t | z0). alpha_bar_t: (N,) per-sample abar at the drawn timesteps."""
    a = _expand(alpha_bar_t, z0)
    return a.sqrt() * z0 + (1 - a).sqrt() * eps


def target(z0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """What the network is trained to output for this parameterisation."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return z0
    if prediction_type == "v_prediction":
        a = _expand(alpha_bar_t, z0)
        return a.sqrt() * eps - (1 - a).sqrt() * z0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def to_x0_eps(
    model_output: torch.Tensor, z_t: torch.Tensor, alpha_bar_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean-sample and noise estimates (x0_hat, eps_hat) from a network output at z_t."""
    a = _expand(alpha_bar_t, z_t)
    sa, s1a = a.sqrt(), (1 - a).sqrt()
    if prediction_type == "epsilon":
        eps = model_output
        return (z_t - s1a * eps) / sa, eps
    if prediction_type == "sample":
        x0 = model_output
        return x0, (z_t - sa * x0) / s1a
    if prediction_type == "v_prediction":
        v = model_output
        return sa * z_t - s1a * v, s1a * z_t + sa * v
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def eps_from_x0(x0: torch.Tensor, z_t: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """The noise consistent with a (clipped) clean-sample estimate at z_t."""
    a = _expand(alpha_bar_t, z_t)
    return (z_t - a.sqrt() * x0) / (1 - a).sqrt()


# Per-modality parameterisation: the image channel (index 0) and the K label channels may use
# different prediction types, e.g. epsilon for the speckled image (which keeps its texture) and
# sample (x0) for the labels (whose x0 estimate is the soft label itself).


def joint_target(
    z0: torch.Tensor, eps: torch.Tensor, alpha_bar_t: torch.Tensor, image_type: str, label_type: str
) -> torch.Tensor:
    """Training target of the joint tensor: channel 0 by image_type, channels 1.. by label_type."""
    if image_type == label_type:
        return target(z0, eps, alpha_bar_t, image_type)
    return torch.cat(
        [
            target(z0[:, :1], eps[:, :1], alpha_bar_t, image_type),
            target(z0[:, 1:], eps[:, 1:], alpha_bar_t, label_type),
        ],
        dim=1,
    )


def joint_to_x0_eps(
    output: torch.Tensor, z_t: torch.Tensor, alpha_bar_t: torch.Tensor, image_type: str, label_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) of the joint tensor from a network output with per-modality prediction types."""
    if image_type == label_type:
        return to_x0_eps(output, z_t, alpha_bar_t, image_type)
    x0_i, eps_i = to_x0_eps(output[:, :1], z_t[:, :1], alpha_bar_t, image_type)
    x0_l, eps_l = to_x0_eps(output[:, 1:], z_t[:, 1:], alpha_bar_t, label_type)
    return torch.cat([x0_i, x0_l], dim=1), torch.cat([eps_i, eps_l], dim=1)


def joint_denoising_loss(
    model_output: torch.Tensor,
    z0: torch.Tensor,
    eps: torch.Tensor,
    z_t: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    prediction_type: str,
    b: float,
    mask: torch.Tensor | None = None,
    label_loss_weight: float = 1.0,
    label_ce_weight: float = 0.0,
    label_prediction_type: str | None = None,
    pixel_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The joint DDPM objective on z = [x, y] (1 image channel, K label channels).

    MSE to the parameterisation's target (`prediction_type` for the image channel,
    `label_prediction_type` for the label channels, the same when None), the image channel weighted
    1 and each label channel `label_loss_weight` (1 = the plain joint MSE). pixel_weight (B, 1, H, W),
    when given, weights every channel's squared error per pixel (mean 1 keeps the loss's scale). With label_ce_weight > 0, an auxiliary
    cross-entropy between the clean-label estimate read as logits 2 * y0_hat / b and the true
    mask, weighted per sample by abar_t (at high noise the estimate carries little, and for
    epsilon prediction it is unbounded). Returns the scalar loss and its parts (detached).
    """
    label_type = label_prediction_type or prediction_type
    tgt = joint_target(z0, eps, alpha_bar_t, prediction_type, label_type)
    sq = (model_output.float() - tgt.float()) ** 2
    if pixel_weight is not None:
        sq = sq * pixel_weight.to(sq.dtype)
    loss_x = sq[:, :1].mean()
    loss_y = sq[:, 1:].mean()
    k = z0.shape[1] - 1
    loss = (loss_x + label_loss_weight * k * loss_y) / (1 + label_loss_weight * k)
    parts = {"mse_image": loss_x.detach(), "mse_label": loss_y.detach()}
    if label_ce_weight > 0:
        if mask is None:
            raise ValueError("label_ce_weight > 0 needs the true mask")
        x0_hat, _ = joint_to_x0_eps(model_output.float(), z_t.float(), alpha_bar_t, prediction_type, label_type)
        logits = 2.0 * x0_hat[:, 1:].clamp(-b, b) / b
        ce = torch.nn.functional.cross_entropy(logits, mask.long(), reduction="none").flatten(1).mean(dim=1)
        ce = (alpha_bar_t.to(ce.device, ce.dtype) * ce).mean()
        loss = loss + label_ce_weight * ce
        parts["label_ce"] = ce.detach()
    return loss, parts
