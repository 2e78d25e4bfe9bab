"""bench/bench_sampler_gpu.py, the sampling loop's inference settings, run as a user runs it, on this CPU
(on a GPU it adds bf16 and CUDA graphs; the code path is the same)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_sampler_gpu.py"
TINY = [
    "--config",
    str(ROOT / "configs" / "experiment_demo.yaml"),
    "--device",
    "cpu",
    "--batches",
    "2",
    "--steps",
    "2",
    "--repeats",
    "1",
]


def test_the_eager_loop_is_timed_against_the_peak_and_recorded(tmp_path):
    out = tmp_path / "sampler.json"
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--only", "eager-fp32", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    (row,) = record["runs"]
    assert row["setting"] == "eager-fp32" and row["batch"] == 2 and row["pairs_per_second"] > 0
    # FLOPs per pair = per evaluation x NFE; the fraction is the achieved rate over the peak measured in the run
    assert record["sampler"] == "ddim-2" and record["flops_per_pair"] > 0
    assert abs(row["fraction_of_peak"] - row["flops_per_second"] / record["matmul_peak"]["flops_per_second"]) < 1e-12
    assert record["best"]["setting"] == "eager-fp32" and record["million_pairs_device_hours"] > 0


def test_a_setting_this_device_does_not_run_is_a_one_line_error(tmp_path):
    r = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--only", "graphs-bf16", "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode != 0 and not (tmp_path / "x.json").exists()
    assert r.stderr.strip().splitlines()[-1].startswith("--only: graphs-bf16 not among this device's settings")
