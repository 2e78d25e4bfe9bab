"""One shard of generated pairs: the unit of work. Plain Python; Ray only schedules it.

A ShardWriter is built once (it loads the model) and called once per shard. It streams the
shard's tar to storage as it samples, then writes the shard's Parquet manifest, then, last, the
done marker. A reader that trusts only markers never sees a partial shard.

Sampling and writing overlap: this thread samples batch after batch while a helper thread encodes
the previous batch (PNG, soft-label quantisation, statistics) and streams it into the tar, so the
device waits for neither compression nor uploads. Zlib and network I/O release the GIL.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

from dakter_scale.config import SamplingConfig
from dakter_scale.core.joint import one_hot
from dakter_scale.core.soft_labels import sample_stats
from dakter_scale.data.lease import check_ref
from dakter_scale.data.real import denormalise, normalise
from dakter_scale.data.sar_stats import SarCounts, enl_window
from dakter_scale.data.shardset import ShardSet, encode_sample, manifest_rows
from dakter_scale.diffusion.model import load_model_folder
from dakter_scale.diffusion.sample import Samples, compile_network, sample_pairs
from dakter_scale.dist.folder import load_shipped, pack_folder
from dakter_scale.synth.plan import ShardTask, batch_indices, pair_seed
from dakter_scale.synth.target import Condition, GivenPairs

log = logging.getLogger("dakter_scale")

FAULT_ENV = "DAKTER_FAULT_FILE"  # testing hook: see _maybe_fault
T = TypeVar("T")
R = TypeVar("R")


def _maybe_fault(shard: int, written: int) -> None:
    """Testing hook: when $DAKTER_FAULT_FILE names a JSON file {"shard": s, "after": n}, the process
    writing shard s dies (os._exit) after n samples, once: the file is removed first so the retry
    succeeds. Used to show that a killed actor loses no finished work and leaves no partial shard."""
    path = os.environ.get(FAULT_ENV)
    if not path or not os.path.exists(path):
        return
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return
    if spec.get("shard") == shard and written >= spec.get("after", 0):
        try:
            os.remove(path)
        except OSError:
            return  # another process took the fault
        os._exit(17)


class _Aborted(Exception):
    """The producer failed; the consumer stops without finishing its output."""


_END, _ABORT = object(), object()


def pipelined(produce: Iterator[T], consume: Callable[[Iterator[T]], R], depth: int = 2) -> tuple[R, float]:
    """consume(items) on a helper thread while this thread runs the producer; at most `depth` items wait
    between them. An error on either side stops the other and is raised here. Returns (consume's result,
    seconds this thread waited for the consumer)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    failed = threading.Event()
    outcome: dict[str, Any] = {}

    def items() -> Iterator[T]:
        while True:
            item = q.get()
            if item is _END:
                return
            if item is _ABORT:
                raise _Aborted()
            yield item

    def target() -> None:
        try:
            outcome["value"] = consume(items())
        except BaseException as e:  # re-raised in the producer's thread
            outcome["error"] = e
            failed.set()

    def put(item: object) -> float:
        t0 = time.perf_counter()
        while not failed.is_set():
            try:
                q.put(item, timeout=0.05)
                return time.perf_counter() - t0
            except queue.Full:
                if not thread.is_alive() and not failed.is_set():  # an invariant: consume reads to the end
                    raise AssertionError("the consumer returned before the producer finished")
        raise outcome["error"]

    waited = 0.0
    thread = threading.Thread(target=target, name="shard-writer", daemon=True)
    thread.start()
    try:
        for item in produce:
            waited += put(item)
        waited += put(_END)
    except BaseException:
        while not failed.is_set():
            try:
                q.put(_ABORT, timeout=0.05)
                break
            except queue.Full:
                continue
        thread.join()
        raise
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"], waited


@dataclass
class _Batch:
    indices: list[int]
    seeds: list[int]
    images: np.ndarray  # (B, H, W) uint8
    q: torch.Tensor  # (B, K, H, W) float32 probabilities, on the CPU


