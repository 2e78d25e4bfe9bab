"""bench/bench_sampler_gpu.py, the sampling loop under the synthesis settings, distilled and undistilled,
run as a user runs it, on this CPU at its tiny size (--smoke; on a GPU it adds bf16, torch.compile and
CUDA graphs over the same code path), and bench/cost_model.py reading what it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_sampler_gpu.py"
sys.path.insert(0, str(ROOT / "bench"))

GPU_ONLY = ("fraction_of_bf16_peak", "max_memory_gib", "gpu_hours_per_million_pairs")


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_the_smoke_run_times_distilled_and_undistilled_samplers_against_the_peak(tmp_path):
    out = tmp_path / "sampler.json"
    r = bench("--smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "untrained" in r.stdout and "in memory, no training" in r.stdout  # says what the weights are
    record = json.loads(out.read_text())
    assert record["complete"] and record["smoke"] and record["device_type"] == "cpu"
    assert record["settings"] == ["eager-fp32"] and record["setting_values"]["eager-fp32"] == {
        "precision": "fp32",
        "compile": False,
    }
    rows = {row["sampler"]: row for row in record["runs"]}
    assert set(rows) == {"distilled-1", "distilled-2", "ddim-2"}  # the demo config's sampler at --smoke's 2 steps
    flops = record["models"]["32"]["flops_per_evaluation_per_pair"]
    peak = record["matmul_peak"]["flops_per_second"]
    assert flops > 0 and len(record["matmul_peak"]["samples"]) == 2  # before and after the runs
    for name, row in rows.items():
        nfe = row["evaluations_per_pair"]
        assert row["distilled"] == name.startswith("distilled") and nfe == int(name.rsplit("-", 1)[1])
        assert row["batch"] == 2 and row["pairs_per_second"] > 0 and row["setting"] == "eager-fp32"
        assert abs(row["seconds_per_evaluation_per_pair"] * nfe * row["batch"] - row["seconds_per_call"]) < 1e-12
        assert row["flops_per_pair"] == flops * nfe
        assert abs(row["fraction_of_peak"] - row["flops_per_second"] / peak) < 1e-12
        assert all(k in row and row[k] is None for k in GPU_ONLY)  # no GPU here
    (group,) = record["groups"]
    assert group["status"] == "done" and set(group["warm_seconds"]) == {"distilled", "undistilled"}
    assert set(record["summary"]["32"]) == set(rows)

    import cost_model  # bench/cost_model.py puts the measured points beside its estimates

    ms = cost_model.measured_samplers(record, 32, 4e-3, str(out))
    assert [m["sampler"] for m in ms["rows"]] == ["distilled-1", "distilled-2", "ddim-2"]
    d1 = ms["rows"][0]
    assert d1["seconds_per_evaluation_per_pair"] == rows["distilled-1"]["seconds_per_evaluation_per_pair"]
    assert abs(d1["estimate_gpu_hours_per_million_pairs"] - 4e-3 * 1e6 / 3600) < 1e-9
    assert d1["fraction_of_bf16_peak"] is None
    table = cost_model.measured_markdown(ms, "NVIDIA H200")
    assert any(line.startswith("| distilled-1 | 1 | eager-fp32, 2 |") for line in table)
    assert "device-hours" in table[2]  # not GPU-hours: the record is a CPU's
    assert cost_model.measured_samplers(record, 256, 4e-3)["rows"] == []  # the cost model's 256 px: none here


@pytest.mark.slow  # a timed smoke run (~7 s): the default suite's time limit
def test_a_run_over_its_budget_records_the_groups_it_skipped(tmp_path):
    out = tmp_path / "sampler.json"
    r = bench("--smoke", "--budget-s", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(out.read_text())
    (group,) = record["groups"]
    assert group["status"].startswith("skipped:") and record["runs"] == [] and record["complete"]


def test_a_setting_this_device_does_not_run_is_a_one_line_error(tmp_path):
    r = bench("--smoke", "--only", "graphs-bf16", "--out", str(tmp_path / "x.json"))
    assert r.returncode != 0 and not (tmp_path / "x.json").exists()
    assert r.stderr.strip().splitlines()[-1].startswith("--only: graphs-bf16 not among this device's settings")


def test_the_gpu_models_are_not_run_on_a_cpu_by_default(tmp_path):
    r = bench("--device", "cpu", "--out", str(tmp_path / "x.json"))
    assert r.returncode != 0 and not (tmp_path / "x.json").exists()
    assert r.stderr.strip().splitlines()[-1].startswith("--config: on a CPU name the config")
