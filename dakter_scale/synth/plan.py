"""N pairs -> shard tasks with deterministic seeds.

Pair ``index`` of shard ``shard`` in a run with seed ``seed`` is drawn from

    pair_seed(seed, shard, index) = SeedSequence([seed, shard, index]) -> 63-bit integer

(``training.derive_seed``). Shard s holds the global samples [s * S, min((s + 1) * S, N)) for
samples_per_shard S. The plan's fingerprint covers what makes a shard's bytes (model hash,
sampling settings, seed, S, code format) but not N: growing N reuses every full shard.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from dakter_scale.training import derive_seed


class PlanError(ValueError):
    """Bad synthesis arguments; the message names the flag."""


def parse_count(text: str | int | float, flag: str = "--n") -> int:
    """'1e6', '1000000', 1e6 -> 1000000; anything not a positive whole number is an error naming the flag."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise PlanError(f"{flag} must be a positive whole number like 1000 or 1e6, got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or not value.is_integer():
        raise PlanError(f"{flag} must be a positive whole number like 1000 or 1e6, got {text!r}")
    return int(value)


def pair_seed(seed: int, shard: int, index: int) -> int:
    return derive_seed(seed, shard, index)


@dataclass(frozen=True)
class ShardTask:
    shard: int
    start: int  # global index of its first sample
    count: int
    attempt: int = 0

    def seeds(self, seed: int) -> list[int]:
        return [pair_seed(seed, self.shard, i) for i in range(self.count)]


@dataclass(frozen=True)
class Plan:
    n: int
    samples_per_shard: int
    seed: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise PlanError(f"--n must be >= 1, got {self.n}")
        if self.samples_per_shard < 1:
            raise PlanError(f"--samples-per-shard must be >= 1, got {self.samples_per_shard}")

    @property
    def num_shards(self) -> int:
        return math.ceil(self.n / self.samples_per_shard)

    def task(self, shard: int) -> ShardTask:
        if not 0 <= shard < self.num_shards:
            raise PlanError(f"shard {shard} is outside this plan's {self.num_shards} shards")
        start = shard * self.samples_per_shard
        return ShardTask(shard, start, min(self.samples_per_shard, self.n - start))

    def tasks(self) -> list[ShardTask]:
        return [self.task(s) for s in range(self.num_shards)]


def fingerprint(model_hash: str, sampling: dict, seed: int, samples_per_shard: int, shard_format: str) -> str:
    """What determines the bytes of a shard, hashed: two runs with equal fingerprints write equal shards."""
    blob = json.dumps(
        {"model": model_hash, "sampling": sampling, "seed": seed, "samples_per_shard": samples_per_shard, "format": shard_format},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def estimate_bytes_per_pair(resolution: int, num_classes: int) -> int:
    """Rough upper estimate: speckled 8-bit image PNG (~ incompressible) + soft-label PNG + tar headers.

    Soft labels are smooth and compress well; 0.35 of raw is what 64 px demo shards measured.
    """
    pixels = resolution * resolution
    return int(pixels * 1.0 + pixels * num_classes * 0.35 + 3 * 512 + 300)
