"""Distillation of the joint sampler, as pure tensor functions: progressive distillation (Salimans & Ho
2022, "Progressive distillation for fast sampling of diffusion models", Algorithm 2) and consistency
distillation (Song et al. 2023, "Consistency models", Algorithm 2).

A deterministic DDIM step (Song et al. 2021, Eq. 12 with eta = 0) from level t to level s, for
z_t = alpha_t z0 + sigma_t eps with alpha = sqrt(abar), sigma = sqrt(1 - abar):

    z_s = alpha_s x0_hat + sigma_s (z_t - alpha_t x0_hat) / sigma_t                      (ddim_step)

Progressive. One round halves the steps: the student takes ONE step from t to t'' where the teacher takes
two (t -> t' -> t''). Its target is the clean estimate x~ whose single DDIM step lands where the
teacher's two did (Algorithm 2, the line "x~ = ..."):

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t)    (progressive_target)

and at the last step (abar_t'' = 1, sigma_t'' = 0) simply x~ = z_t''. Every channel follows the same
rule, so one call serves the image (which the network predicts as v) and the b-scaled label channels
(predicted as x0): the caller turns x~ into each modality's training target (schedule.joint_target).

Consistency. The consistency function f(z_t, t) maps every point of a teacher ODE trajectory to the
trajectory's clean end; here f is the network's own clean estimate x0_hat (image: x0 = alpha z - sigma v
from v-prediction, labels: x0 predicted directly), so no skip/out scalings are added: as sigma -> 0 the
image's x0 tends to z whatever v is, and the grid's last step lands on the clean end itself, where the
boundary condition f(z, 0) = z is imposed exactly (consistency_target). The target of a grid level t_{n+1}
is the EMA target network's f at the point one teacher DDIM step reaches, t_n (Algorithm 2: x^_{t_n} =
x_{t_{n+1}} + (t_n - t_{n+1}) Phi(...), target f_theta-(x^_{t_n}, t_n)).

The timesteps are integers of the training schedule (0 .. T-1), "trailing" as the project's samplers
(the first step starts at T - 1), chosen so that every grid of N steps is every other point of the
grid of 2N: each round's student steps are exactly its teacher's even steps, and a consistency model
trained on a grid of K levels samples at every N whose grid lies on it (steps_on_grid).
"""

from __future__ import annotations

import torch


def _expand(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def distill_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """The N = `steps` levels a distilled sampler of N steps starts each step at, highest first:
    t_i = T - 1 - floor(i T / N), i = 0 .. N-1 (the step from t_{N-1} goes to the clean end, abar = 1).
    Integer arithmetic makes grid(N) == grid(2N)[::2] exactly for every N (the rounds nest)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    return [num_train_timesteps - 1 - (i * num_train_timesteps) // steps for i in range(steps)]


def halvings(teacher_steps: int, steps: int) -> list[int]:
    """The step counts of the rounds from a teacher of `teacher_steps` down to `steps`, e.g. (16, 4) ->
    [8, 4]; ValueError unless teacher_steps = steps * 2^k with k >= 1."""
    factor = teacher_steps // steps if steps >= 1 and teacher_steps % steps == 0 else 0
    if factor < 2 or factor & (factor - 1):  # not a power of 2 above 1
        raise ValueError(
            f"the teacher's steps must be the student's times a power of 2, got {teacher_steps} and {steps}"
        )
    out, n = [], teacher_steps
    while n > steps:
        n //= 2
        out.append(n)
    return out


def next_alpha_bar(alpha_bar: torch.Tensor, timesteps: list[int]) -> torch.Tensor:
    """(N,) abar at the level each step of `timesteps` lands on: the next grid point, 1 after the last.
    alpha_bar: (T,) the training schedule's cumulative products."""
    nxt = [float(alpha_bar[t]) for t in timesteps[1:]] + [1.0]
    return torch.tensor(nxt, dtype=torch.float64)


def ddim_step(
    z_t: torch.Tensor, x0: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor
) -> torch.Tensor:
    """Deterministic DDIM step (module docstring). z_t, x0: (N, C, H, W); alpha_bar_t, alpha_bar_s: (N,)
    (or one value), abar of the level left and of the level reached (1: the clean end, z_s = x0)."""
    a_t, a_s = _expand(torch.as_tensor(alpha_bar_t), z_t), _expand(torch.as_tensor(alpha_bar_s), z_t)
    eps = (z_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def progressive_target(
    z_t: torch.Tensor, z_s: torch.Tensor, alpha_bar_t: torch.Tensor, alpha_bar_s: torch.Tensor
) -> torch.Tensor:
    """x~ (N, C, H, W): the clean estimate whose DDIM step from z_t (level abar_t) lands exactly on z_s
    (level abar_s, where the teacher's two steps ended): ddim_step(z_t, x~, abar_t, abar_s) == z_s.
    z_t, z_s: (N, C, H, W); alpha_bar_t, alpha_bar_s: (N,) with abar_s > abar_t (s is less noisy; 1 at
    the clean end, where x~ = z_s)."""
    a_t, a_s = _expand(torch.as_tensor(alpha_bar_t), z_t), _expand(torch.as_tensor(alpha_bar_s), z_t)
    ratio = (1 - a_s).sqrt() / (1 - a_t).sqrt()  # sigma_s / sigma_t; 0 at the clean end
    return (z_s - ratio * z_t) / (a_s.sqrt() - ratio * a_t.sqrt())


def steps_on_grid(num_train_timesteps: int, grid: list[int]) -> list[int]:
    """The step counts N (ascending) whose grid distill_timesteps(T, N) lies on `grid`: those a consistency
    model trained on `grid`'s levels samples at (for a distill_timesteps grid, every divisor of its length)."""
    levels = set(grid)
    return [n for n in range(1, len(grid) + 1) if levels.issuperset(distill_timesteps(num_train_timesteps, n))]


def consistency_target(z_s: torch.Tensor, x0_s: torch.Tensor, alpha_bar_s: torch.Tensor) -> torch.Tensor:
    """The consistency distillation target (N, C, H, W) at the level s a teacher step reached: the target
    network's clean estimate x0_s there, or, at the clean end (abar_s = 1), z_s itself: the boundary
    condition f(z, 0) = z, whatever x0_s says. z_s, x0_s: (N, C, H, W); alpha_bar_s: (N,) (1: the clean end)."""
    clean = torch.as_tensor(alpha_bar_s, device=z_s.device).reshape(-1, *([1] * (z_s.ndim - 1))) >= 1.0
    return torch.where(clean, z_s, x0_s)
