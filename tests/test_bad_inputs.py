"""Every job refuses a bad flag or config value before any work starts: exit status 2, exactly one line
on stderr, `error: ...` naming the flag, key or file, and nothing written where the job would write."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from conftest import ROOT


def png_header(width: int, height: int) -> bytes:
    """A grayscale PNG that claims width x height pixels (its pixel data is a few bytes: Pillow
    refuses it on opening, by its size, before decoding anything)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def osd_with_huge_image(root: Path) -> Path:
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels_1D").mkdir(parents=True)
        (root / split / "images" / "00000.png").write_bytes(png_header(20000, 20000))  # 400 M pixels
        (root / split / "labels_1D" / "00000.png").write_bytes(png_header(16, 16))
    return root / "train" / "images" / "00000.png"


# (id, job, arguments (TMP is the test's folder), what the line must name, the path that must not appear)
# jobs/filter_generated.py's flags but the one each case breaks
FILTER = ["--shards", "TMP/shards", "--segmenter", "TMP/student", "--out", "TMP/out", "--keep", "1"]
CASES = [
    (
        "evaluate-pad",
        "evaluate.py",
        ["--student", "TMP/student", "--data", "synthetic:8", "--pad-multiple", "0", "--out", "TMP/out/metrics.json"],
        "--pad-multiple",
        "TMP/out",
    ),
    ("inspect-max-images", "inspect_data.py", ["synthetic:8", "--max-images", "-1"], "--max-images", None),
    ("inspect-huge-image", "inspect_data.py", ["osd:TMP/osd"], "TMP/osd/train/images/00000.png", None),
    (
        "write-height",
        "write_synthetic.py",
        ["--layout", "osd", "--out", "TMP/out", "--train", "1", "--test", "1", "--height", "0"],
        "--height",
        "TMP/out",
    ),
    (
        "write-size",
        "write_synthetic.py",
        ["--layout", "sos", "--out", "TMP/out", "--train", "1", "--test", "1", "--size", "-5"],
        "--size",
        "TMP/out",
    ),
    (
        "write-seed",
        "write_synthetic.py",
        ["--layout", "sos", "--out", "TMP/out", "--train", "1", "--test", "1", "--seed", "-1"],
        "--seed",
        "TMP/out",
    ),
    (
        "filter-batch",
        "filter_generated.py",
        FILTER + ["--batch-size", "0"],
        "--batch-size",
        "TMP/out",
    ),
    (
        "filter-per-shard",
        "filter_generated.py",
        FILTER + ["--samples-per-shard", "0"],
        "--samples-per-shard",
        "TMP/out",
    ),
    (
        "filter-keep",
        "filter_generated.py",
        ["--shards", "TMP/shards", "--segmenter", "TMP/student", "--out", "TMP/out", "--keep", "0"],
        "--keep",
        "TMP/out",
    ),
    (
        "filter-min-alignment",
        "filter_generated.py",
        ["--shards", "TMP/shards", "--segmenter", "TMP/student", "--out", "TMP/out", "--min-alignment", "1.5"],
        "--min-alignment",
        "TMP/out",
    ),
    (
        "synthesize-seed",
        "synthesize.py",
        ["--model", "TMP/model", "--out", "TMP/out", "--seed", "-1"],
        "--seed",
        "TMP/out",
    ),
    (
        "synthesize-per-shard",
        "synthesize.py",
        ["--model", "TMP/model", "--out", "TMP/out", "--samples-per-shard", "0"],
        "--samples-per-shard",
        "TMP/out",
    ),
    ("train-diffusion-steps", "train_diffusion.py", ["--out", "TMP/out", "--max-steps", "0"], "--max-steps", "TMP/out"),
    (
        "train-diffusion-seed",
        "train_diffusion.py",
        ["--out", "TMP/out", "diffusion.seed=-3"],
        "diffusion.seed",
        "TMP/out",
    ),
    ("train-student-steps", "train_student.py", ["--out", "TMP/out", "--max-steps", "0"], "--max-steps", "TMP/out"),
    ("train-student-arch", "train_student.py", ["--out", "TMP/out", "--arch", "nosuch"], "student.arch", "TMP/out"),
    ("train-student-ratio", "train_student.py", ["--out", "TMP/out", "--ratio", "nan"], "--ratio", "TMP/out"),
    ("demo-arch", "demo.py", ["--out", "TMP/out", "student.arch=nosuch"], "student.arch", "TMP/out"),
    ("demo-encoder", "demo.py", ["--out", "TMP/out", "student.encoder=nosuch"], "encoder", "TMP/out"),
    (
        "experiment-archs",
        "experiment.py",
        ["--out", "TMP/out", "experiment.archs=[unet,nosuch]"],
        "experiment.archs",
        "TMP/out",
    ),
    (
        "experiment-seeds",
        "experiment.py",
        ["--out", "TMP/out", "experiment.seeds=[0,-1]"],
        "experiment.seeds",
        "TMP/out",
    ),
    (
        "experiment-mixed-precisions",
        "experiment.py",
        ["--out", "TMP/out", "diffusion.mixed_precision=fp16", "student.mixed_precision=no"],
        "diffusion.mixed_precision=fp16, student.mixed_precision=no",
        "TMP/out",
    ),
    (
        "experiment-retrain-rebuilt",
        "experiment.py",
        ["--out", "TMP/out", "--retrain-rebuilt"],
        "--retrain-rebuilt",
        "TMP/out",
    ),
]


@pytest.mark.parametrize("job, args, names, written", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, job, args, names, written):
    if job == "inspect_data.py" and args[0].startswith("osd:"):
        osd_with_huge_image(tmp_path / "osd")
    tmp = str(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DAKTER_PROGRESS": "0"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / job), *[a.replace("TMP", tmp) for a in args]],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    assert names.replace("TMP", tmp) in lines[0], lines[0]
    if written is not None:
        assert not Path(written.replace("TMP", tmp)).exists(), f"{job} wrote {written} before refusing"
