"""The wall-clock budget (diffusion.max_minutes, student.max_minutes): a step count measured once,
early, and kept by a resumed run; and the EMA's batched update against the per-tensor formula."""

from __future__ import annotations

import json
import subprocess

import torch

from dakter_scale.core.steps import EMA
from dakter_scale.training import StepBudget

from conftest import job
from shardgen import TINY_DIFFUSION, job_env


class FakeClock:
    def __init__(self, seconds_per_step: float):
        self.now, self.per_step = 0.0, seconds_per_step

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.per_step


def run_budget(budget: StepBudget, clock: FakeClock, start: int = 0) -> int:
    done = start
    while done < budget.total:
        clock.tick()
        done += 1
        budget.step_done(done)
    return done


def test_budget_hand_computed():
    """1 s per step and a 1-minute budget: after 3 warm-up + 20 timed steps (23 s), 37 s are left,
    so 23 + 37 = 60 steps in all."""
    clock = FakeClock(1.0)
    budget = StepBudget(max_steps=10_000, max_minutes=1.0, clock=clock)
    assert budget.total == 10_000  # before the measurement, the cap
    assert run_budget(budget, clock) == 60


def test_budget_never_exceeds_max_steps_and_no_budget_is_max_steps():
    clock = FakeClock(0.001)
    assert run_budget(StepBudget(max_steps=40, max_minutes=1.0, clock=clock), clock) == 40
    assert run_budget(StepBudget(max_steps=7, clock=clock), clock) == 7


def test_budget_of_a_resumed_run_is_the_recorded_count():
    clock = FakeClock(100.0)  # so slow that a fresh measurement would stop at once
    budget = StepBudget(max_steps=10_000, max_minutes=1.0, start=50, total=80, clock=clock)
    assert run_budget(budget, clock, start=50) == 80


def test_budget_all_ranks_take_the_agreed_count():
    clock = FakeClock(1.0)
    budget = StepBudget(max_steps=10_000, max_minutes=1.0, clock=clock)
    done = 0
    while done < budget.total:
        clock.tick()
        done += 1
        budget.step_done(done, agree=lambda n: 30)  # rank 0 measured 30
    assert done == 30


def test_ema_update_matches_the_per_tensor_formula():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(model, 0.9, warmup=False)
    expected = {k: v.clone() for k, v in ema.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model(torch.randn(5, 3))  # changes the BatchNorm running statistics and its step count
    ema.update(model)
    for k, v in model.state_dict().items():
        want = (
            expected[k].mul(0.9).add(v.float(), alpha=0.1) if v.dtype.is_floating_point else v.float()
        )  # the per-tensor update
        assert torch.equal(ema.shadow[k], want), k


def test_diffusion_with_a_time_budget_records_its_steps(tmp_path):
    """A real run with a budget: it stops on its own long before max_steps, the model folder and
    logs/train.json agree on the count, and a checkpoint records it for a resume."""
    out = tmp_path / "model"
    argv = job("train_diffusion.py") + [
        "--out",
        str(out),
        "--max-steps",
        "100000",
        *TINY_DIFFUSION,
        "diffusion.max_minutes=0.05",
        "diffusion.checkpoint_every=5",
        "diffusion.log_every=10",
        "diffusion.checkpoints_total_limit=100",
    ]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=job_env())
    assert r.returncode == 0, r.stderr
    assert "time budget" in r.stderr
    record = json.loads((out / "logs" / "train.json").read_text())
    info = json.loads((out / "dakter.json").read_text())
    assert 23 <= record["steps"] < 100000 and info["steps_trained"] == record["steps"]
    # checkpoints before the measurement (3 warm-up + 20 timed steps) record no count, later ones the count
    totals = {
        int(p.parent.name.split("-")[1]): json.loads(p.read_text())["total_steps"]
        for p in (out / "checkpoints").glob("step-*/state.json")
    }
    assert totals and all((t is None) if step < 23 else (t == record["steps"]) for step, t in totals.items()), totals
    assert any(step >= 25 for step in totals), totals  # a checkpoint after the measurement was checked
