"""Joint packing of a SAR image and its label into one diffusion tensor, and the balancing factor b.

The joint DDPM of DAKTer models z = [x, y] where x is the SAR image (1 channel, normalised to
[-1, 1]) and y = b * (2 * onehot(mask) - 1) the label (K channels). Noising z_t = sqrt(abar_t) z_0
+ sqrt(1 - abar_t) eps gives each modality the signal-to-noise ratio

    SNR_x(t) = abar_t / (1 - abar_t) * E[x^2],     SNR_y(t) = abar_t / (1 - abar_t) * b^2,

because (2 * onehot - 1)^2 = 1 everywhere. Unbalanced (b = 1) the label keeps its structure far
longer than the speckled image (paper, Fig. 3). b = "auto" sets b^2 = E[x^2] (b = RMS of the
normalised training images) so that SNR_x(t) = SNR_y(t) at every t; "auto-std" uses the standard
deviation of x instead of its RMS.

Pure tensor code: no files, no randomness of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

B_MODES = ("auto", "auto-std")


@dataclass(frozen=True)
class ImageStats:
    """First and second moments of normalised training images, the input of b = "auto"."""

    mean: float  # E[x]
    mean_sq: float  # E[x^2]
    pixels: int

    @property
    def rms(self) -> float:
        return math.sqrt(self.mean_sq)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.mean_sq - self.mean**2, 0.0))

    def merge(self, other: "ImageStats") -> "ImageStats":
        n = self.pixels + other.pixels
        if n == 0:
            return self
        return ImageStats(
            mean=(self.mean * self.pixels + other.mean * other.pixels) / n,
            mean_sq=(self.mean_sq * self.pixels + other.mean_sq * other.pixels) / n,
            pixels=n,
        )

    @staticmethod
    def of(x: torch.Tensor) -> "ImageStats":
        """Moments of a tensor of normalised images (any shape), accumulated in float64."""
        x = x.detach().to(torch.float64)
        return ImageStats(mean=float(x.mean()), mean_sq=float((x * x).mean()), pixels=x.numel())


def resolve_b(b: str | float, stats: ImageStats | None) -> float:
    """Turn the configured b ("auto", "auto-std" or a number) into a positive float."""
    if isinstance(b, str):
        if b not in B_MODES:
            try:
                b = float(b)
            except ValueError:
                raise ValueError(f"b must be 'auto', 'auto-std' or a positive number, got {b!r}") from None
        else:
            if stats is None or stats.pixels == 0:
                raise ValueError(f"b={b!r} needs image statistics of the training set")
            value = stats.rms if b == "auto" else stats.std
            if not value > 0:
                raise ValueError(f"b={b!r} computed {value}: the training images are constant")
            return float(value)
    b = float(b)
    if not (b > 0 and math.isfinite(b)):
        raise ValueError(f"b must be a positive finite number, got {b}")
    return b


def snr(alpha_bar: torch.Tensor, signal_power: float) -> torch.Tensor:
    """SNR(t) = abar_t / (1 - abar_t) * E[signal^2] of one modality under z_t = sqrt(abar) z0 + sqrt(1-abar) eps."""
    return alpha_bar / (1.0 - alpha_bar) * signal_power


def one_hot(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) integer mask -> (N, K, H, W) float one-hot. Raises on an out-of-range class."""
    if mask.dtype.is_floating_point:
        raise TypeError(f"mask must be an integer tensor, got {mask.dtype}")
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= num_classes):
        raise ValueError(f"mask holds classes outside [0, {num_classes}): min {int(mask.min())}, max {int(mask.max())}")
    return torch.nn.functional.one_hot(mask.long(), num_classes).permute(0, 3, 1, 2).to(torch.float32)


def pack(x: torch.Tensor, label: torch.Tensor, b: float) -> torch.Tensor:
    """Build the joint diffusion tensor z0 = [x, b * (2 * p - 1)].

    x: (N, 1, H, W) image in [-1, 1]. label: (N, K, H, W) class probabilities (a one-hot mask or a
    soft label). Returns (N, 1 + K, H, W).
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must be (N, 1, H, W), got {tuple(x.shape)}")
    if label.ndim != 4 or label.shape[0] != x.shape[0] or label.shape[2:] != x.shape[2:]:
        raise ValueError(f"label must be (N, K, H, W) matching x {tuple(x.shape)}, got {tuple(label.shape)}")
    return torch.cat([x, b * (2.0 * label.to(x.dtype) - 1.0)], dim=1)


def unpack(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a joint tensor (N, 1 + K, H, W) into the image (N, 1, H, W) and label channels (N, K, H, W)."""
    return z[:, :1], z[:, 1:]


def clip_x0(z0: torch.Tensor, b: float) -> torch.Tensor:
    """Clip a predicted clean sample per modality: image to [-1, 1], label channels to [-b, b].

    Without this, epsilon-prediction samplers divide by a vanishing sqrt(abar) in the first steps and
    the label channels diverge (PAPER.md, pitfalls).
    """
    x, y = unpack(z0)
    return torch.cat([x.clamp(-1.0, 1.0), y.clamp(-b, b)], dim=1)
