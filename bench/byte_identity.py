"""Byte identity of everything the pipeline writes, for a fixed seed: run before and after a refactor.

    python bench/byte_identity.py --write bench/results/byte_identity_before.json
    python bench/byte_identity.py --code /tmp/base --write /tmp/base.json     # a checkout of another commit
    python bench/byte_identity.py --compare /tmp/base.json                    # exit 1 if any file differs

At tiny settings on the CPU (a minute or two), through the jobs' command lines (their flags are the
stable surface, so the same script drives old and new code): a joint diffusion model, a plain shard
set, the targeted routes (selection, conditioned, pasted) with the local strategy (--actors 0), a
sampler distilled in two rounds (4 -> 2 -> 1 steps) and a set drawn with it, a real-only student and the label-alignment filter's set, and a student on real + generated pairs.
Then the sha256 of every file written: tars, Parquet manifests, done markers, dataset.json, the
model folder (safetensors, dakter.json), the student folders. (The pasted route's target is an
absolute share above what the tiny model's own layouts hold, so that instances are pasted at all.) JSON files are hashed with their timing
and host fields removed (TIMING); training logs and checkpoints (wall-clock records) are skipped.
A resolved config.yaml that only gained keys (a new setting, at its default) is reported as a note.

--code ROOT runs ROOT's jobs/ with ROOT first on PYTHONPATH (e.g. `git worktree add /tmp/base COMMIT`).
Every run writes to the same --work folder (emptied first), so recorded paths are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dakter_scale.config import MOVED_KEYS

ROOT = Path(__file__).resolve().parents[1]
# keys of a JSON file that record when, how long, or where something ran: dropped before hashing
TIMING = re.compile(
    r"(seconds|_time|time_|timestamp|started|finished|elapsed|duration|per_second|pid|hostname|host|device|niceness|threads|written_at|created)",
    re.I,
)
SKIP_DIRS = ("logs", "checkpoints")  # wall-clock records and resumable state, not outputs
SKIP_FILE = re.compile(r"^lock-\d+\.json$")  # a writer's lease: its holder and times

DATA = ["data.spec=synthetic:8?size=32&test=4", "data.resolution=32"]
DIFFUSION = DATA + [
    "diffusion.unet.block_out_channels=[8,16]",
    "diffusion.batch_size=4",
    "diffusion.log_every=1",
    "diffusion.max_steps=3",
    "diffusion.seed=3",
]
SAMPLING = ["sampling.sampler=ddim", "sampling.steps=3"]
SYNTH = ["--n", "8", "--samples-per-shard", "4", "--batch-size", "4", "--seed", "5", "--actors", "0", "--device", "cpu"]
STUDENT = DATA + [
    "student.batch_size=4",
    "student.encoder_depth=3",
    "student.shuffle_buffer=3",
    "student.log_every=1",
    "student.seed=2",
]


def steps(work: Path) -> list[tuple[str, list[str]]]:
    """(name, job argv after the script) of each run, in order."""
    model, plain = work / "model", work / "plain"
    seg = work / "segmenter"
    return [
        ("train_diffusion.py", ["--out", str(model), *DIFFUSION]),
        ("synthesize.py", ["--model", str(model), "--out", str(plain), *SYNTH, *SAMPLING]),
        (
            "synthesize.py",
            [
                "--model",
                str(model),
                "--out",
                str(work / "selected"),
                *SYNTH,
                *SAMPLING,
                "--class-target",
                "oil:1.5x",
                "--target-route",
                "selection",
                "--max-draw-factor",
                "4",
                "--draw-out",
                str(work / "selected_drawn"),
            ],
        ),
        (
            "synthesize.py",
            [
                "--model",
                str(model),
                "--out",
                str(work / "conditioned"),
                *SYNTH,
                *SAMPLING,
                "--class-target",
                "oil:3x,ship:3x",
                "--target-route",
                "conditioned",
                "--resample",
                "2",
            ],
        ),
        (
            "synthesize.py",
            [
                "--model",
                str(model),
                "--out",
                str(work / "pasted"),
                *SYNTH,
                *SAMPLING,
                "--class-target",
                "oil:0.3",
                "--target-route",
                "pasted",
            ],
        ),
        (
            "distill.py",
            ["--model", str(model), "--out", str(work / "distilled"), "--steps", "1", "--teacher-steps", "4"]
            + ["--max-steps", "2", "distill.batch_size=2", "distill.seed=4"],
        ),
        ("synthesize.py", ["--model", str(work / "distilled"), "--out", str(work / "distilled_set"), *SYNTH]),
        ("train_student.py", ["--out", str(seg), "--max-steps", "2", *STUDENT, "student.ratio=0"]),
        (
            "filter_generated.py",
            [
                "--shards",
                str(plain),
                "--segmenter",
                str(seg),
                "--out",
                str(work / "filtered"),
                "--keep",
                "5",
                "--samples-per-shard",
                "3",
            ],
        ),
        (
            "train_student.py",
            [
                "--out",
                str(work / "student"),
                "--synthetic",
                str(plain),
                "--ratio",
                "1",
                "--labels",
                "soft",
                "--max-steps",
                "3",
                *STUDENT,
            ],
        ),
    ]


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def file_hash(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()


def _flat(value, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): json.dumps(value)}


def hashes(work: Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """sha256 of every output file, and each resolved config.yaml as {dotted key: value} (to tell a
    config that only gained keys from one whose values changed)."""
    files, configs = {}, {}
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work)
        if path.is_file() and not set(rel.parts) & set(SKIP_DIRS) and not SKIP_FILE.match(path.name):
            files[str(rel)] = file_hash(path)
            if path.suffix == ".yaml":
                configs[str(rel)] = _flat(yaml.safe_load(path.read_text()))
    return files, configs


def run(code: Path, work: Path) -> dict:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", DAKTER_PROGRESS="0", PYTHONHASHSEED="0")
    where = subprocess.run(
        [sys.executable, "-c", "import dakter_scale; print(dakter_scale.__file__)"],
        env=env,
        cwd=code,  # python -c puts its working folder first on sys.path: ask from the code's own
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not where.startswith(str(code)):
        raise SystemExit(f"error: --code {code}: the jobs would import dakter_scale from {where}")
    seconds = {}
    for i, (script, argv) in enumerate(steps(work)):
        t0 = time.time()
        # from the checkout's root, by a relative path: the command a model or set records is the same for every checkout
        r = subprocess.run([sys.executable, f"jobs/{script}", *argv], cwd=code, env=env, capture_output=True, text=True)
        seconds[f"{i}:{script}"] = round(time.time() - t0, 1)
        if r.returncode != 0:
            raise SystemExit(f"error: {script} {' '.join(argv)} exited {r.returncode}:\n{r.stderr[-3000:]}")
        print(f"{script} {argv[1] if len(argv) > 1 else ''}: {seconds[f'{i}:{script}']} s", file=sys.stderr)
    commit = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    files, configs = hashes(work)
    return {"code": str(code), "commit": commit, "seconds": seconds, "files": files, "configs": configs}


def compare(before: dict, after: dict) -> tuple[list[str], list[str]]:
    """(differences, notes): a resolved config.yaml that only gained keys (a new setting at its
    default), its moved keys holding their values at their new place, is a note, with the keys; any other difference, or a file only one run wrote, is a difference."""
    a, b = before["files"], after["files"]
    diff = [f"only before: {k}" for k in sorted(set(a) - set(b))] + [
        f"only after: {k}" for k in sorted(set(b) - set(a))
    ]
    notes = []
    for name in sorted(set(a) & set(b)):
        if a[name] == b[name]:
            continue
        old, new = before.get("configs", {}).get(name), after.get("configs", {}).get(name)
        if old is not None and new is not None:  # a key that moved (config.MOVED_KEYS) compares at its new place
            old = {MOVED_KEYS.get(k, k): v for k, v in old.items() if k not in MOVED_KEYS or MOVED_KEYS[k] not in old}
        if old is not None and new is not None and all(new.get(k) == v for k, v in old.items()):
            notes.append(
                f"{name}: only new keys, every earlier value the same: {', '.join(sorted(set(new) - set(old)))}"
            )
        else:
            diff.append(f"differs: {name}")
    return diff, notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--code", default=str(ROOT), help="repository root whose jobs/ and dakter_scale/ run (default: this one)"
    )
    p.add_argument("--work", default="/tmp/dakter-byte-identity", help="where the outputs are written (emptied first)")
    p.add_argument("--write", help="write the hashes as JSON to this file")
    p.add_argument("--compare", help="a JSON file of an earlier run: list the files that differ, exit 1 if any")
    args = p.parse_args()
    code = Path(args.code).resolve()
    if not (code / "jobs" / "synthesize.py").is_file():
        raise SystemExit(f"error: --code {code} is not a checkout of this repository (no jobs/synthesize.py)")
    result = run(code, Path(args.work))
    for name, digest in result["files"].items():
        print(f"{digest}  {name}")
    if args.write:
        Path(args.write).write_text(json.dumps(result, indent=1) + "\n")
    if args.compare:
        diff, notes = compare(json.loads(Path(args.compare).read_text()), result)
        for line in notes:
            print(f"note: {line}")
        print(
            "\n".join(diff)
            if diff
            else f"identical: {len(result['files']) - len(notes)} files of {len(result['files'])}; {len(notes)} configs only gained keys"
        )
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
