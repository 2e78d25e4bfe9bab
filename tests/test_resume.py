"""Exact resume: a run SIGKILLed after a checkpoint and continued with --resume latest ends with the
same parameters, bit for bit, as an uninterrupted run with the same seed (CPU, one thread).

The kill is real (DAKTER_KILL_AFTER_STEP makes rank 0 SIGKILL itself once that step is done, one
step after the last checkpoint), so the resumed run redoes lost work from the checkpoint."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from dakter_scale.core.steps import EMA
from dakter_scale.data.stream import consumed
from dakter_scale.training import list_checkpoints, load_checkpoint, resolve_resume, save_checkpoint

from conftest import job, job_in_process
from shardgen import TINY_DIFFUSION, TINY_STUDENT, assert_same_tensors, load_tensors, run_argv, torchrun, write_dataset


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return run_argv(argv, **env)


def killed_then_resumed(launch, out, kill_after: int, last_checkpoint: int) -> None:
    """launch(): a fresh argv (a new rendezvous port each time). Both launches pass --resume latest,
    as a job on preemptible machines would: the first finds no checkpoint and starts fresh."""
    r = run(launch() + ["--out", str(out), "--resume", "latest"], DAKTER_KILL_AFTER_STEP=str(kill_after))
    assert r.returncode != 0, "the run was meant to be killed"
    assert "starting fresh" in r.stderr
    assert not (out / "logs" / "ranks.json").exists(), "the killed run got to the end"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        f"step-{s:08d}" for s in (last_checkpoint - 2, last_checkpoint)
    ]
    r = run(launch() + ["--out", str(out), "--resume", "latest"])
    assert r.returncode == 0, r.stderr
    assert f"at step {last_checkpoint}" in r.stderr


def test_student_resume_is_exact_with_workers_across_a_pass(tmp_path):
    """Ratio 1.5 with 2 DataLoader workers: at the step-4 checkpoint 9 generated samples were
    consumed (the next comes from worker 1, not 0), and 14 of the 12-sample dataset are read in
    6 steps, so the resumed readers continue mid-pass and cross into the next pass."""
    shards = tmp_path / "shards"
    write_dataset(str(shards), [4, 3, 5], size=32)
    argv = job("train_student.py") + [
        "--synthetic",
        str(shards),
        "--ratio",
        "1.5",
        "--max-steps",
        "6",
        *TINY_STUDENT,
        "student.num_workers=2",
        "student.checkpoint_every=2",
    ]
    r = run(argv + ["--out", str(tmp_path / "whole")])
    assert r.returncode == 0, r.stderr
    killed_then_resumed(lambda: argv, tmp_path / "resumed", kill_after=5, last_checkpoint=4)
    assert_same_tensors(
        load_tensors(tmp_path / "whole" / "model.safetensors"), load_tensors(tmp_path / "resumed" / "model.safetensors")
    )
    # the run's record too: the generated share is the whole run's (14 of 24 after 6 steps), not the resumed part's
    shares = [json.loads((tmp_path / d / "student.json").read_text())["generated_share"] for d in ("whole", "resumed")]
    assert shares == [consumed(6, 4, 1.5)[1] / 24] * 2


@pytest.mark.slow
def test_diffusion_resume_is_exact_with_ema_accumulation_and_workers(tmp_path):
    argv = job("train_diffusion.py") + [
        "--max-steps", "6", *TINY_DIFFUSION,
        "diffusion.num_workers=2", "diffusion.gradient_accumulation_steps=2", "diffusion.checkpoint_every=2", "diffusion.warmup_steps=3",
    ]  # fmt: skip
    r = run(argv + ["--out", str(tmp_path / "whole")])
    assert r.returncode == 0, r.stderr
    killed_then_resumed(lambda: argv, tmp_path / "resumed", kill_after=5, last_checkpoint=4)
    weights = "unet/diffusion_pytorch_model.safetensors"  # the EMA weights
    assert_same_tensors(load_tensors(tmp_path / "whole" / weights), load_tensors(tmp_path / "resumed" / weights))


@pytest.mark.slow
def test_two_process_student_resume_is_exact(tmp_path):
    """The same with 2 CPU ranks x 2 workers, killed twice: the checkpoints hold all four readers'
    positions, those of a resumed run too."""
    shards = tmp_path / "shards"
    write_dataset(str(shards), [5, 4, 6, 3], size=32)
    args = [
        str(job("train_student.py")[1]),
        "--synthetic",
        str(shards),
        "--ratio",
        "3",
        "--max-steps",
        "6",
        *TINY_STUDENT,
        "student.num_workers=2",
        "student.checkpoint_every=2",
    ]
    r = run(torchrun(2) + args + ["--out", str(tmp_path / "whole")])
    assert r.returncode == 0, r.stderr
    # killed twice: the second checkpoint is written by a run that itself resumed. Each rank carried every
    # slot's position from the first, and the last rank's stale copies undid the others' progress.
    out = tmp_path / "resumed"
    for kill_after, at in ((3, None), (5, 2)):
        r = run(torchrun(2) + args + ["--out", str(out), "--resume", "latest"], DAKTER_KILL_AFTER_STEP=str(kill_after))
        assert r.returncode != 0 and (at is None or f"at step {at}" in r.stderr), r.stderr[-2000:]
    r = run(torchrun(2) + args + ["--out", str(out), "--resume", "latest"])
    assert r.returncode == 0 and "at step 4" in r.stderr, r.stderr[-2000:]
    whole = json.loads((tmp_path / "whole" / "checkpoints" / "step-00000004" / "state.json").read_text())
    resumed = json.loads((out / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert resumed["generated_positions"] == whole["generated_positions"]
    assert_same_tensors(
        load_tensors(tmp_path / "whole" / "model.safetensors"), load_tensors(tmp_path / "resumed" / "model.safetensors")
    )


class _OneProcess:
    """What save_checkpoint / load_checkpoint use of an Accelerator. The device is what accelerate
    reports in a multi-process CPU run, "cpu:0" (which safetensors and torch.load refuse as is)."""

    is_main_process, device, scaler = True, torch.device("cpu", 0), None

    def wait_for_everyone(self):
        pass

    def unwrap_model(self, model):
        return model


def test_checkpoints_round_trip_keep_the_newest_and_ignore_partial_ones(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, 0.9)
    acc = _OneProcess()
    for step in range(1, 4):
        model(torch.randn(16, 4)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update(model)
        save_checkpoint(
            acc, tmp_path, step, limit=2, model=model, optimizer=opt, ema=ema, extra={"layout": {"ranks": 1}}
        )
    (tmp_path / "checkpoints" / "step-00000009.tmp").mkdir()  # a write cut short
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    latest = resolve_resume(tmp_path, "latest")
    assert latest.name == "step-00000003" and resolve_resume(tmp_path / "empty", "latest") is None

    torch.manual_seed(1)
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    ema2 = EMA(model2, 0.9)
    state = load_checkpoint(acc, latest, model2, opt2, ema2)
    assert state["step"] == 3 and state["layout"] == {"ranks": 1} and ema2.updates == 3
    assert_same_tensors(model.state_dict(), model2.state_dict())
    assert_same_tensors(ema.shadow, ema2.shadow)
    saved, restored = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert saved and saved.keys() == restored.keys()  # restored, not empty: zip would check nothing
    for a, b in zip(saved.values(), restored.values()):
        assert_same_tensors(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        resolve_resume(tmp_path, str(tmp_path / "nowhere"))


def test_a_checkpoint_cut_short_by_a_full_disk_leaves_nothing_and_the_last_one_stands(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    save_checkpoint(_OneProcess(), tmp_path, 1, limit=2, model=model, optimizer=opt)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)  # the optimiser state, after the weights were written
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(_OneProcess(), tmp_path, 2, limit=2, model=model, optimizer=opt)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001"]


def test_a_fresh_start_into_an_earlier_runs_checkpoints_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """Without --resume, an OUT holding an earlier run's checkpoints is refused before any work: the
    rotation would keep the old run's newer steps and delete the new run's."""
    from dakter_scale.training import ResumeError

    assert resolve_resume(tmp_path, None) is None  # nothing there: a fresh start
    (tmp_path / "checkpoints" / "step-00001000").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-00001000" / "state.json").write_text("{}")
    with pytest.raises(
        ResumeError, match=r"holds an earlier run's checkpoints \(up to step 1000\): give --resume latest"
    ):
        resolve_resume(tmp_path, None)
    assert resolve_resume(tmp_path, "latest").name == "step-00001000"
    code, captured = job_in_process("train_student.py", ["--out", str(tmp_path), *TINY_STUDENT], capsys, monkeypatch)
    assert code == 2 and captured.err.strip().splitlines()[-1].endswith("to start fresh"), captured.err[-2000:]
    assert len([line for line in captured.err.splitlines() if "earlier run's checkpoints" in line]) == 1
    assert not (tmp_path / "model.safetensors").exists()


def test_a_resume_onto_other_generated_shards_says_it_is_not_exact(tmp_path, caplog):
    """The generated shards a run reads (how many, max_generated) are part of its data layout: a resume
    after the set grew, or with another cap, warns that it continues but not exactly."""
    import logging

    from dakter_scale.config import load_config
    from dakter_scale.student.train import train_student

    shards = str(tmp_path / "shards")
    write_dataset(shards, [4, 4, 4], size=32)
    base = [*TINY_STUDENT, "student.ratio=1", "student.checkpoint_every=1"]
    train_student(load_config(None, base + ["student.max_steps=2"]), tmp_path / "s", synthetic=shards, progress=False)
    state = json.loads((tmp_path / "s" / "checkpoints" / "step-00000001" / "state.json").read_text())
    assert state["layout"]["generated_shards"] == 3 and state["layout"]["max_generated"] == 0
    with caplog.at_level(logging.WARNING, logger="dakter_scale"):
        cfg = load_config(None, base + ["student.max_steps=2", "student.max_generated=4"])
        train_student(cfg, tmp_path / "s", synthetic=shards, resume="latest", progress=False)
    assert "different data layout (generated_shards 3 -> 1, max_generated 0 -> 4)" in caplog.text


def test_a_resume_with_another_length_or_network_is_refused_in_one_line_before_the_config_is_written(
    tmp_path, capsys, monkeypatch
):
    """A checkpoint records max_steps and max_minutes: a resume with others is refused (the run would keep the
    recorded count and schedule), one written before they were recorded resumes as before. A checkpoint of
    another network is refused in one line too; OUT/config.yaml stays the run's until a restore succeeds."""
    from dakter_scale.config import load_config
    from dakter_scale.student.train import train_student
    from dakter_scale.training import ResumeError

    out = tmp_path / "s"
    base = [*TINY_STUDENT, "student.checkpoint_every=1"]
    train_student(load_config(None, base + ["student.max_steps=2"]), out, progress=False)
    state_file = out / "checkpoints" / "step-00000001" / "state.json"
    state = json.loads(state_file.read_text())
    assert (state["max_steps"], state["max_minutes"]) == (2, 0.0)
    config = (out / "config.yaml").read_text()
    for override, says in (
        ("student.max_steps=3", "its run has student.max_steps=2, this one 3"),
        ("student.max_minutes=1", "its run has student.max_minutes=0.0, this one 1.0"),
        ("student.encoder_depth=4", "its weights do not fit this run's network (was the architecture changed?)"),
    ):
        with pytest.raises(ResumeError, match=re.escape(says)) as refused:
            train_student(load_config(None, base + ["student.max_steps=2", override]), out, resume="latest")
        assert "\n" not in str(refused.value)
        assert (out / "config.yaml").read_text() == config, override
    code, captured = job_in_process(
        "train_student.py",
        ["--out", str(out), "--resume", "latest", "student.encoder_depth=4", *base],
        capsys,
        monkeypatch,
    )
    assert code == 2 and captured.err.splitlines()[-1].startswith("error: --resume"), captured.err[-2000:]
    assert "Traceback" not in captured.err and "Mismatched keys" not in captured.err
    # written before the length was recorded: resumed as before, at the recorded count
    state_file.write_text(json.dumps({k: v for k, v in state.items() if k not in ("max_steps", "max_minutes")}))
    train_student(load_config(None, base + ["student.max_steps=3"]), out, resume="latest", progress=False)
    assert json.loads((out / "student.json").read_text())["steps"] == 2


