"""Generated-shard datasets for tests and benchmarks, written without a trained model.

Pairs are simulated SAR scenes with softened one-hot labels, written through the shard set's own
writer (data/shardset.py), so readers see exactly what jobs/synthesize.py would have written:
shard-NNNNNN.tar, .parquet, the .json done marker (last), and dataset.json.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dakter_scale.core.soft_labels import sample_stats
from dakter_scale.data import shardset, storage
from dakter_scale.data.osd import CLASSES
from dakter_scale.data.shardset import DatasetInfo, ShardSet
from dakter_scale.data.shardset.records import COMPLETE
from dakter_scale.data.synthetic_sar import simulate_scene


def soft_label(mask: np.ndarray, num_classes: int, confidence: float) -> torch.Tensor:
    """(K, H, W): `confidence` on the mask's class, the rest spread evenly over the others."""
    onehot = torch.nn.functional.one_hot(torch.from_numpy(mask.astype(np.int64)), num_classes).permute(2, 0, 1).float()
    return onehot * confidence + (1 - onehot) * (1 - confidence) / (num_classes - 1)


def pair_record(key: str, shard: int, index: int, seed: int, image, q) -> tuple[dict, tuple[str, dict]]:
    """A generated pair's manifest row and encoded sample, as the synthesis writer makes them."""
    stats = sample_stats(q[None])
    row = {
        "key": key,
        "shard": shard,
        "index": index,
        "seed": seed,
        "class_fractions": [float(v) for v in stats["class_fractions"][0]],
        "mean_entropy": float(stats["mean_entropy"][0]),
        "mean_confidence": float(stats["mean_confidence"][0]),
    }
    return row, (key, shardset.encode_sample(key, image, q, dict(row, classes=list(CLASSES))))


def write_dataset(
    url: str,
    counts: Sequence[int],
    size: int = 32,
    seed: int = 0,
    confidences: Sequence[float] | None = None,
) -> list[str]:
    """Write len(counts) shards (shard i holds counts[i] pairs) to `url`; returns every sample key.

    Sample j (over the whole dataset) gets confidence confidences[j % len(confidences)]
    (default 0.9), so tests can filter on the manifest's mean_confidence.
    """
    out = ShardSet(url)
    if storage.is_local(out.fs):
        out.fs.makedirs(out.root, exist_ok=True)
    confidences = list(confidences or [0.9])
    keys, j = [], 0
    for shard, count in enumerate(counts):
        rows, samples = [], []
        for index in range(count):
            key = shardset.sample_key(shard, index)
            pair_seed = seed * 1_000_003 + shard * 10_007 + index
            image, mask = simulate_scene(pair_seed, size, size)
            q = soft_label(mask, len(CLASSES), confidences[j % len(confidences)])
            row, sample = pair_record(key, shard, index, pair_seed, image, q)
            rows.append(row)
            samples.append(sample)
            keys.append(key)
            j += 1
        out.write_shard(shard, samples, rows, f"test-{seed}")
    out.write_info(
        DatasetInfo(
            classes=list(CLASSES), resolution=size, count=sum(counts), status=COMPLETE, fingerprint=f"test-{seed}"
        )
    )
    return keys


def truncate_shard(url: str, shard: int, keep_fraction: float = 0.5) -> None:
    """Cut a shard's tar short (a torn upload), leaving its marker in place."""
    fs, root = storage.url_to_fs(url)
    path = storage.join(root, shardset.shard_name(shard, "tar"))
    data = fs.cat_file(path)
    fs.pipe_file(path, data[: int(len(data) * keep_fraction)])


def remove_shard_tar(url: str, shard: int) -> None:
    """Delete a shard's tar but keep its marker (a missing object)."""
    fs, root = storage.url_to_fs(url)
    fs.rm(storage.join(root, shardset.shard_name(shard, "tar")))


# -- running the training jobs in tests -------------------------------------------------------------

TINY_DATA = ["data.spec=synthetic:8?size=32&test=4", "data.resolution=32"]
TINY_DIFFUSION = TINY_DATA + [
    "diffusion.unet.block_out_channels=[8,16]",
    "diffusion.batch_size=4",
    "diffusion.log_every=1",
]
TINY_STUDENT = TINY_DATA + [
    "student.batch_size=4",
    "student.encoder_depth=3",
    "student.shuffle_buffer=3",
    "student.log_every=1",
]
TINY_SAMPLING = ["sampling.steps=3"]
TINY_PIPELINE = TINY_DIFFUSION + TINY_SAMPLING + TINY_STUDENT[len(TINY_DATA) :]


def job_env(**extra: str) -> dict[str, str]:
    """The environment a test job runs in: one thread per process (2 cores here), no progress bars."""
    import os

    env = dict(os.environ, OMP_NUM_THREADS="1", DAKTER_PROGRESS="0")
    env.pop("DAKTER_KILL_AFTER_STEP", None)
    env.pop(
        "ACCELERATE_USE_CPU", None
    )  # set in this process by an in-process trainer: a job's launch decides its own mode
    env.update(extra)
    return env


def run_job(name: str, args: list, timeout: int = 600, **env: str):
    """jobs/NAME run with `args` in a subprocess (job_env's environment, `env` on top), its output captured."""
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "jobs" / name
    return run_argv([sys.executable, str(script), *map(str, args)], timeout, **env)


def refusal(result, alone: bool = False) -> str:
    """The line a refused job ended on: exit 2, no traceback, its last line `error: ...` (with alone, its
    only line)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines and lines[-1].startswith("error: ") and (len(lines) == 1 or not alone), result.stderr[-2000:]
    return lines[-1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_argv(argv: list[str], timeout: float = 600, cwd=None, **env: str):
    """A job's subprocess in job_env(**env), its output captured. Started in its own session, so that a
    timeout kills the whole group: torchrun's ranks and their data workers too, which a plain
    subprocess.run timeout would leave running (seen once beside two training runs: a two-rank run
    stalled after resuming, its orphans held 2 GB)."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=job_env(**env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(argv, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def torchrun(nproc: int) -> list[str]:
    """argv prefix launching `nproc` CPU processes: the command README documents (plain torchrun;
    without CUDA, make_accelerator puts accelerate in CPU mode, so they form one gloo group)."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
    ]


def load_tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
