"""dist/: the retry rule and the progress line (driver.py), a model folder packed for Ray actors and unpacked there (folder.py)."""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dakter_scale.dist.driver import Progress, Workers, drive
from dakter_scale.dist.folder import pack_folder, unpack_folder


def test_a_folder_under_a_logs_or_checkpoints_path_is_packed_without_its_own_such_folders(tmp_path):
    """Only the folder's own checkpoints/ and logs/ are left out: a model kept under runs/logs/ or
    .../checkpoints/best/ was packed as nothing at all (the parts of its absolute path were tested)."""
    for parent in ("logs", "checkpoints"):
        model = tmp_path / parent / "model"
        (model / "sub").mkdir(parents=True)
        (model / "config.json").write_bytes(b"{}")
        (model / "sub" / "weights.pt").write_bytes(b"w")
        for skipped in ("checkpoints", "logs"):
            (model / skipped).mkdir()
            (model / skipped / "x").write_bytes(b"x")
        assert pack_folder(model) == {"config.json": b"{}", "sub/weights.pt": b"w"}
        there = unpack_folder(pack_folder(model))
        try:
            assert (there / "sub" / "weights.pt").read_bytes() == b"w"
        finally:
            shutil.rmtree(there)


def test_a_distilled_models_earlier_rounds_do_not_travel(tmp_path):
    """Actors load the last round only (the folder's own unet/); each earlier round is a model as large."""
    model = tmp_path / "distilled"
    for part in ("unet/w.safetensors", "rounds/steps-0016/unet/w.safetensors", "dakter.json"):
        (model / part).parent.mkdir(parents=True, exist_ok=True)
        (model / part).write_bytes(b"w")
    assert sorted(pack_folder(model)) == ["dakter.json", "unet/w.safetensors"]


def test_an_unpack_that_fails_midway_removes_its_folder(monkeypatch):
    """A full disk at the second file: the caller's cleanup only starts once unpack_folder returns."""
    before = set(Path(tempfile.gettempdir()).glob("dakter-model-*"))
    written, real = [], Path.write_bytes

    def full_disk(self, data):
        if written:
            raise OSError(28, "No space left on device")
        written.append(self)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        unpack_folder({"a.json": b"{}", "unet/w.safetensors": b"w"})
    assert written and set(Path(tempfile.gettempdir()).glob("dakter-model-*")) == before


@pytest.mark.parametrize("name", ["../escaped", "/tmp/escaped-abs", "a/../../escaped", ""])
def test_unpacking_never_writes_outside_its_folder(name):
    with pytest.raises(ValueError, match="not a relative path inside the folder"):
        unpack_folder({name: b"x"})


def test_an_eta_past_a_day_counts_its_hours():
    """The ETA was strftime("%H:%M:%S") of a time of day: 30 h left showed as 06:00:00."""
    progress = Progress(total_items=109_000, total_tasks=109, bar=False, name="synthesize", units=("shards", "pairs"))
    progress.window[0] = (progress.window[0][0] - 1000.0, 0)  # the first 1000 pairs took 1000 s
    progress.update(1000)
    assert progress.line().split("ETA ")[1] in ("30:00:00", "29:59:59", "29:59:58")


@dataclass(frozen=True)
class Attempted:
    key: int
    attempt: int = 0

    @property
    def name(self) -> str:
        return f"item {self.key}"

    def retry(self) -> "Attempted":
        return replace(self, attempt=self.attempt + 1)


class FailsTwiceOnOdd:
    """Odd tasks fail their first two attempts; even ones succeed at once."""

    def __init__(self, device=None):
        pass

    def ready(self) -> dict:
        return {}

    def __call__(self, task: Attempted) -> dict:
        if task.key % 2 and task.attempt < 2:
            raise RuntimeError(f"odd {task.key}")
        return {"key": task.key}


