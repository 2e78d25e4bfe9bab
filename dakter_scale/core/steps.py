"""What a training step depends on, as pure functions: seeds, data positions, the learning rate and
the EMA of the weights.

Determinism and exact resume rest on one rule: everything random at a step is a function of
(seed, rank, step). Initial weights come from a seed derived with ``derive_seed``; the data a rank
reads at a step is a position in a seeded stream of permutations (``StreamPositions``); the
learning rate is a function of the step (``lr_factor``). A checkpoint therefore needs only the step,
the model, the optimiser and the EMA to continue exactly as an uninterrupted run would.

Pure tensor code: no files, no processes, no accelerate.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from non-negative integers, stable across machines and Python versions.

    SeedSequence pads its entropy with zeros, so trailing zeros do not count: (s, 11, b, 0) gives the
    seed of (s, 11, b). Callers keep their streams apart by a leading tag (augment.STREAM,
    target.COMPOSE_STREAM); the coincidences left (a real epoch's permutation and a generated pass's
    shard order both from (seed, n)) seed different generators (torch's, Python's). Changing the rule
    would change every seed of every committed run."""
    state = np.random.SeedSequence([int(p) % (1 << 64) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) | (int(state[1]) << 32)) & ((1 << 63) - 1)


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", floor: float = 0.1) -> float:
    """Linear warmup, then constant or cosine decay to `floor` of the peak at `total` steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class StreamPositions:
    """Which dataset items rank r reads at micro-batch g: a pure function, so resume is exact.

    The global sample stream is the concatenation of seeded permutations of range(n), one per
    epoch. Micro-batch g of rank r covers stream positions (g * world + r) * batch + [0, batch):
    ranks never read the same position, and all positions are read in order.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError("cannot stream from an empty dataset")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.pop(min(self._perms))
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=gen)
        return self._perms[epoch]

    def batch(self, micro_batch: int) -> list[tuple[int, int]]:
        start = (micro_batch * self.world + self.rank) * self.batch_size
        out = []
        for p in range(start, start + self.batch_size):
            epoch, offset = divmod(p, self.n)
            out.append((int(self._perm(epoch)[offset]), epoch))
        return out

    def batches(self, first_micro_batch: int) -> Iterator[list[tuple[int, int]]]:
        g = first_micro_batch
        while True:
            yield self.batch(g)
            g += 1


class EMA:
    """Exponential moving average of a model's parameters (and a copy of its buffers)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        shadows, values = [], []
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                shadows.append(self.shadow[k])
                values.append(v.detach().float())
            else:
                self.shadow[k].copy_(v)
        # one batched kernel per operation instead of two per tensor: the same arithmetic, far fewer
        # launches on a GPU (a UNet has hundreds of tensors)
        torch._foreach_mul_(shadows, d)
        torch._foreach_add_(shadows, values, alpha=1 - d)
        self.updates += 1

    def copy_to(self, model: torch.nn.Module) -> None:
        state = model.state_dict()  # once: consistency distillation copies its target network every step
        model.load_state_dict({k: v.to(state[k].dtype) for k, v in self.shadow.items()})

    def state_dict(self) -> dict:
        return {"shadow": self.shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}
        self.updates = int(state["updates"])
