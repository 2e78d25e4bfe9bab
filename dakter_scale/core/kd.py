"""Losses of the student: cross-entropy on real masks, knowledge distillation on generated soft labels.

kd_loss is the soft cross-entropy between the generated soft label q (the teacher: the diffusion
model) and the student's tempered softmax, scaled by T^2 so that its gradient magnitude does not
depend on T (Hinton et al., 2015). It differs from KL(q || p) by the entropy of q, a constant for
the student, so both have the same gradients; kd_loss returns the KL form, which is 0 exactly when
the student equals the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss_per_sample(
    logits: torch.Tensor, q: torch.Tensor, temperature: float = 1.0, confidence_power: float = 0.0
) -> torch.Tensor:
    """T^2 * KL(q_T || softmax(logits / T)) averaged over pixels, one value per sample.

    logits: (N, K, H, W) student outputs. q: (N, K, H, W) soft labels (sum to 1 over K).
    With T != 1 the teacher is tempered as well: q_T proportional to q^(1/T).
    confidence_power gamma > 0 makes the pixel average a weighted one, weight (max_k q)^gamma: the
    teacher's uncertain pixels (where generated labels disagree most with the image) count less.
    The weights are normalised per sample, so a sample's total weight does not change.
    Returns (N,) non-negative values.
    """
    if logits.shape != q.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and soft labels {tuple(q.shape)} differ in shape")
    if temperature <= 0:
        raise ValueError(f"KD temperature must be > 0, got {temperature}")
    if confidence_power < 0:
        raise ValueError(f"KD confidence power must be >= 0, got {confidence_power}")
    q = q.to(torch.float32)
    # Weights from the untempered teacher: tempering changes the target, not which pixels to trust.
    w = q.amax(dim=1).pow(confidence_power).flatten(1) if confidence_power > 0 else None
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    if temperature != 1.0:  # q^(1/T), normalised: a class the teacher rules out (q = 0) stays at 0
        q = F.softmax(torch.where(q > 0, q.log() / temperature, float("-inf")), dim=1)
    # xlogy gives 0 * log 0 = 0 for classes the teacher rules out.
    kl = (torch.special.xlogy(q, q) - q * log_p).sum(dim=1)
    if w is None:
        return kl.flatten(1).mean(dim=1) * temperature**2
    return (kl.flatten(1) * w).sum(dim=1) / w.sum(dim=1).clamp_min(1e-12) * temperature**2


def kd_loss(logits: torch.Tensor, q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Batch mean of kd_loss_per_sample: a scalar."""
    return kd_loss_per_sample(logits, q, temperature).mean()


def ce_loss_per_sample(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Pixel-mean cross-entropy against an integer mask (N, H, W), one value per sample (N,).

    Pixels equal to ignore_index (e.g. padding) count for nothing.
    """
    pixel = F.cross_entropy(logits.float(), mask.long(), ignore_index=ignore_index, reduction="none")
    valid = (mask != ignore_index).flatten(1).sum(dim=1).clamp_min(1)
    return pixel.flatten(1).sum(dim=1) / valid


def mixed_loss(
    logits: torch.Tensor,
    mask: torch.Tensor,
    q: torch.Tensor,
    is_generated: torch.Tensor,
    *,
    labels: str = "soft",
    ce_weight: float = 1.0,
    kd_weight: float = 1.0,
    temperature: float = 1.0,
    hard_weight: float | None = None,
    confidence_power: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The student's loss over a batch mixing real and generated samples.

    Real sample: ce_weight * CE(logits, mask). Generated sample: kd_weight * KD(logits, q) with
    labels="soft" (DAKTer; confidence_power > 0 weights its pixels by the teacher's
    confidence, see kd_loss_per_sample), or hard_weight * CE(logits, argmax q) with labels="hard" (the DDPM /
    SatSynth-style baseline on the same pairs; hard_weight None means ce_weight, plain CE). The
    batch loss is the mean over samples, so the share of generated samples in a batch is the
    augmentation ratio's weight.

    mask: (N, H, W) integer mask (ignored for generated samples). q: (N, K, H, W) soft labels
    (ignored for real samples, unless one holds soft labels: a real sample with generated instances
    pasted in, student/augment.py BankPaste). is_generated: (N,) bool.

    A real sample whose q is one-hot at every pixel takes the CE on its mask; one whose q is not
    (pasted soft labels) takes ce_weight * KL(q || softmax(logits)), the soft CE up to q's entropy:
    the same gradient as the CE wherever q is one-hot, the soft label's where it is not.
    """
    if labels not in ("soft", "hard"):
        raise ValueError(f"labels must be 'soft' or 'hard', got {labels!r}")
    # Every term is computed on the whole batch and selected per sample with torch.where: indexing by a
    # boolean mask, or asking whether any sample takes a term, would make the host wait for the device
    # each step. Parts are tensors (NaN where no sample took the term), read at logging steps only.
    gen = is_generated.to(device=logits.device, dtype=torch.bool)
    soft = ~gen & (q.amax(dim=1) < 1).flatten(1).any(dim=1)
    hard = ~gen & ~soft
    ce_real = ce_loss_per_sample(logits, mask)
    soft_real = kd_loss_per_sample(logits, q)
    if labels == "soft":
        generated = kd_loss_per_sample(logits, q, temperature, confidence_power)
        generated_weight, generated_part = kd_weight, "kd"
    else:
        generated = ce_loss_per_sample(logits, q.argmax(dim=1))
        generated_weight, generated_part = (ce_weight if hard_weight is None else hard_weight), "ce_generated"
    zero = logits.new_zeros((), dtype=torch.float32)
    per_sample = torch.where(
        hard,
        ce_weight * ce_real,
        torch.where(soft, ce_weight * soft_real, torch.where(gen, generated_weight * generated, zero)),
    )

    def part(values: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
        values = values.detach()
        return torch.where(taken, values, 0).sum() / taken.sum()  # 0 / 0: NaN where no sample took it

    parts = {"ce_real": part(ce_real, hard), "soft_real": part(soft_real, soft), generated_part: part(generated, gen)}
    return per_sample.mean(), parts