def test_a_diffusion_resume_onto_another_network_is_refused_in_one_line(tmp_path):
    from dakter_scale.config import load_config
    from dakter_scale.diffusion.train import train_diffusion
    from dakter_scale.training import ResumeError

    out = tmp_path / "m"
    base = [*TINY_DIFFUSION, "diffusion.max_steps=2", "diffusion.checkpoint_every=1"]
    train_diffusion(load_config(None, base), out, progress=False)
    config = (out / "config.yaml").read_text()
    wider = load_config(None, base + ["diffusion.unet.block_out_channels=[8,24]"])
    with pytest.raises(ResumeError, match="its weights do not fit this run's network") as refused:
        train_diffusion(wider, out, resume="latest", progress=False)
    assert "\n" not in str(refused.value) and (out / "config.yaml").read_text() == config


def test_weights_no_longer_finite_are_refused_and_the_checkpoints_before_them_kept(tmp_path):
    """A diverged run (NaN gradients from step 3 on, so NaN weights) stops at its next checkpoint with one
    line, writing nothing: the checkpoint of step 2 is kept. Without checkpoints it stops at the end, before
    the trainer writes its model."""
    from dakter_scale.training import DivergedError, LoopSpec, make_accelerator, run_steps

    accelerator = make_accelerator("no", cpu=True)
    for every, stops in ((2, 4), (0, 6)):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

        def step(i: int):
            loss = model(torch.randn(8, 4)).square().mean() * (float("nan") if i >= 2 else 1.0)
            loss.backward()
            return loss, {}

        def checkpoint(done: int, extra: dict) -> None:
            save_checkpoint(accelerator, tmp_path / str(every), done, 2, model, optimizer, extra=extra)

        spec = LoopSpec("diverging", 6, 0.0, 1e-2, 0, "constant", 1.0, 1.0, 1, every)
        with pytest.raises(DivergedError, match=f"^diverging step {stops}: the weights are no longer finite"):
            run_steps(accelerator, spec, 0, optimizer, model.parameters(), step, checkpoint=checkpoint, progress=False)
        assert [s for s, _ in list_checkpoints(tmp_path / str(every))] == ([2] if every else [])
