"""Streaming input of the student: real patches and generated shards, mixed at a ratio.

Slots. A run has world = ranks x DataLoader workers reading slots; slot = rank * workers + worker.

Generated shards -> slots (``assign_shards``), per epoch:
  * shards >= slots: shard i (in the epoch's seeded order) goes to slot i % slots; every slot gets
    at least one shard, and every sample of every shard is read exactly once per epoch.
  * shards < slots (the stated rule for few shards): each shard is shared by the slots
    s = i, i + shards, i + 2 * shards, ...; a slot sharing a shard with m slots reads the samples
    whose index in the shard is congruent to its position among them modulo m. Again each sample
    is read exactly once per epoch and no slot is left without data (as long as shards have at least
    ceil(slots / shards) samples, which ``GeneratedStream`` checks up front instead of hanging).
Each slot's stream repeats over epochs (a new seeded shard order each epoch) and is shuffled in a
buffer, so training length is set in steps.

Real patches: a slot reads positions slot, slot + slots, ... of the seeded permutation stream
(``training.StreamPositions``), so ranks and workers never read the same position.

Mixing: batch i holds n_gen(i) = floor((i+1) B rho) - floor(i B rho) generated samples, rho =
R / (1 + R) for ratio R, and B - n_gen(i) real ones: over any window the generated share is rho
within 1 / B per batch. Both streams are deterministic functions of (seed, slot, position), so a
resumed run skips what was consumed and continues exactly.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import numpy as np
import torch
from webdataset.tariterators import group_by_keys, tar_file_expander

from dakter_scale.data import shards
from dakter_scale.data.real import PatchDataset, normalise
from dakter_scale.training import StreamPositions, derive_seed

log = logging.getLogger("dakter_scale")

BAD_SHARD = "__bad_shard__"


class StreamError(RuntimeError):
    """A streaming input that cannot deliver (a bad shard under policy 'raise', or no usable data)."""


# -- assignment ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    shard: int  # position in the shard list
    stride: int  # read samples with index % stride == offset
    offset: int


def assign_shards(num_shards: int, slots: int, slot: int) -> list[Assignment]:
    """What `slot` of `slots` reads in one epoch over `num_shards` shards (see the module docstring)."""
    if not 0 <= slot < slots:
        raise ValueError(f"slot {slot} outside [0, {slots})")
    if num_shards < 1:
        return []
    if num_shards >= slots:
        return [Assignment(i, 1, 0) for i in range(slot, num_shards, slots)]
    shard = slot % num_shards
    sharing = [s for s in range(slots) if s % num_shards == shard]
    return [Assignment(shard, len(sharing), sharing.index(slot))]


def slot_info() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# -- generated samples -------------------------------------------------------------------------


def _open_shards(urls: list[str]) -> Iterator[dict]:
    for url in urls:
        yield {"url": url, "stream": fsspec.open(url, "rb").open()}


def decode_generated(sample: dict) -> dict:
    image, q, meta = shards.decode_sample(sample)
    return {
        "key": sample["__key__"],
        "x": normalise(image)[None],
        "q": torch.from_numpy(q),
        "mask": torch.from_numpy(q.argmax(axis=0).astype(np.int64)),
        "generated": True,
        "confidence": float(meta.get("mean_confidence", 1.0)),
    }


class GeneratedStream(torch.utils.data.IterableDataset):
    """Endless, shuffled stream of generated pairs from finished shards, split across rank x worker.

    on_bad_shard: "warn" skips a missing or corrupt shard (what was read before the damage stays),
    logs it and emits a BAD_SHARD record the mixer counts; "raise" stops with StreamError naming
    the shard. A slot that finds no usable sample in a whole epoch raises instead of spinning.
    """

    def __init__(
        self,
        url: str,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 256,
        min_confidence: float = 0.0,
        on_bad_shard: str = "warn",
        skip: int = 0,
        infos: list[shards.ShardInfo] | None = None,
    ):
        self.infos = infos if infos is not None else shards.done_shards(url)
        if not self.infos:
            raise StreamError(f"{url}: no finished shards (no shard-*.json markers); run jobs/synthesize.py first")
        self.url, self.rank, self.world, self.seed = url, rank, world, seed
        self.shuffle_buffer, self.min_confidence, self.on_bad_shard = shuffle_buffer, min_confidence, on_bad_shard
        self.skip = skip  # samples this rank already consumed (resume)
        self.dataset_info = shards.read_dataset_info(url) or {}

    def check_slots(self, workers: int) -> None:
        slots = self.world * max(1, workers)
        smallest = min(i.count for i in self.infos)
        if len(self.infos) < slots and smallest < math.ceil(slots / len(self.infos)):
            raise StreamError(
                f"{self.url}: {len(self.infos)} shard(s) of as few as {smallest} samples cannot feed {slots} readers "
                f"(ranks x workers); use fewer DataLoader workers or generate more pairs"
            )

    def _slot_stream(self, slot: int, slots: int) -> Iterator[dict]:
        epoch = 0
        while True:
            order = list(range(len(self.infos)))
            random.Random(derive_seed(self.seed, epoch)).shuffle(order)
            produced = 0
            for a in assign_shards(len(order), slots, slot):
                info = self.infos[order[a.shard]]
                for sample in self._read_shard(info):
                    if BAD_SHARD in sample:
                        yield sample
                        continue
                    _, index = shards.parse_key(sample["__key__"])
                    if index % a.stride == a.offset:
                        produced += 1
                        yield sample
            if produced == 0:
                raise StreamError(f"{self.url}: slot {slot}/{slots} read no usable sample in a whole pass (all its shards bad?)")
            epoch += 1

    def _read_shard(self, info: shards.ShardInfo) -> Iterator[dict]:
        failure: list[str] = []

        def handler(exn: Exception) -> bool:
            failure.append(f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}")
            return False  # stop this shard; the policy is applied below

        try:
            streams = _open_shards([info.tar])
            files = tar_file_expander(streams, handler=handler)
            yield from group_by_keys(files, handler=handler)
        except Exception as e:  # opening failed (missing object, permissions)
            failure.append(f"{type(e).__name__}: {e}")
        if failure:
            reason = f"shard {info.tar}: {failure[0]}"
            if self.on_bad_shard == "raise":
                raise StreamError(reason)
            log.warning("skipping bad shard %s", reason)
            yield {BAD_SHARD: reason}

    def __iter__(self) -> Iterator[dict]:
        worker, workers = slot_info()
        slot, slots = self.rank * workers + worker, self.world * workers
        rng = random.Random(derive_seed(self.seed, 7, slot))
        skip = self.skip // workers + (1 if worker < self.skip % workers else 0)
        buffer: list[dict] = []
        for raw in self._slot_stream(slot, slots):
            if BAD_SHARD in raw:
                yield raw
                continue
            buffer.append(raw)
            if len(buffer) < self.shuffle_buffer:
                continue
            item = buffer.pop(rng.randrange(len(buffer)))
            out = self._emit(item)
            if out is None:
                continue
            if skip > 0:
                skip -= 1
                continue
            yield out

    def _emit(self, raw: dict) -> dict | None:
        if self.min_confidence > 0:
            meta = json.loads(raw["json"])
            if meta.get("mean_confidence", 1.0) < self.min_confidence:
                return None
        return decode_generated(raw)


# -- real samples ------------------------------------------------------------------------------


class RealStream(torch.utils.data.IterableDataset):
    """Endless stream of real training patches; slot s reads positions s, s + slots, ... ."""

    def __init__(self, dataset: PatchDataset, rank: int = 0, world: int = 1, seed: int = 0, skip: int = 0):
        self.dataset, self.rank, self.world, self.seed, self.skip = dataset, rank, world, seed, skip
        self.num_classes = dataset.source.num_classes

    def __iter__(self) -> Iterator[dict]:
        worker, workers = slot_info()
        slot, slots = self.rank * workers + worker, self.world * workers
        positions = StreamPositions(len(self.dataset), 1, self.seed, slot, slots)
        # Samples are handed out round-robin over workers, so worker w has consumed its share of skip.
        g = self.skip // workers + (1 if worker < self.skip % workers else 0)
        while True:
            (index, epoch), = positions.batch(g)
            x, mask = self.dataset[(index, epoch)]
            yield {"key": f"real-{index}-{epoch}", "x": x, "mask": mask, "q": None, "generated": False, "confidence": 1.0}
            g += 1


# -- mixing ------------------------------------------------------------------------------------


def generated_count(batch_index: int, batch_size: int, ratio: float) -> int:
    """Generated samples in batch i for augmentation ratio R (generated per real): deterministic,
    share R / (1 + R) over any run of batches, within one sample per batch."""
    if ratio <= 0:
        return 0
    if math.isinf(ratio):
        return batch_size
    rho = ratio / (1.0 + ratio)
    return math.floor((batch_index + 1) * batch_size * rho) - math.floor(batch_index * batch_size * rho)


def consumed(batches: int, batch_size: int, ratio: float) -> tuple[int, int]:
    """(real, generated) samples one rank consumed in its first `batches` batches."""
    if ratio <= 0:
        return batches * batch_size, 0
    rho = ratio / (1.0 + ratio)
    gen = math.floor(batches * batch_size * rho)
    return batches * batch_size - gen, gen


def collate(items: list[dict], num_classes: int) -> dict[str, Any]:
    x = torch.stack([it["x"] for it in items])
    mask = torch.stack([it["mask"] for it in items])
    q = torch.stack([it["q"] if it["q"] is not None else torch.nn.functional.one_hot(it["mask"], num_classes).permute(2, 0, 1).float() for it in items])
    generated = torch.tensor([bool(it["generated"]) for it in items])
    return {"x": x, "mask": mask, "q": q, "generated": generated, "keys": [it["key"] for it in items]}


class MixedBatches:
    """Batches of real + generated samples at a ratio; counts the bad shards the stream reports."""

    def __init__(self, real: Iterator[dict] | None, generated: Iterator[dict] | None, batch_size: int, ratio: float, num_classes: int, start_batch: int = 0):
        if ratio > 0 and generated is None:
            raise StreamError(f"ratio {ratio} needs generated data (--synthetic URL)")
        if (ratio == 0 or not math.isinf(ratio)) and real is None:
            raise StreamError("real data is needed unless ratio is infinite")
        self.real, self.generated = real, generated
        self.batch_size, self.ratio, self.num_classes = batch_size, ratio, num_classes
        self.index = start_batch
        self.bad_shards: list[str] = []

    def _next_generated(self) -> dict:
        while True:
            item = next(self.generated)
            if BAD_SHARD in item:
                self.bad_shards.append(item[BAD_SHARD])
                continue
            return item

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        n_gen = generated_count(self.index, self.batch_size, self.ratio)
        items = [next(self.real) for _ in range(self.batch_size - n_gen)]
        items += [self._next_generated() for _ in range(n_gen)]
        self.index += 1
        return collate(items, self.num_classes)


def stream_loader(dataset: torch.utils.data.IterableDataset, num_workers: int) -> Iterator[dict]:
    """An endless iterator over an IterableDataset through a DataLoader (one sample at a time)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0, collate_fn=_identity)
    return iter(loader)


def _identity(item):
    return item
