"""Streaming input of the student: real patches and generated shards, mixed at a ratio.

Slots. A run has slots = ranks x DataLoader workers readers; slot = rank * workers + worker
(workers = 0 counts as one reader, the main process).

Generated shards -> slots (``assign_shards``), per pass (epoch) over the dataset:
  * shards >= slots: shard i (in the pass's seeded order) goes to slot i % slots; every slot gets
    at least one shard, and every sample of every shard is read exactly once per pass.
  * shards < slots (the stated rule for few shards): each shard is shared by the slots
    s = i, i + shards, i + 2 * shards, ...; a slot sharing a shard with m slots reads the samples
    whose index in the shard is congruent to its position among them modulo m. Again each sample
    is read exactly once per pass and no slot is left without data, provided every shard has at
    least ceil(slots / shards) samples: ``GeneratedStream.check_slots`` refuses the run up front
    otherwise (it never hangs waiting for data a slot cannot get).
Each slot shuffles its pass in a buffer of ``shuffle_buffer`` samples, drained at the end of the
pass, and then starts the next pass (a new seeded shard order), so training length is set in steps.
Slots' passes differ in length where the shards do not divide evenly among them (10 shards on 4 slots:
3, 3, 2, 2; 2 shards shared by 3 slots: halves and a whole), and every slot delivers at the same rate,
so a slot of fewer samples starts its next pass sooner: over a run its samples are read up to (k + 1) / k
as often as the others' (k: the smaller count), though the shard order, redrawn each pass, moves which
shards those are. One slot (one process, num_workers 0, as in every committed study) has no such
difference. Equal passes would split shards between slots, each reading whole tars for a part of them.

Real patches: slot s reads positions s, s + slots, ... of a seeded permutation stream
(``core.steps.StreamPositions``): ranks and workers never read the same position.

Order. Whatever order the DataLoader's workers deliver in, ``RoundRobin`` hands item i of a rank to
the consumer from worker i % workers, so the sequence a rank consumes is a function of (seed,
slot layout) only. A resumed run therefore continues exactly: the real stream starts each worker at
its position, the generated stream starts each slot at the (pass, index) recorded in the
checkpoint (re-reading at most the current pass of that slot, without decoding it).

Mixing: batch i holds n_gen(i) = floor((i+1) B rho) - floor(i B rho) generated samples, rho =
R / (1 + R) for ratio R, and B - n_gen(i) real ones: each batch's generated share is within 1 / B
of rho, and the share over the first n batches within 1 / (n B).

Bad shards and samples follow ``on_bad_shard``: "raise" stops with StreamError naming the shard
(and the sample); "warn" logs it, skips it, and reports it on the next item it delivers
(``item["bad_shards"]``) so the trainer can count it and name it in its final log. An endless reader
stops (StreamError) after EMPTY_PASSES passes in a row without a usable sample only when none of the
shards it has read gave one when last read. Every check
the shard set makes on read is one (ShardSet.read_checked, decode_sample; docs/reliability.md):
  * the whole shard is skipped for an unreadable marker, a missing object, a tar of another size
    (or sha256, with verify="sha256") than its marker records;
  * the rest of the shard is skipped, after the samples read before the damage, for a torn,
    corrupt or oversized tar member, and reported for fewer or more samples than its marker records;
  * one sample is skipped (its shard's other samples are read) for a missing or unexpected member,
    a malformed record, an image or soft label of another size, form or class count than the
    set's, a PNG that inflates past its size, soft-label levels not summing to 255.
An unreadable dataset.json is reported the same way, and the sample shape is then taken from the
shards (the first shard's first sample; every shard must agree with it).
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from dakter_scale.core.steps import StreamPositions, derive_seed
from dakter_scale.data import storage
from dakter_scale.data.real import PatchDataset, normalise
from dakter_scale.data.shardset import (
    DatasetInfo,
    SampleError,
    SampleShape,
    ShardError,
    ShardInfo,
    ShardSet,
    decode_sample,
    dequantise,
    read_record,
)
from dakter_scale.errors import UserError

log = logging.getLogger("dakter_scale")

BAD_SHARDS = "bad_shards"  # item key: bad shards met since the previous item (a list of reasons)
POLICIES = ("warn", "raise")
# An endless reader gives up after this many passes in a row without a usable sample, instead of
# spinning, once no shard it has read gave a usable sample when last read: one bad shard among few
# leaves a reader empty for a pass now and then, and by chance for 8 in a row over a long run.
EMPTY_PASSES = 8
# Bad-shard bookkeeping stays bounded (a set of bad samples can be large): the trainer keeps the first
# MAX_BAD_REASONS distinct reasons and a count per shard; a reader holds at most MAX_NOTICES unreported.
MAX_BAD_REASONS = 20
MAX_NOTICES = 1000


class StreamError(UserError, RuntimeError):
    """A streaming input that cannot deliver (a bad shard under policy 'raise', or no usable data)."""


# -- assignment ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    shard: int  # position in the pass's shard order
    stride: int  # read samples with index % stride == offset
    offset: int


def assign_shards(num_shards: int, slots: int, slot: int) -> list[Assignment]:
    """What `slot` of `slots` reads in one pass over `num_shards` shards (see the module docstring)."""
    if not 0 <= slot < slots:
        raise ValueError(f"slot {slot} outside [0, {slots})")
    if num_shards < 1:
        return []
    if num_shards >= slots:
        return [Assignment(i, 1, 0) for i in range(slot, num_shards, slots)]
    shard = slot % num_shards
    sharing = list(range(shard, slots, num_shards))
    return [Assignment(shard, len(sharing), sharing.index(slot))]


def slot_of(rank: int, worker: int, workers: int) -> int:
    """The slot of a rank's DataLoader worker (workers = 0: the main process, one reader). A rank's slots
    are slot_of(rank, 0, workers) up to slot_of(rank + 1, 0, workers); world ranks have slot_of(world, 0, workers)."""
    return rank * max(1, workers) + worker


def slot_info() -> tuple[int, int]:
    """(this DataLoader worker's id, number of workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# -- generated samples -------------------------------------------------------------------------


def class_argmax(q: np.ndarray) -> np.ndarray:
    """argmax over the class axis of (K, H, W), the first maximum on ties (as np.argmax), as int64.

    K passes of elementwise maximum: several times faster than np.argmax(axis=0), which walks the
    non-contiguous class axis pixel by pixel (and torch's argmax(0) is slower still on one thread).
    """
    k = q.shape[0]
    if q.dtype == np.uint8 and k <= 256:
        # Integer levels: pack (level, K-1-k) into one number and take the elementwise max over the
        # contiguous class planes; ties go to the lowest k, as np.argmax. About 4x faster again.
        shift = max(1, (k - 1).bit_length())
        packed = (q.astype(np.uint16 if shift <= 8 else np.uint32) << shift) | np.arange(
            k - 1, -1, -1, dtype=np.uint16
        ).reshape(k, 1, 1)
        return (k - 1) - (packed.max(axis=0) & ((1 << shift) - 1)).astype(np.int64)
    best = q[0].copy()
    index = np.zeros(q.shape[1:], dtype=np.int64)
    for k in range(1, q.shape[0]):
        index[q[k] > best] = k
        np.maximum(best, q[k], out=best)
    return index


def decode_generated(sample: dict, shape: SampleShape | None = None) -> dict:
    """A raw shard sample (bytes per member) -> the tensors the student trains on (checked: decode_sample)."""
    image, levels, meta = decode_sample(sample, levels=True, shape=shape)
    return {
        "key": sample["__key__"],
        "x": normalise(image)[None],
        "q": torch.from_numpy(dequantise(levels)),
        "mask": torch.from_numpy(class_argmax(levels)),  # on the uint8 levels: same order, 4x less memory
        "generated": True,
        "confidence": float(meta["mean_confidence"]),
    }


@dataclass(frozen=True)
class _BadShard:
    reason: str


def limit_shards(infos: list[ShardInfo], max_samples: int, url: str = "") -> tuple[list[ShardInfo], dict[int, int]]:
    """The shards holding the first max_samples pairs in key order, and the per-shard index limit
    of the last, partly used one. Fewer pairs than asked: all of them, with a warning."""
    total = sum(i.count for i in infos)
    if total < max_samples:
        log.warning(
            "%s holds %d generated pairs, fewer than the %d asked for: using all of them", url, total, max_samples
        )
        return list(infos), {}
    kept, limits, left = [], {}, max_samples
    for info in sorted(infos, key=lambda i: i.shard):
        if left <= 0:
            break
        kept.append(info)
        if info.count > left:
            limits[info.shard] = left
        left -= info.count
    return kept, limits


class GeneratedStream(torch.utils.data.IterableDataset):
    """Shuffled stream of generated pairs from finished shards, split across rank x worker slots.

    start: {slot: (pass, samples of that pass already consumed)} to resume from (default: the
        beginning). passes: stop after this many passes (None: endless, for training).
    min_confidence: keep only samples whose manifest statistic mean_confidence reaches it.
    max_samples: use only the first max_samples pairs in key order (0: all): the paper's
        "augmentation ratio r" uses r * |D| distinct generated pairs.
    on_bad_shard: "warn" or "raise" (see the module docstring). An endless reader that finds no
        usable sample in EMPTY_PASSES passes in a row raises StreamError instead of spinning.
    shape: what every sample must be (the trainer passes its data's); default: the set's
        (ShardSet.sample_shape). verify: "size" (each tar's size against its marker) or "sha256"
        (its hash as well: every tar is read twice).
    Items carry "slot", "pass" and "index" (position in the slot's pass) for checkpoints.
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
        start: dict[int, tuple[int, int]] | None = None,
        passes: int | None = None,
        infos: list[ShardInfo] | None = None,
        max_samples: int = 0,
        shape: SampleShape | None = None,
        verify: str = "size",
    ):
        if on_bad_shard not in POLICIES:
            raise ValueError(f"on_bad_shard must be one of {POLICIES}, got {on_bad_shard!r}")
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        if verify not in ("size", "sha256"):
            raise ValueError(f"verify must be size or sha256, got {verify!r}")
        self.on_bad_shard, self.verify = on_bad_shard, verify
        self.shards = ShardSet(url)
        self.start_notices: list[str] = []  # bad markers and header, reported by slot 0
        if infos is None:
            done, unreadable = self.shards.read_markers()
            for shard, reason in unreadable.items():
                self.start_notices.append(self._bad(f"{self.shards.marker_url(shard)}: {reason}").reason)
            infos = list(done.values())
        self.infos = infos
        if not self.infos:
            raise StreamError(
                f"{self.shards.where}: no finished shards (no shard-*.json markers); run jobs/synthesize.py first"
            )
        try:
            header = self.shards.info() or DatasetInfo()
        except ShardError as e:
            self.start_notices.append(
                self._bad(
                    str(e) if on_bad_shard == "raise" else f"{e} (ignored: the sample shape is taken from the shards)"
                ).reason
            )
            header = DatasetInfo()
        if header.fingerprint:  # a shard another run wrote into this prefix is never read as this set's
            own = []
            for info in self.infos:
                theirs = info.marker.get("fingerprint")
                if theirs not in (None, header.fingerprint):
                    self.start_notices.append(
                        self._bad(
                            f"{self.shards.marker_url(info.shard)}: a shard of another run (fingerprint {theirs}, the set's {header.fingerprint})"
                        ).reason
                    )
                else:
                    own.append(info)
            self.infos = own
            if not self.infos:
                raise StreamError(
                    f"{self.shards.where}: no finished shard of this set (fingerprint {header.fingerprint})"
                )
        if shape is None:
            try:
                shape = self.shards.sample_shape(self.infos, header)
            except ShardError as e:
                raise StreamError(str(e)) from None
        self.shape = shape
        self.limits: dict[int, int] = {}  # shard id -> samples with index below this are used
        if max_samples > 0:
            self.infos, self.limits = limit_shards(self.infos, max_samples, self.shards.where)
        self.url, self.rank, self.world, self.seed = url, rank, world, seed
        self.shuffle_buffer, self.min_confidence = shuffle_buffer, min_confidence
        self.start = dict(start or {})
        self.passes = passes

    def check_slots(self, workers: int) -> None:
        """Refuse a layout in which some slot would get no sample (the few-shards rule's limit)."""
        slots = slot_of(self.world, 0, workers)
        smallest = min(self.limits.get(i.shard, i.count) for i in self.infos)
        if len(self.infos) < slots and smallest < math.ceil(slots / len(self.infos)):
            raise StreamError(
                f"{self.shards.where}: {len(self.infos)} shard(s) of as few as {smallest} samples cannot feed {slots} readers "
                f"(ranks x workers); use fewer DataLoader workers or generate more pairs"
            )

    # A pass of one slot: its shards in the pass's order, filtered, with bad-shard notices in line.
    def _pass_samples(
        self, slot: int, slots: int, pass_: int, usable: dict[int, bool] | None = None
    ) -> Iterator[dict | _BadShard]:
        """usable: filled with, per shard read (by shard id), whether it gave a checked sample this time."""
        order = list(range(len(self.infos)))
        random.Random(derive_seed(self.seed, pass_)).shuffle(order)
        for a in assign_shards(len(order), slots, slot):
            gave = False
            for item in self._read_shard(self.infos[order[a.shard]], a):
                gave = gave or not isinstance(item, _BadShard)
                yield item
            if usable is not None:
                usable[self.infos[order[a.shard]].shard] = gave

    def _read_shard(self, info: ShardInfo, a: Assignment) -> Iterator[dict | _BadShard]:
        """This slot's samples of a shard, a notice in line for each bad sample (ShardSet.read_checked);
        a bad shard (its checks, or a failed read) ends with a notice after the samples read before the damage."""
        limit = self.limits.get(info.shard, info.count)
        try:
            for sample in self.shards.read_checked(info, self.shape, self.verify):
                if isinstance(sample, SampleError):
                    yield self._bad(str(sample), "sample")
                    continue
                record = read_record(sample)  # parsed and checked by read_checked: not parsed again
                index = record["index"]
                if index >= limit or index % a.stride != a.offset:
                    continue
                if self.min_confidence > 0 and record["mean_confidence"] < self.min_confidence:
                    continue
                yield sample
        except ShardError as e:
            yield self._bad(str(e))
        except StreamError:  # _bad's own, under "raise": already worded
            raise
        except Exception as e:  # opening or reading failed (missing object, permissions, network)
            yield self._bad(f"shard {info.tar}: {type(e).__name__}: {storage.error_line(e)}")

    def _bad(self, reason: str, what: str = "shard") -> _BadShard:
        if self.on_bad_shard == "raise":
            raise StreamError(f"{reason} (student.on_bad_shard=raise; use warn to skip bad shards)")
        log.warning("skipping bad %s: %s", what, reason)
        return _BadShard(reason)

    def _shuffled_pass(
        self, slot: int, slots: int, pass_: int, usable: dict[int, bool] | None = None
    ) -> Iterator[dict | _BadShard]:
        """The pass through a shuffle buffer, drained at the end (so a pass's order depends on it alone)."""
        rng = random.Random(derive_seed(self.seed, 7, slot, pass_))
        buffer: list[dict] = []

        def take() -> dict:  # a uniformly random element, in O(1)
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            return buffer.pop()

        for raw in self._pass_samples(slot, slots, pass_, usable):
            if isinstance(raw, _BadShard):
                yield raw
                continue
            buffer.append(raw)
            if len(buffer) >= self.shuffle_buffer:
                yield take()
        while buffer:
            yield take()

    def __iter__(self) -> Iterator[dict]:
        worker, workers = slot_info()
        slot, slots = slot_of(self.rank, worker, workers), slot_of(self.world, 0, workers)
        pass_, skip = self.start.get(slot, (0, 0))
        notices: list[str] = list(self.start_notices) if slot == 0 else []
        empty = 0  # passes in a row without a usable sample
        usable: dict[int, bool] = {}  # per shard this reader has read: whether it gave a sample when last read

        def notice(reason: str) -> None:  # a pass whose samples all fail decoding delivers none to carry them
            if len(notices) < MAX_NOTICES:
                notices.append(reason)

        while self.passes is None or pass_ < self.passes:
            index = 0  # position in the pass (what a checkpoint records), decodable or not
            read: dict[int, bool] = {}  # this pass's shards: whether read_checked gave a sample
            delivered: set[int] = set()  # shards a sample was delivered from (or before the checkpoint)
            for raw in self._shuffled_pass(slot, slots, pass_, read):
                if isinstance(raw, _BadShard):
                    notice(raw.reason)
                    continue
                index += 1
                if index <= skip:
                    delivered.add(ShardSet.parse_key(raw["__key__"])[0])
                    continue  # consumed before the checkpoint: not decoded again
                try:
                    item = decode_generated(raw, self.shape)
                except ShardError as e:
                    notice(self._bad(f"shard {raw.get('__url__', '?')}: {e}", "sample").reason)
                    continue
                delivered.add(ShardSet.parse_key(raw["__key__"])[0])
                item.update(slot=slot, worker=worker, index=index, **{"pass": pass_})
                if notices:
                    item[BAD_SHARDS], notices = notices, []
                yield item
            # usable: a shard whose checked samples all fail decoding gave nothing (it spun forever before)
            usable.update({shard: gave and shard in delivered for shard, gave in read.items()})
            empty = empty + 1 if not delivered else 0
            if empty >= EMPTY_PASSES and self.passes is None and not any(usable.values()):
                raise StreamError(
                    f"{self.shards.where}: reader {slot} of {slots} found no usable sample in {empty} passes in a row (all its shards bad, or every sample filtered out?)"
                )
            pass_, skip = pass_ + 1, 0
        if notices:  # only reachable with a finite number of passes
            yield {"key": None, "worker": worker, BAD_SHARDS: notices}


# -- real samples ------------------------------------------------------------------------------


class RealStream(torch.utils.data.IterableDataset):
    """Endless stream of real training patches; slot s reads positions s, s + slots, ... .

    skip: samples this rank consumed already (resume); with RoundRobin delivery worker w consumed
    skip // workers of them, plus one when w < skip % workers.
    """

    def __init__(self, dataset: PatchDataset, rank: int = 0, world: int = 1, seed: int = 0, skip: int = 0):
        self.dataset, self.rank, self.world, self.seed, self.skip = dataset, rank, world, seed, skip
        self.num_classes = dataset.source.num_classes

    def __iter__(self) -> Iterator[dict]:
        worker, workers = slot_info()
        slot, slots = slot_of(self.rank, worker, workers), slot_of(self.world, 0, workers)
        positions = StreamPositions(len(self.dataset), 1, self.seed, slot, slots)
        g = self.skip // workers + (1 if worker < self.skip % workers else 0)
        while True:
            ((index, epoch),) = positions.batch(g)
            x, mask = self.dataset[(index, epoch)]
            yield {
                "key": f"real-{index}-{epoch}",
                "x": x,
                "mask": mask,
                "q": None,
                "generated": False,
                "worker": worker,
            }
            g += 1


# -- delivery ----------------------------------------------------------------------------------


class RoundRobin:
    """Items of a DataLoader over W workers in the fixed order: item i from worker i % W.

    `consumed` items were taken before (a resumed run), so the next comes from worker consumed % W.
    Items arriving early wait in a per-worker queue (at most a few per worker with the DataLoader's
    in-order round robin), which makes the order independent of how the DataLoader interleaves.
    """

    def __init__(
        self, loader: torch.utils.data.DataLoader | torch.utils.data.IterableDataset, workers: int, consumed: int = 0
    ):
        self.loader = loader
        self.iterator = iter(loader)
        self.workers = max(1, workers)
        self.next_worker = consumed % self.workers
        self.pending: list[deque] = [deque() for _ in range(self.workers)]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        w = self.next_worker
        while not self.pending[w]:
            try:
                item = next(self.iterator)
            except StopIteration:
                raise
            except Exception as e:
                raise _unwrapped(e) from e
            self.pending[item["worker"]].append(item)
        self.next_worker = (w + 1) % self.workers
        return self.pending[w].popleft()

    def close(self) -> None:
        """Stop the worker processes now (os._exit at the end of a run would orphan them)."""
        shutdown = getattr(self.iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def _unwrapped(e: Exception) -> Exception:
    """A DataLoader worker's exception re-raised in the main process reads "Caught StreamError in
    DataLoader worker process 1. Original Traceback ..."; give it back its own one-line message
    (the job prints that line), keeping the type."""
    text = str(e)
    if "Original Traceback" not in text:
        return e
    last = text.strip().splitlines()[-1]
    message = last.split(": ", 1)[1] if ": " in last else last
    try:
        return type(e)(message)
    except Exception:  # an exception type that cannot be rebuilt from a message
        return e


def stream_loader(dataset: torch.utils.data.IterableDataset, num_workers: int, consumed: int = 0) -> RoundRobin:
    """An iterator over an IterableDataset, one sample at a time, in RoundRobin order: through a
    DataLoader with worker processes, or, with num_workers=0, the dataset itself (a DataLoader in
    the main process only adds about 50 us per sample of machinery)."""
    if num_workers == 0:
        return RoundRobin(dataset, 0, consumed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_identity)
    return RoundRobin(loader, num_workers, consumed)


def _identity(item):
    return item


# -- mixing ------------------------------------------------------------------------------------


def generated_count(batch_index: int, batch_size: int, ratio: float) -> int:
    """Generated samples in batch i for augmentation ratio R (generated per real): deterministic,
    share R / (1 + R) over any run of batches, within one sample per batch."""
    return consumed(batch_index + 1, batch_size, ratio)[1] - consumed(batch_index, batch_size, ratio)[1]


def consumed(batches: int, batch_size: int, ratio: float) -> tuple[int, int]:
    """(real, generated) samples one rank consumed in its first `batches` batches."""
    if ratio <= 0:
        return batches * batch_size, 0
    if math.isinf(ratio):
        return 0, batches * batch_size
    rho = ratio / (1.0 + ratio)
    gen = math.floor(batches * batch_size * rho)
    return batches * batch_size - gen, gen


def collate(items: list[dict], num_classes: int) -> dict[str, Any]:
    x = torch.stack([it["x"] for it in items])
    mask = torch.stack([it["mask"] for it in items])
    q = torch.stack(
        [
            it["q"]
            if it["q"] is not None
            else torch.nn.functional.one_hot(it["mask"], num_classes).permute(2, 0, 1).float()
            for it in items
        ]
    )
    generated = torch.tensor([bool(it["generated"]) for it in items])
    return {"x": x, "mask": mask, "q": q, "generated": generated, "keys": [it["key"] for it in items]}


def bad_shard_name(reason: str) -> str:
    """The shard a bad-shard reason names ("shard-000001"), or "set" for the set's own (its header)."""
    found = _SHARD_NAME.search(reason)
    return found.group(0) if found else "set"


_SHARD_NAME = re.compile(r"shard-\d+(?=\.(?:tar|json))")


class MixedBatches:
    """Batches of real + generated samples at a ratio.

    augment: called on every sample with its batch index and place in the global batch (this rank's
    samples start at first_place, rank * batch_size), so that what it does is a function of the
    position: a resumed run continues exactly, and ranks draw apart.
    Keeps what a checkpoint needs: the (pass, index) each generated slot reached, and the bad
    shards the stream reported: the first MAX_BAD_REASONS distinct reasons (a bad shard met again in a
    later pass counts once) and, per shard, how many distinct reasons named it (bad_counts; reasons
    past the first MAX_BAD_REASONS that a resumed run meets again are counted again).
    """

    def __init__(
        self,
        real: Iterator[dict] | None,
        generated: Iterator[dict] | None,
        batch_size: int,
        ratio: float,
        num_classes: int,
        start_batch: int = 0,
        positions: dict[int, tuple[int, int]] | None = None,
        bad_shards: set[str] | None = None,
        bad_counts: dict[str, int] | None = None,
        augment: Callable[[dict, int, int], dict] | None = None,
        first_place: int = 0,
    ):
        if ratio > 0 and generated is None:
            raise StreamError(f"ratio {ratio} needs generated data (--synthetic URL)")
        if not math.isinf(ratio) and real is None:
            raise StreamError("real data is needed unless ratio is infinite")
        self.real, self.generated = real, generated
        self.batch_size, self.ratio, self.num_classes = batch_size, ratio, num_classes
        self.index = start_batch
        self.positions: dict[int, tuple[int, int]] = dict(positions or {})
        self.bad_shards: set[str] = set(sorted(bad_shards or ())[:MAX_BAD_REASONS])
        self.bad_counts: dict[str, int] = dict(bad_counts or {})
        self._seen: set[str] = set(self.bad_shards)  # in memory only: repeats in later passes count once
        self.augment = augment  # (item, batch index, place in the global batch) -> item (student/augment.py)
        self.first_place = first_place

    def _next_generated(self) -> dict:
        while True:
            item = next(self.generated)
            for reason in item.get(BAD_SHARDS, ()):
                self.add_bad(reason)
            if item["key"] is not None:
                self.positions[item["slot"]] = (item["pass"], item["index"])
                return item

    def add_bad(self, reason: str) -> None:
        if reason in self._seen:
            return
        self._seen.add(reason)
        shard = bad_shard_name(reason)
        self.bad_counts[shard] = self.bad_counts.get(shard, 0) + 1
        if len(self.bad_shards) < MAX_BAD_REASONS:
            self.bad_shards.add(reason)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        n_gen = generated_count(self.index, self.batch_size, self.ratio)
        items = [next(self.real) for _ in range(self.batch_size - n_gen)]
        items += [self._next_generated() for _ in range(n_gen)]
        if self.augment is not None:
            items = [self.augment(item, self.index, self.first_place + i) for i, item in enumerate(items)]
        self.index += 1
        return collate(items, self.num_classes)

    def close(self) -> None:
        for stream in (self.real, self.generated):
            if stream is not None and hasattr(stream, "close"):
                stream.close()
