"""N pairs -> shard tasks with deterministic seeds.

Shard s holds the global samples [s * S, min((s + 1) * S, N)) for samples_per_shard S; its sample
i (0 <= i < S) has the key ``SSSSSS-IIIIII`` (shard, index) and is drawn from its own seed

    pair_seed(seed, shard, index) = SeedSequence([seed, shard, index]) -> 63-bit integer

(``core.steps.derive_seed``): the initial noise and every step's noise come from a torch.Generator
seeded with it, so any pair can be regenerated alone (``synth.regenerate``, ``--only-key``).

A shard is sampled in batches fixed by the plan: [0, B), [B, 2B), ... of its indices for
batch_size B (``batch_indices``). Batch composition changes a pair's floats in the last bits (the
convolution kernels block differently), so the batches are part of what makes a shard's bytes.

The plan's fingerprint covers everything that makes a shard's bytes (model hash, sampling
settings, seed, S, B, shard format) but not N: growing N reuses every full shard.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from dakter_scale.config import MULTISTEP_SAMPLERS
from dakter_scale.core.steps import derive_seed
from dakter_scale.errors import UserError


class PlanError(UserError, ValueError):
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
    """The seed of pair `index` of shard `shard` in a run with seed `seed` (module docstring)."""
    return derive_seed(seed, shard, index)


def batch_indices(count: int, batch_size: int) -> list[list[int]]:
    """The in-shard indices of each batch: [[0..B-1], [B..2B-1], ..., [.., count-1]]."""
    return [list(range(first, min(first + batch_size, count))) for first in range(0, count, batch_size)]


@dataclass(frozen=True)
class ShardTask:
    shard: int
    start: int  # global index of its first sample
    count: int
    attempt: int = 0

    @property
    def name(self) -> str:
        """What the driver's log lines call it (dist/driver.py)."""
        return f"shard {self.shard}"

    def retry(self) -> "ShardTask":
        return ShardTask(self.shard, self.start, self.count, self.attempt + 1)


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


UNRECORDED_DEFAULTS = {"precision": "auto", "compile": False}  # sampling settings added after sets existed


def fingerprint(
    model_hash: str,
    sampling: dict,
    seed: int,
    samples_per_shard: int,
    shard_format: str,
    batch_size: int,
    condition: dict | None = None,
) -> str:
    """What determines the bytes of a shard, hashed: two runs with equal fingerprints write equal shards
    (on the same kind of device and torch build). The solver order only changes the bytes of the
    multistep samplers: it is left out for ddim and ddpm, whose sets written before it existed keep
    their fingerprints. `condition`: what label-conditioned sampling draws the images given
    (synth/target.py: Condition.identity); absent for the joint, whose fingerprints stay those of
    sets written before it existed. sampling.precision and sampling.compile change the floats: they are
    in it unless at their defaults."""
    if sampling.get("sampler") not in MULTISTEP_SAMPLERS:
        sampling = {k: v for k, v in sampling.items() if k != "solver_order"}
    # Settings at the value every earlier set was written with are left out, so those sets keep their fingerprints.
    sampling = {k: v for k, v in sampling.items() if not (k in UNRECORDED_DEFAULTS and v == UNRECORDED_DEFAULTS[k])}
    fields = {
        "model": model_hash,
        "sampling": sampling,
        "seed": seed,
        "samples_per_shard": samples_per_shard,
        "batch_size": batch_size,
        "format": shard_format,
    }
    if condition is not None:
        fields["condition"] = condition
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Bytes per pair in a shard, measured (bench/bench_synthesis.py, bench/results/synthesis.json):
# - 256 x 256, 5 classes, simulated SAR scenes with soft labels like a trained model's (blurred one-hot):
#   image PNG 0.86 byte per pixel (speckle barely compresses), soft-label PNG 0.055-0.077 byte per pixel
#   per class (smooth maps): 77-84 kB per pair with the tar headers and the JSON record;
# - an untrained model's noisy soft labels compress far worse: 0.56 byte per pixel per class (32 px).
TYPICAL_IMAGE_BYTES_PER_PIXEL, TYPICAL_SOFT_BYTES_PER_PIXEL_PER_CLASS = 0.9, 0.08
MAX_IMAGE_BYTES_PER_PIXEL, MAX_SOFT_BYTES_PER_PIXEL_PER_CLASS = 1.0, 0.6
TAR_AND_RECORD_BYTES = 3 * 512 + 3 * 512 + 400  # 3 member headers, their padding at most, the JSON record


def estimate_bytes_per_pair(resolution: int, num_classes: int, typical: bool = False) -> int:
    """One pair's bytes in a shard: an upper estimate (noisy soft labels of an under-trained model), or
    with typical=True what a trained model's smooth soft labels take."""
    pixels = resolution * resolution
    image, soft = (
        (TYPICAL_IMAGE_BYTES_PER_PIXEL, TYPICAL_SOFT_BYTES_PER_PIXEL_PER_CLASS)
        if typical
        else (MAX_IMAGE_BYTES_PER_PIXEL, MAX_SOFT_BYTES_PER_PIXEL_PER_CLASS)
    )
    return int(pixels * image + pixels * num_classes * soft + TAR_AND_RECORD_BYTES)