@pytest.mark.parametrize("retries", [1, 2])
def test_drive_retries_a_failed_task_up_to_the_limit_and_logs_each_failed_attempt_once(retries, caplog):
    """Each failed attempt is one log line naming the task (a warning while it will be retried, an error at
    the last); the callback hears every attempt; a task that fails retries + 1 times is given up."""
    from dakter_scale.dist.strategies import LocalStrategy

    heard = []
    with caplog.at_level("WARNING", logger="dakter_scale"):
        drive(
            [Attempted(k) for k in range(4)],
            LocalStrategy(FailsTwiceOnOdd, {}, Workers()),
            retries,
            lambda task, result, reason, retrying: heard.append((task.key, task.attempt, result is not None, retrying)),
        )
    failed = [r for r in caplog.records if "attempt" in r.getMessage()]
    assert [(r.levelname, r.getMessage()) for r in failed if "item 1 " in r.getMessage()] == [
        ("WARNING", "item 1 attempt 1 failed: RuntimeError: odd 1; retrying"),
        (
            "WARNING" if retries == 2 else "ERROR",
            f"item 1 attempt 2 failed: RuntimeError: odd 1; {'retrying' if retries == 2 else 'giving up'}",
        ),
    ]
    assert len(failed) == 4  # two odd tasks, two failed attempts each
    succeeded = sorted(k for k, _, ok, _ in heard if ok)
    assert succeeded == ([0, 1, 2, 3] if retries == 2 else [0, 2])
    assert len(heard) == 2 + 2 * (retries + 1)  # each even task once, each odd one at every attempt


class CannotLoad:
    """A worker no node can build (its model fails to load): every actor dies while starting."""

    @staticmethod
    def pack(args: dict, put) -> dict:
        return dict(args)

    def __init__(self, device=None):
        raise RuntimeError("this node cannot load the model")

    def ready(self) -> dict:
        return {}

    def __call__(self, task: Attempted) -> dict:
        return {"key": task.key}


@pytest.mark.slow  # a local Ray cluster (~15 s); the synthesis Ray tests run the strategy itself
def test_a_run_whose_actors_all_die_while_starting_stops_with_one_line(tmp_path, monkeypatch):
    """Every actor dies while starting: after START_FAILURES per planned actor, none ever ready, the run
    stops with the reason in one line, instead of replacing actors once per task and attempt."""
    import ray

    from dakter_scale.dist.strategies import START_FAILURES, RayStrategy, WorkersCannotStart

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the actors import this module's worker
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        heard = []
        with pytest.raises(
            WorkersCannotStart,
            match=r"^no Ray actor could start \(\d+ failed while starting, none ready\): .*cannot load the model",
        ):
            drive(
                [Attempted(k) for k in range(50)],
                RayStrategy(CannotLoad, {}, Workers(actors=2, retries=2)),
                2,
                lambda task, result, reason, retrying: heard.append(task.key),
            )
        assert len(heard) < 50, "it stopped long before charging every task's every attempt"
    finally:
        ray.shutdown()
    assert START_FAILURES >= 2


class HangsOnce:
    """Task 3's first attempt never returns (a stalled mount, say); everything else answers at once."""

    @staticmethod
    def pack(args: dict, put) -> dict:
        return dict(args)

    def __init__(self, device=None):
        pass

    def ready(self) -> dict:
        return {}

    def __call__(self, task: Attempted) -> dict:
        if task.key == 3 and task.attempt == 0:
            time.sleep(60)  # long past the timeout; without one the run would wait for it
        return {"key": task.key, "attempt": task.attempt}


@pytest.mark.slow  # a local Ray cluster (~15 s)
def test_a_hung_call_times_out_its_actor_is_replaced_and_the_task_is_retried(monkeypatch):
    """With a call timeout, a call that never returns fails as one charged attempt (its reason says it timed
    out), its actor is killed and replaced, calls queued behind it run uncharged, and the run ends with
    every task done instead of waiting forever."""
    import ray

    from dakter_scale.dist.strategies import RayStrategy

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # the actors import this module's worker
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        heard = []
        t0 = time.time()
        drive(
            [Attempted(k) for k in range(8)],
            RayStrategy(HangsOnce, {}, Workers(actors=2, retries=1, call_timeout=3.0)),
            1,
            lambda task, result, reason, retrying: heard.append((task.key, task.attempt, result, reason)),
        )
        assert time.time() - t0 < 45
    finally:
        ray.shutdown()
    failed = [(k, a, reason) for k, a, result, reason in heard if result is None]
    assert len(failed) == 1 and failed[0][:2] == (3, 0)
    assert re.fullmatch(
        r"timed out: still running after \d+ s \(call timeout 3 s\); its actor was killed", failed[0][2]
    )
    done = sorted((k, a) for k, a, result, _ in heard if result is not None)
    assert done == [(k, 1 if k == 3 else 0) for k in range(8)]