class ShardWriter:
    """Samples and writes whole shards. Build once per process; call per shard."""

    def __init__(
        self,
        model: str | Path | dict[str, bytes],
        out_url: str,
        sampling: dict[str, Any],
        batch_size: int,
        seed: int,
        threads: int = 1,
        device: str | None = None,
        fingerprint: str = "",
        lease: dict[str, Any] | None = None,
        condition: Condition | None = None,
    ):
        t0 = time.time()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        # `threads` CPU threads per writer: on a CPU they run the sampler (torch's intra-op pool) and one
        # helper thread encodes; on a GPU the sampler needs no CPU threads and `threads` encoder threads
        # compress in parallel (PNG and quantisation release the GIL), so one GPU is not held up by one core.
        torch.set_num_threads(max(1, threads) if self.device.type == "cpu" else 1)
        self.encoder_threads = max(1, threads) if self.device.type != "cpu" else 1
        self._pool = (
            ThreadPoolExecutor(self.encoder_threads, thread_name_prefix="encode") if self.encoder_threads > 1 else None
        )
        self.model = load_shipped(model, lambda d: load_model_folder(d, self.device))  # a dict: through Ray
        self.sampling = SamplingConfig(**sampling)
        self.sampling.validate()
        # compiled once per writer, on its first batch (true, or reduce-overhead: CUDA graphs); the fingerprint records it
        self.model.unet = compile_network(self.model.unet, self.sampling.compile)
        self.batch_size, self.seed, self.fingerprint, self.lease = batch_size, seed, fingerprint, lease
        self.out = ShardSet(out_url)
        # targeted synthesis: each pair drawn given its composed label map (conditioned) or pasted real instances (pasted)
        self.condition = condition
        if condition is not None and list(condition.target.classes) != list(
            self.model.classes
        ):  # an invariant of targeted.py
            raise AssertionError(
                f"the condition's classes {condition.target.classes} are not the model's {self.model.classes}"
            )
        self.load_seconds = time.time() - t0

    @staticmethod
    def pack(args: dict, put: Callable[[Any], Any]) -> dict:
        """Arguments for actors on other nodes (dist/strategies.py RayStrategy): the model folder's files
        travel through the object store (``put``: ray.put)."""
        return dict(args, model=put(pack_folder(args["model"])))

    def ready(self) -> dict[str, Any]:
        """Where this writer runs and how long building it took (model load); a cheap call that
        returns once the actor exists."""
        return {
            "device": str(self.device),
            "pid": os.getpid(),
            "load_seconds": round(self.load_seconds, 3),
            "torch_threads": torch.get_num_threads(),
            "encoder_threads": self.encoder_threads,
            "niceness": os.nice(0),
        }

    def _batches(self, task: ShardTask, timing: dict[str, float]) -> Iterator[_Batch]:
        """The shard's batches, in order; the batches are fixed by the plan (batch_indices), so the
        float results (which depend slightly on batch composition) are the same on every rerun."""
        for indices in batch_indices(task.count, self.batch_size):
            t0 = time.perf_counter()
            seeds = [pair_seed(self.seed, task.shard, i) for i in indices]
            out = self.sample(seeds)
            images = denormalise(out.images[:, 0]).cpu().numpy()  # a device sync: the batch is done here
            batch = _Batch(indices, seeds, images, out.q.float().cpu())
            timing["sample"] += time.perf_counter() - t0
            yield batch

    def sample(self, seeds: list[int], on_given: Callable[[GivenPairs], None] | None = None) -> Samples:
        """The pairs of `seeds`, drawn as one batch as the shard's are: jointly, or given what the
        condition gives them (placed once the first steps have fixed each pair's layout, for the
        pasted route's paste_at). on_given hears what the batch was given."""
        c = self.condition
        if c is None:
            return sample_pairs(self.model, seeds, self.sampling, self.device)

        def given(bases: np.ndarray | None = None) -> dict[str, torch.Tensor]:
            pairs = c.given(seeds, bases)
            if on_given is not None:
                on_given(pairs)
            return self._tensors(pairs)

        settings = {"free_steps": c.free_steps, "resample": c.resample}
        given_at = c.given_at(self.sampling.steps)
        if given_at:

            def place(
                x0_hat: torch.Tensor,
            ) -> dict[str, torch.Tensor]:  # onto the layout of the clean estimate (N, 1 + K, H, W) after given_at steps
                return given(x0_hat[:, 1:].argmax(dim=1).to(torch.uint8).cpu().numpy())

            return sample_pairs(
                self.model, seeds, self.sampling, self.device, given_at=given_at, place=place, **settings
            )
        return sample_pairs(self.model, seeds, self.sampling, self.device, **given(), **settings)

    def _tensors(self, pairs: GivenPairs) -> dict[str, torch.Tensor]:
        """sample_pairs' given_* arguments: the label channels (N, K, H, W); for pasted instances also
        their image (N, 1, H, W), the pixels given (N, 1, H, W) and the donors' sea levels, on
        normalise's scale (x = u / 127.5 - 1)."""
        out = {"given_label": self._label(pairs.ids)}
        if pairs.where is not None:
            out.update(given_image=normalise(pairs.image)[:, None], given_where=torch.from_numpy(pairs.where)[:, None])
        if pairs.sea is not None:
            out["given_sea"] = torch.from_numpy(pairs.sea / 127.5 - 1.0)[:, None]
        return out

    def _label(self, maps: np.ndarray) -> torch.Tensor:
        """Class-id maps (N, H, W) -> clean label channels b * (2 * onehot - 1) (N, K, H, W)."""
        return self.model.b * (2.0 * one_hot(torch.from_numpy(maps.astype(np.int64)), self.model.num_classes) - 1.0)

    def _encode(
        self, task: ShardTask, batches: Iterator[_Batch], rows: list[dict], sar: SarCounts
    ) -> Iterator[tuple[str, dict[str, bytes]]]:
        """Each batch's samples encoded (by the encoder pool when there is one), yielded in key order;
        their SAR statistics counted into `sar` (sea windows from the soft labels' argmax)."""
        classes = self.model.classes
        for batch in batches:
            stats = sample_stats(batch.q)
            sar.add(batch.images, batch.q.argmax(dim=1).numpy())
            batch_rows = manifest_rows(task.shard, batch.indices, batch.seeds, stats)

            def encode(j: int) -> dict[str, bytes]:
                return encode_sample(
                    batch_rows[j]["key"], batch.images[j], batch.q[j], dict(batch_rows[j], classes=classes)
                )

            encoded = (
                self._pool.map(encode, range(len(batch_rows))) if self._pool else map(encode, range(len(batch_rows)))
            )
            for row, members in zip(batch_rows, encoded):
                rows.append(row)
                yield row["key"], members
                _maybe_fault(task.shard, len(rows))

    def __call__(self, task: ShardTask) -> dict[str, Any]:
        t0, cpu0 = time.time(), time.process_time()
        rows: list[dict] = []
        timing = {"sample": 0.0}
        sar = SarCounts(enl_window(self.model.resolution))
        # a run that lost its prefix to another never lands a tar or marks a shard done there
        fence = functools.partial(check_ref, self.lease)
        (nbytes, sha), waited = pipelined(
            self._batches(task, timing),
            lambda batches: self.out.write_tar(task.shard, self._encode(task, batches, rows, sar), before_commit=fence),
        )
        if len(rows) != task.count:  # an invariant of _encode, not user input
            raise AssertionError(f"shard {task.shard}: wrote {len(rows)} samples, planned {task.count}")
        timings = {
            "seconds": round(time.time() - t0, 3),
            "sample_seconds": round(timing["sample"], 3),
            "writer_wait_seconds": round(waited, 3),  # sampling stalled on encoding / upload
            "cpu_seconds": round(time.process_time() - cpu0, 3),  # this process, all threads
            "device": str(self.device),
        }
        return self.out.finish_shard(
            task.shard, rows, nbytes, sha, self.fingerprint, extra=timings, sar=sar, before_marker=fence
        )
