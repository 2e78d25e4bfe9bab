"""Loader throughput: decoded (image, soft label, mask) pairs per second per core.

Compares, on the same pairs:
  * shards, local    GeneratedStream over local WebDataset tars (the student's generated input)
  * shards, S3       the same tars served by a loopback S3 API server (moto's ThreadedMotoServer,
                     in this process: the server's work is counted against the reader's core)
  * folder, local    a plain PyTorch map-style Dataset over a folder holding each pair as
                     NNNNNN.png (image) + NNNNNN.npy (float32 soft label), read through a shuffling
                     DataLoader, the mask by np.argmax: the way such a Dataset is usually written
  * folder, local, same post-processing   the folder Dataset with the stream's own argmax
                     (data.stream.class_argmax): isolates storage + decoding from post-processing
  * folder, S3       the folder Dataset reading each file from the S3 server (fsspec)
and against what one student training step consumes on this CPU: batch_size pairs per step time
(the default student, unet / resnet18, same size, one thread).

Every reader runs in the main process (num_workers=0), so it uses one core. Readers run in
interleaved rounds so load drift on a shared machine hits all alike; each figure is the median of
--repeats rounds, and the ratios come from this one run.

    python bench/bench_loader.py                       # 64 px, 512 pairs, batch 16
    python bench/bench_loader.py --size 128 --pairs 256 --out bench/results/loader-128.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # shardgen: writes shards with the schema's own functions

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


class FolderPairs(torch.utils.data.Dataset):
    """The baseline: pair i is NNNNNN.png (uint8 image) + NNNNNN.npy (float32 (K, H, W) soft label).

    fs=None reads local files with open(); otherwise through an fsspec file system (S3).
    """

    def __init__(self, root: str, fs=None, argmax=None):
        self.fs, self.argmax = fs, argmax or (lambda q: q.argmax(axis=0))
        names = fs.ls(root, detail=False) if fs is not None else [str(p) for p in Path(root).iterdir()]
        self.stems = sorted(n[: -len(".png")] for n in names if n.endswith(".png"))

    def __len__(self) -> int:
        return len(self.stems)

    def _open(self, path: str):
        return self.fs.open(path, "rb") if self.fs is not None else open(path, "rb")

    def __getitem__(self, i: int) -> dict:
        with self._open(self.stems[i] + ".png") as f, Image.open(f) as im:
            image = np.asarray(im, dtype=np.uint8)
        with self._open(self.stems[i] + ".npy") as f:
            q = np.load(f)
        return {
            "x": torch.from_numpy(image.astype(np.float32) / 127.5 - 1.0)[None],
            "q": torch.from_numpy(q),
            "mask": torch.from_numpy(self.argmax(q).astype(np.int64)),
        }


def write_folder(shards_url: str, folder: Path) -> int:
    """The same pairs as the shards, one PNG + one NPY per pair."""
    from dakter_scale.data.shardset import ShardSet, decode_sample

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for raw in ShardSet(shards_url).samples():
        image, q, _ = decode_sample(raw)
        Image.fromarray(image).save(folder / f"{n:06d}.png")
        np.save(folder / f"{n:06d}.npy", q.astype(np.float32))
        n += 1
    return n


def time_reads(make_iter, n: int) -> float:
    """Pairs per second over n pairs, after a first pair that opens the stream."""
    it = make_iter()
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        item = next(it)
        assert item["x"].ndim == 3
    return n / (time.perf_counter() - t0)


def stream_iter(url: str, seed: int):
    from dakter_scale.data.stream import GeneratedStream, stream_loader

    return lambda: stream_loader(GeneratedStream(url, seed=seed, shuffle_buffer=64), 0)


def folder_iter(root: str, seed: int, fs=None, argmax=None):
    ds = FolderPairs(root, fs, argmax)

    def make():
        loader = torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        return (item for _ in range(1000) for item in loader)

    return make


def student_step_time(size: int, batch_size: int, repeats: int) -> float:
    """Median seconds of one training step of the default student on a batch of generated pairs."""
    from dakter_scale.config import StudentConfig
    from dakter_scale.core.kd import mixed_loss
    from dakter_scale.student.models import build_student

    s = StudentConfig()
    torch.manual_seed(0)
    model = build_student(s.arch, s.encoder, 5, None, s.encoder_depth)
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr)
    x = torch.randn(batch_size, 1, size, size)
    q = torch.softmax(torch.randn(batch_size, 5, size, size), 1)
    mask, gen = q.argmax(1), torch.ones(batch_size, dtype=torch.bool)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        loss, _ = mixed_loss(model(x), mask, q, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--pairs", type=int, default=512, help="pairs in the dataset (4 shards)")
    p.add_argument("--reads", type=int, default=1024, help="pairs read per timed run (passes repeat)")
    p.add_argument("--batch-size", type=int, default=16, help="student batch for the consumption figure")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "loader.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from shardgen import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        local = str(tmp / "shards")
        per_shard = args.pairs // 4
        write_dataset(local, [per_shard] * 4, size=args.size)
        write_folder(local, tmp / "folder")

        from measure import start_s3

        server, _ = start_s3()
        import fsspec

        fs = fsspec.filesystem("s3")
        fs.put(local + "/", "bench/shards/", recursive=True)
        s3 = "s3://bench/shards"

        fs.put(str(tmp / "folder") + "/", "bench/folder/", recursive=True)
        from dakter_scale.data.stream import class_argmax

        readers = {
            "shards, local": (stream_iter(local, 0), args.reads),
            "shards, S3": (stream_iter(s3, 0), args.reads),
            "folder, local": (folder_iter(str(tmp / "folder"), 0), args.reads),
            "folder, local, same post-processing": (
                folder_iter(str(tmp / "folder"), 0, argmax=class_argmax),
                args.reads,
            ),
            "folder, S3": (folder_iter("bench/folder", 0, fs=fs), max(32, args.reads // 8)),
        }
        runs: dict[str, list[float]] = {name: [] for name in readers}
        for _ in range(args.repeats):  # interleaved rounds
            for name, (make, n) in readers.items():
                runs[name].append(time_reads(make, n))
        server.stop()

    step = student_step_time(args.size, args.batch_size, args.repeats)
    consumption = args.batch_size / step
    rates = {name: statistics.median(v) for name, v in runs.items()}
    baseline = {"shards, local": "folder, local", "shards, S3": "folder, S3"}
    result = {
        "benchmark": "loader",
        "command": " ".join(["python bench/bench_loader.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "load_average_at_end": os.getloadavg(),
        },
        "size": args.size,
        "pairs": args.pairs,
        "reads_per_round": {name: n for name, (_, n) in readers.items()},
        "repeats": args.repeats,
        "cores_per_reader": 1,
        "pairs_per_s_per_core": {name: round(r, 1) for name, r in rates.items()},
        "all_rounds": {name: [round(r, 1) for r in v] for name, v in runs.items()},
        "student_step_s": round(step, 4),
        "student_consumes_pairs_per_s": round(consumption, 2),
        "batch_size": args.batch_size,
        "shards_vs_folder_same_storage": {name: round(rates[name] / rates[b], 2) for name, b in baseline.items()},
        "vs_folder_local": {name: round(r / rates["folder, local"], 2) for name, r in rates.items()},
        "vs_student_step": {name: round(r / consumption, 1) for name, r in rates.items()},
        "targets": {"vs_folder": 2.0, "vs_student_step": 5.0},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"| reader ({args.size} px, 1 core) | pairs/s | x folder, local | x student step ({args.batch_size} pairs / {step:.2f} s) |"
    )
    print("|---|---:|---:|---:|")
    for name, r in rates.items():
        print(f"| {name} | {r:.0f} | {r / rates['folder, local']:.2f} | {r / consumption:.0f} |")
    print(
        "\nshards / folder on the same storage: "
        + ", ".join(f"{k}: {v:.2f}x" for k, v in result["shards_vs_folder_same_storage"].items())
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