def test_a_call_timeout_below_zero_is_refused_naming_its_field():
    from dakter_scale.config import ConfigError, SynthesisConfig

    with pytest.raises(ConfigError, match=r"synthesis\.call_timeout_s.*>= 0"):
        SynthesisConfig(call_timeout_s=-1).validate()


class StallsWhileStartingOnce:
    """The first actor built stalls in __init__ (a model load hung on a mount); the rest start at once.
    The flag file says who was first, across actor processes."""

    @staticmethod
    def pack(args: dict, put) -> dict:
        return dict(args)

    def __init__(self, flag: str, device=None):
        import os

        try:
            os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
            unpack_folder({"model.safetensors": b"w"})  # as a worker unpacks its model, then stalls loading it
            time.sleep(60)
        except FileExistsError:
            pass

    def ready(self) -> dict:
        return {}

    def __call__(self, task: Attempted) -> dict:
        return {"key": task.key}


@pytest.mark.slow  # a local Ray cluster (~15 s)
def test_an_actor_stalled_while_starting_is_replaced_after_the_call_timeout(tmp_path, monkeypatch):
    """An actor that never finishes starting holds the calls queued on it: with a call timeout it is
    killed and replaced, its calls run elsewhere uncharged, and the run ends."""
    import ray

    from dakter_scale.dist.strategies import RayStrategy

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    unpacked = set(Path(tempfile.gettempdir()).glob("dakter-model-*"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        heard = []
        t0 = time.time()
        strategy = RayStrategy(
            StallsWhileStartingOnce, {"flag": str(tmp_path / "first")}, Workers(actors=2, retries=0, call_timeout=3.0)
        )
        drive(
            [Attempted(k) for k in range(6)],
            strategy,
            0,
            lambda task, result, reason, retrying: heard.append((task.key, result)),
        )
        assert time.time() - t0 < 45
    finally:
        ray.shutdown()
    assert sorted(k for k, result in heard if result is not None) == list(range(6)) and len(heard) == 6
    # the stalled actor, and on a loaded machine perhaps a replacement slower than 3 s to start (seen beside
    # two training runs): each one killed and replaced, none charged to the items
    assert strategy.start_failures and set(strategy.start_failures) == {"did not start within the call timeout (3 s)"}
    # the killed actor's unpacked folder went with the run's temp folder
    assert (tmp_path / "first").is_file() and not (Path(tempfile.gettempdir()) / strategy.scratch).exists()
    assert set(Path(tempfile.gettempdir()).glob("dakter-model-*")) <= unpacked


class DiesWhileStartingOnce:
    """The first actor built dies in __init__ (flag file, across actor processes); the rest answer at once."""

    @staticmethod
    def pack(args: dict, put) -> dict:
        return dict(args)

    def __init__(self, flag: str, device=None):
        import os

        try:
            os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        raise RuntimeError("this node cannot load the model")

    def ready(self) -> dict:
        return {}

    def __call__(self, task: Attempted) -> dict:
        return {"key": task.key}


class DiesOnce(DiesWhileStartingOnce):
    """The first actor built dies in __init__ (flag file, across actor processes); task 3's first attempt
    kills its actor mid-call (a segfault, an OOM kill); everything else answers at once."""

    def __call__(self, task: Attempted) -> dict:
        if task.key == 3 and task.attempt == 0:
            import os

            # Some way into the call: Ray sends a call's reply from another thread, and a process that dies
            # at once can take the replies of the calls it just finished with it (they look unfinished too).
            time.sleep(1.0)
            os._exit(1)
        return {"key": task.key, "attempt": task.attempt}


@pytest.mark.slow  # a local Ray cluster (~15 s)
def test_only_the_call_an_actor_was_running_is_charged_when_it_dies(tmp_path, monkeypatch):
    """An actor that dies in __init__ ran none of its queued calls: its start is counted, its calls are
    resubmitted uncharged. An actor that dies mid-call: that call alone is charged; those queued behind
    it, or behind the call it was running, never ran."""
    import ray

    from dakter_scale.dist.strategies import RayStrategy

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        heard = []
        strategy = RayStrategy(DiesOnce, {"flag": str(tmp_path / "first")}, Workers(actors=2, max_in_flight=8))
        drive(
            [Attempted(k) for k in range(12)],
            strategy,
            1,
            lambda task, result, reason, retrying: heard.append((task.key, task.attempt, result, reason)),
        )
    finally:
        ray.shutdown()
    assert len(strategy.start_failures) == 1 and "cannot load the model" in strategy.start_failures[0]
    assert [(k, a) for k, a, result, _ in heard if result is None] == [(3, 0)]
    assert sorted((k, a) for k, a, result, _ in heard if result is not None) == [
        (k, 1 if k == 3 else 0) for k in range(12)
    ]


@pytest.mark.slow  # a local Ray cluster (~15 s)
def test_an_actor_dead_in_init_is_replaced_at_its_first_failed_call_when_its_ready_comes_late(tmp_path, monkeypatch):
    """Ray (2.60) may hold back the failed ready of an actor that died in __init__ for minutes while each
    call sent to it fails at once. It was replaced only on that ready: until then, as the least loaded
    actor, it took every resubmitted call again, a busy loop. Here its failed ready never comes."""
    import ray
    from ray.exceptions import RayActorError

    from dakter_scale.dist.strategies import RayStrategy

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    real_wait, held, waits = ray.wait, set(), [0]

    def wait(refs, num_returns=1, timeout=None):
        waits[0] += 1
        assert waits[0] < 1000, "a busy loop: calls resubmitted to an actor that died while starting"
        for ref in set(refs) & set(strategy.pending_ready) - held:  # a failed ready is held back for good
            if real_wait([ref], timeout=0)[0]:
                try:
                    ray.get(ref)
                except RayActorError:
                    held.add(ref)
        refs = [r for r in refs if r not in held]
        if not refs:
            time.sleep(timeout or 0)
            return [], []
        return real_wait(refs, num_returns=min(num_returns, len(refs)), timeout=timeout)

    monkeypatch.setattr(ray, "wait", wait)
    try:
        heard = []
        strategy = RayStrategy(DiesWhileStartingOnce, {"flag": str(tmp_path / "first")}, Workers(actors=2))
        drive(
            [Attempted(k) for k in range(8)],
            strategy,
            0,
            lambda task, result, reason, retrying: heard.append((task.key, result)),
        )
    finally:
        ray.shutdown()
    assert strategy.start_failures == ["RuntimeError: this node cannot load the model"]
    assert sorted(k for k, result in heard if result is not None) == list(range(8)) and len(heard) == 8


def test_actors_not_started_are_named_once_each_even_while_others_run(caplog):
    """--actors 4 on 2 slots: two actors never start and the calls queued on them wait; the warning says
    so although other actors are ready, once per actor."""
    from dakter_scale.dist.strategies import NO_ACTOR_WARNING_S, RayStrategy

    strategy = RayStrategy(HangsOnce, {}, Workers(actors=4))
    late = time.time() - NO_ACTOR_WARNING_S - 1
    strategy.info.update(actors=4)
    strategy.resources, strategy.ready_times, strategy.warned = {"num_cpus": 1}, [1.0], set()
    strategy.pending_ready = {"ref-c": "c", "ref-d": "d"}
    strategy.started_at = {"a": late, "b": late, "c": late, "d": time.time()}
    with caplog.at_level("WARNING", logger="dakter_scale"):
        strategy._warn_not_started()
        strategy._warn_not_started()  # the same actor again: no second line
        strategy.started_at["d"] = late
        strategy._warn_not_started()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith(f"1 of 4 actors have not started after {NO_ACTOR_WARNING_S:.0f} s")
    assert lines[1].startswith("2 of 4 actors have not started") and "calls queued on them wait" in lines[1]


class ReportsNiceness:
    """Reports the niceness its actor was built at and ran each call at."""

    @staticmethod
    def pack(args: dict, put) -> dict:
        return dict(args)

    def __init__(self, device=None):
        import os

        self.built_at = os.nice(0)

    def ready(self) -> dict:
        import os

        return {"niceness": os.nice(0), "built_at": self.built_at}

    def __call__(self, task: Attempted) -> dict:
        import os

        return {"key": task.key, "niceness": os.nice(0)}


NICE_DRIVER = """
import json, os, ray
from test_dist import Attempted, ReportsNiceness
from dakter_scale.dist.driver import Workers, drive
from dakter_scale.dist.strategies import RayStrategy

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # this driver starts the cluster
strategy, results = RayStrategy(ReportsNiceness, {}, Workers(actors=2), device="cpu"), []
try:
    drive([Attempted(k) for k in range(4)], strategy, 0, lambda task, result, reason, retrying: results.append(result))
finally:
    ray.shutdown()
print(json.dumps({"driver": os.nice(0), "info": strategy.info, "results": results}))
"""


@pytest.mark.slow  # a local Ray cluster (~15 s)
def test_actors_run_at_the_niceness_of_a_driver_that_started_its_own_cluster():
    """A driver at nice 5 that starts the local cluster: its raylet inherits nice 5, and Ray adds
    RAY_worker_niceness to the raylet's. Passing the driver's niceness there gave actors nice 10."""
    import json
    import os
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", NICE_DRIVER],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)),  # the actors import this module's worker
        preexec_fn=lambda: os.nice(5),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    driver = out["driver"]
    assert driver == min(19, os.nice(0) + 5) and out["info"]["niceness"] == driver
    started = out["info"]["actors_started"]
    # every actor that started (on a loaded machine one may do all four calls before the other is up)
    assert started and all(a["niceness"] == a["built_at"] == driver for a in started), started
    assert sorted(x["key"] for x in out["results"]) == [0, 1, 2, 3]
    assert {x["niceness"] for x in out["results"]} == {driver}


def test_an_actor_raises_its_niceness_to_the_drivers_and_one_already_nicer_keeps_its_own(tmp_path):
    """In a process at nice base+3 (a child, since niceness cannot be lowered again): a worker wrapped for
    base+5 is built at it, under its own name; one wrapped for base+1 keeps base+3. The wrapper travels by
    value and its actor imports only the worker's module, not dist/strategies.py. Its temporary files go
    into the run's folder under the node's temp dir."""
    import os
    import subprocess
    import sys

    pytest.importorskip("ray")  # its cloudpickle, which sends the class to the actors
    base = os.nice(0)
    code = f"""
import os, sys
from ray import cloudpickle
from dakter_scale.dist.strategies import _at_niceness
from test_dist import ReportsNiceness

kept, raised = (cloudpickle.dumps(_at_niceness(ReportsNiceness, n, "run-x")) for n in ({base + 1}, {base + 5}))
for name in [m for m in sys.modules if m.startswith(("dakter_scale", "test_dist"))]:
    del sys.modules[name]
w = cloudpickle.loads(kept)()
print(w.built_at, "dakter_scale.dist.strategies" in sys.modules)
w = cloudpickle.loads(raised)()
print(w.built_at, os.nice(0), type(w).__name__, type(w).__mro__[1].__module__)
import tempfile
print(tempfile.mkdtemp())
"""
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent), TMPDIR=str(tmp_path)),
        preexec_fn=lambda: os.nice(3),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    kept, reached = min(19, base + 3), min(19, base + 5)
    assert r.stdout.split("\n")[:2] == [f"{kept} False", f"{reached} {reached} ReportsNiceness test_dist"]
    assert Path(r.stdout.split("\n")[2]).parent == tmp_path / "run-x"
