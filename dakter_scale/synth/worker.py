"""One shard of generated pairs: the unit of work. Plain Python; Ray only schedules it.

A ShardWriter is built once (it loads the model) and called once per shard. It streams the
shard's tar to storage as it samples, then writes the shard's Parquet manifest, then, last, the
done marker. A reader that trusts only markers never sees a partial shard.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from dakter_scale.config import SamplingConfig
from dakter_scale.core.soft_labels import sample_stats
from dakter_scale.data import shards, storage
from dakter_scale.data.real import denormalise
from dakter_scale.diffusion.model import load_model_folder
from dakter_scale.diffusion.sample import sample_pairs
from dakter_scale.synth.plan import ShardTask, pair_seed

log = logging.getLogger("dakter_scale")

FAULT_ENV = "DAKTER_FAULT_FILE"  # testing hook: see _maybe_fault


def pack_model_folder(directory: str | Path) -> dict[str, bytes]:
    """A model folder's files as {relative path: bytes}, to ship to actors on other nodes."""
    d = Path(directory)
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and "checkpoints" not in p.parts and "logs" not in p.parts}


def unpack_model_folder(files: dict[str, bytes]) -> Path:
    d = Path(tempfile.mkdtemp(prefix="dakter-model-"))
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d


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
    ):
        if threads > 0:
            torch.set_num_threads(threads)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model_dir = unpack_model_folder(model) if isinstance(model, dict) else Path(model)
        self.model = load_model_folder(model_dir, self.device)
        self.sampling = SamplingConfig(**sampling)
        self.sampling.validate()
        self.batch_size, self.seed, self.fingerprint = batch_size, seed, fingerprint
        self.fs, self.root = storage.url_to_fs(out_url)

    def ready(self) -> str:
        return str(self.device)

    def _samples(self, task: ShardTask, rows: list[dict]) -> Iterator[tuple[str, dict[str, bytes]]]:
        classes = self.model.classes
        for first in range(0, task.count, self.batch_size):
            indices = list(range(first, min(first + self.batch_size, task.count)))
            seeds = [pair_seed(self.seed, task.shard, i) for i in indices]
            out = sample_pairs(self.model, seeds, self.sampling, self.device)
            images = denormalise(out.images[:, 0]).cpu().numpy()
            q = out.q.float().cpu()
            stats = sample_stats(q)
            for j, i in enumerate(indices):
                key = shards.sample_key(task.shard, i)
                row = {
                    "key": key,
                    "shard": task.shard,
                    "index": i,
                    "seed": seeds[j],
                    "class_fractions": [float(v) for v in stats["class_fractions"][j]],
                    "mean_entropy": float(stats["mean_entropy"][j]),
                    "mean_confidence": float(stats["mean_confidence"][j]),
                }
                rows.append(row)
                meta = dict(row, classes=classes)
                yield key, shards.encode_sample(key, images[j], q[j], meta)
                _maybe_fault(task.shard, len(rows))

    def __call__(self, task: ShardTask) -> dict[str, Any]:
        t0 = time.time()
        tar_path = storage.join(self.root, shards.shard_name(task.shard, "tar"))
        rows: list[dict] = []
        with storage.open_atomic(self.fs, tar_path) as f:
            nbytes, sha = shards.write_tar(f, self._samples(task, rows))
        if len(rows) != task.count:  # an invariant of _samples, not user input
            raise AssertionError(f"shard {task.shard}: wrote {len(rows)} samples, planned {task.count}")
        shards.write_parquet(self.fs, storage.join(self.root, shards.shard_name(task.shard, "parquet")), shards.manifest_table(rows))
        fractions = np.array([r["class_fractions"] for r in rows], dtype=np.float64)
        marker = {
            "shard": task.shard,
            "count": task.count,
            "first_key": rows[0]["key"],
            "last_key": rows[-1]["key"],
            "tar_bytes": nbytes,
            "sha256": sha,
            "fingerprint": self.fingerprint,
            "sum_class_fractions": fractions.sum(axis=0).tolist(),
            "sum_mean_confidence": float(sum(r["mean_confidence"] for r in rows)),
            "sum_mean_entropy": float(sum(r["mean_entropy"] for r in rows)),
            "seconds": round(time.time() - t0, 3),
            "device": str(self.device),
        }
        storage.write_json(self.fs, storage.join(self.root, shards.shard_name(task.shard, "json")), marker)
        return marker
