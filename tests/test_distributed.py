"""Both trainers as real 2-process CPU programs (torchrun, gloo), launched the way README documents,
and the launches that must be refused instead of silently training one process per rank."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from dakter_scale.data.stream import consumed

from conftest import ROOT, job
from shardgen import TINY_DIFFUSION, TINY_STUDENT, remove_shard_tar, run_argv, torchrun, truncate_shard, write_dataset

ABORT = "terminate called"  # what an unclean exit of a gloo run prints (see training.finish)


def run(argv: list[str], timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return run_argv(argv, timeout, ROOT, **env)


def student_2proc(
    out, synthetic: str, steps: int = 4, ratio: float = 3.0, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    argv = torchrun(2) + [
        job("train_student.py")[1],
        "--out",
        str(out),
        "--synthetic",
        synthetic,
        "--ratio",
        str(ratio),
        "--max-steps",
        str(steps),
    ]
    return run(argv + [*TINY_STUDENT, "student.num_workers=2", "student.checkpoint_every=2", *extra])


def check_two_ranks(out) -> None:
    ranks = json.loads((out / "logs" / "ranks.json").read_text())
    assert ranks["ranks"] == 2 and ranks["identical"], ranks


def test_two_cpu_processes_train_the_student_streaming_from_s3(tmp_path, s3_bucket):
    """2 ranks x 2 DataLoader workers stream generated shards from the loopback S3 server: the run
    ends with identical parameters on both ranks, all four readers took part, and the measured
    generated share is the ratio's (exactly the deterministic count: 4 steps x 4 samples x 2 ranks)."""
    url = f"{s3_bucket}/gen"
    write_dataset(url, [5, 4, 6, 3, 5], size=32)
    out = tmp_path / "student"
    r = student_2proc(out, url, extra=("--evaluate", "test"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert ABORT not in r.stderr
    check_two_ranks(out)
    assert json.loads((out / "logs" / "eval.json").read_text())["miou"] >= 0  # the device was "cpu:0" here
    info = json.loads((out / "student.json").read_text())
    assert info["ranks"] == 2 and info["bad_shards"] == []
    assert info["generated_share"] == consumed(4, 4, 3.0)[1] / 16  # 12 of 16 per rank: rho = 0.75
    state = json.loads((out / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert sorted(state["generated_positions"]) == ["0", "1", "2", "3"]


@pytest.mark.slow
def test_two_cpu_processes_train_the_diffusion_model(tmp_path):
    out = tmp_path / "model"
    argv = torchrun(2) + [
        job("train_diffusion.py")[1],
        "--out",
        str(out),
        "--max-steps",
        "3",
        *TINY_DIFFUSION,
        "diffusion.num_workers=2",
    ]
    r = run(argv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ABORT not in r.stderr
    check_two_ranks(out)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_torchrun_that_forms_no_process_group_is_refused(tmp_path):
    """What plain torchrun gave before make_accelerator chose CPU mode itself (accelerate not in CPU
    mode on a machine without CUDA): two processes that each think they are rank 0. Forced here with
    cpu=False; both must stop with LaunchError rather than train alone."""
    script = tmp_path / "launch.py"
    script.write_text(
        "from dakter_scale.training import make_accelerator\nmake_accelerator(cpu=False)\nprint('trained alone')\n"
    )
    r = run(torchrun(2) + [str(script)], timeout=300)
    assert r.returncode != 0
    assert "trained alone" not in r.stdout
    assert r.stderr.count("LaunchError: launched with WORLD_SIZE=2 but accelerate formed 1 process(es)") == 2


def test_the_single_process_accelerate_launch_starts_is_recognised(monkeypatch):
    """The environment `accelerate launch --num_processes 2` gives its one process without GPUs
    (recorded with accelerate 1.15) is refused; torchrun's (WORLD_SIZE set) and plain python's are not."""
    from dakter_scale.training import LaunchError, check_launch

    for key in (
        "WORLD_SIZE",
        "MASTER_ADDR",
        "ACCELERATE_DYNAMO_BACKEND",
        "PMI_SIZE",
        "OMPI_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(key, raising=False)
    check_launch()
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")
    check_launch()  # accelerate launch --num_processes 1
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(LaunchError, match="started a single process"):
        check_launch()
    monkeypatch.setenv("WORLD_SIZE", "2")  # accelerate launch on GPUs runs torchrun underneath
    check_launch()


@pytest.mark.slow
def test_accelerate_launch_cpu_with_several_processes_is_refused(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.15 wants mpirun
    for multi-CPU; so does `accelerate launch --num_processes 2` on a machine without GPUs): the job
    says so and names the command that works."""
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    r = run(argv + [job("train_student.py")[1], "--out", str(tmp_path / "s"), *TINY_STUDENT], timeout=300)
    assert r.returncode != 0
    assert "error: `accelerate launch --num_processes N` started a single process" in r.stderr
    assert "torchrun --nproc_per_node N" in r.stderr


@pytest.mark.slow
def test_bad_shards_under_two_processes_never_hang(tmp_path):
    """warn: the run finishes and names the bad shards (counted once each over all ranks); raise:
    the launch fails within the timeout with the shard's name (torchrun stops the other rank)."""
    url = str(tmp_path / "shards")
    write_dataset(url, [6, 6, 6, 6, 6], size=32)
    remove_shard_tar(url, 1)
    truncate_shard(url, 3, 0.4)
    out = tmp_path / "warn"
    r = student_2proc(out, url, steps=8, ratio=4.0, extra=("student.on_bad_shard=warn",))
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((out / "student.json").read_text())
    assert [b.split(":")[0] for b in info["bad_shards"]] == [
        f"shard {url}/shard-000001.tar",
        f"shard {url}/shard-000003.tar",
    ]
    # a truncated shard can fail more than once (a bad sample, then its end): the shards are counted once
    assert re.search(r"\d+ bad shard\(s\) or sample\(s\) skipped while streaming, in 2 shard\(s\)", r.stderr)
    r = student_2proc(tmp_path / "raise", url, steps=8, ratio=4.0, extra=("student.on_bad_shard=raise",))
    assert r.returncode != 0
    assert "error: shard" in r.stderr and ("shard-000001.tar" in r.stderr or "shard-000003.tar" in r.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(8))
def test_two_process_runs_exit_cleanly_every_time(tmp_path, attempt):
    """The exit workaround (training.finish) is not flaky: 8 more 2-process student runs, each must
    exit 0 without "terminate called" (README reports how many were run)."""
    url = str(tmp_path / "shards")
    write_dataset(url, [4, 4, 4], size=32)
    r = student_2proc(tmp_path / "s", url, steps=2, ratio=1.0)
    assert r.returncode == 0 and ABORT not in r.stderr, r.stderr[-3000:]


def test_metrics_reach_accelerate_trackers(tmp_path, monkeypatch):
    """Trackers are initialised from the configured list (TensorBoard when installed; here a custom
    accelerate tracker, in process), receive the loss every log_every steps, and are finished."""
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.tracking import GeneralTracker

    from dakter_scale.config import load_config
    from dakter_scale.student.train import train_student
    from dakter_scale.training import make_accelerator

    class ListTracker(GeneralTracker):
        name, requires_logging_directory, main_process_only = "list", False, True

        def __init__(self):
            super().__init__()
            self.logged, self.config, self.finished = [], None, False

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, dict(values)))

        def finish(self):
            self.finished = True

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # restored afterwards, like accelerate's state below
    tracker = ListTracker()
    try:
        accelerator = make_accelerator("no", log_with=[tracker], project_dir=str(tmp_path / "logs"))
        cfg = load_config(None, TINY_STUDENT + ["student.max_steps=2"])
        train_student(cfg, tmp_path / "student", progress=False, accelerator=accelerator)
        accelerator.end_training()
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert [step for step, _ in tracker.logged] == [1, 2]
    assert all("loss" in values and "ce_real" in values for _, values in tracker.logged)
    # a term no sample of the batch took (soft_real, kd: no pasted or generated samples) is left out, not NaN
    assert all(v == v and k not in ("soft_real", "kd") for _, values in tracker.logged for k, v in values.items())
    assert tracker.config["max_steps"] == "2" and tracker.finished


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_one_gpu_trains_the_diffusion_model_in_mixed_precision(tmp_path):
    """mixed_precision=auto picks bf16 (or fp16 on GPUs without bf16) on CUDA."""
    r = run(
        [
            sys.executable,
            job("train_diffusion.py")[1],
            "--out",
            str(tmp_path / "m"),
            "--max-steps",
            "2",
            *TINY_DIFFUSION,
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "device cuda" in r.stderr and ("mixed precision bf16" in r.stderr or "mixed precision fp16" in r.stderr)
