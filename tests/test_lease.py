"""One run writes a prefix at a time: the lease (data/lease.py) on a local folder and on the moto S3
server (whose conditional put honours If-None-Match, as S3 does), and two synthesis runs on one
prefix at once, as threads and as processes: either both finish with exactly N unique pairs, or the
second is refused with one line; no shard of a differently seeded run is ever counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback

import pytest
import webdataset as wds
from test_synth import SAMPLING, cfg, synthesize

from dakter_scale.data import storage
from dakter_scale.data.lease import Lease, LeaseError, check_ref, lock_name
from dakter_scale.data.shardset import ShardSet
from dakter_scale.data.stream import GeneratedStream, StreamError
from dakter_scale.errors import UserError
from dakter_scale.synth import run as synth_run
from dakter_scale.synth import worker as synth_worker

from conftest import job
from shardgen import job_env


@pytest.fixture(params=["local", "s3"])
def prefix(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return f"{request.getfixturevalue('s3_bucket')}/out"


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and text
    return text


# -- the lease ----------------------------------------------------------------------------------------


def test_a_held_prefix_refuses_a_second_run_with_one_line_naming_the_holder(prefix):
    first = Lease(prefix, "synthesis of 8 pairs (seed 1)").acquire()
    try:
        with pytest.raises(LeaseError) as e:
            Lease(prefix, "synthesis of 8 pairs (seed 2)").acquire()
        text = one_line(e.value)
        assert "synthesis of 8 pairs (seed 1)" in text and f"pid {os.getpid()}" in text and "being written by another run" in text
    finally:
        first.release()
    second = Lease(prefix, "again").acquire()  # released: free again, at the next generation
    assert second.generation == 2
    second.release()


def race(attempt, count: int) -> None:
    """Run attempt(0) ... attempt(count - 1) in threads (each waits at a shared barrier) and join them."""
    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_of_runs_starting_at_once_exactly_one_gets_the_prefix(prefix):
    runs, barrier = 6, threading.Barrier(6)
    won, refused = [], []

    def attempt(i: int) -> None:
        lease = Lease(prefix, f"run {i}", heartbeat=False)
        barrier.wait()
        try:
            won.append(lease.acquire())
        except LeaseError:
            refused.append(i)

    race(attempt, runs)
    assert len(won) == 1 and len(refused) == runs - 1
    won[0].check()
    won[0].release()


def test_exclusive_create_lets_exactly_one_of_many_writers_through(prefix):
    """The primitive under the lease. fsspec's generic pipe_file(mode="create") looks, then writes:
    on local disk 2 of 6 racing runs both took lock 1 with it. Each writer's bytes are distinct, so a
    file that two writers both wrote (or a torn one) would show."""
    fs, root = storage.url_to_fs(prefix)
    path = storage.join(root, "x.json")
    writers, barrier, won, lost = 8, threading.Barrier(8), [], []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            storage.create_exclusive(fs, path, f"writer {i}".encode() * 1000)
            won.append(i)
        except FileExistsError:
            lost.append(i)

    race(attempt, writers)
    assert len(won) == 1 and len(lost) == writers - 1
    fs.invalidate_cache(root)
    assert fs.cat_file(path) == f"writer {won[0]}".encode() * 1000
    assert sorted(storage.list_dir(fs, root)) == ["x.json"]  # no temporaries left behind


def test_a_file_system_without_its_own_exclusive_create_gets_no_lease(tmp_path, caplog):
    from fsspec.implementations.dirfs import DirFileSystem

    # DirFileSystem passes pipe_file on to the local file system's generic look-then-write.
    fs = DirFileSystem(path=str(tmp_path), fs=storage.url_to_fs(str(tmp_path))[0])
    with pytest.raises(NotImplementedError):
        storage.create_exclusive(fs, "lock.json", b"{}")
    lease = Lease(str(tmp_path), "a run", heartbeat=False)
    lease.fs, lease.root = fs, ""
    with caplog.at_level("WARNING", logger="dakter_scale"):
        lease.acquire()
    assert not lease.supported and "cannot create a file exclusively" in caplog.text
    lease.check()  # no lease to lose
    lease.release()


def test_a_lock_not_renewed_for_a_lease_is_taken_over_and_its_holder_stops(prefix):
    now = [1000.0]
    stale = Lease(prefix, "a hung run", lease_seconds=60, clock=lambda: now[0], heartbeat=False).acquire()
    now[0] += 59
    with pytest.raises(LeaseError):  # within its lease: still held
        Lease(prefix, "impatient", lease_seconds=60, clock=lambda: now[0], heartbeat=False).acquire()
    now[0] += 2
    taker = Lease(prefix, "next run", lease_seconds=60, clock=lambda: now[0], heartbeat=False).acquire()
    assert taker.generation == stale.generation + 1
    with pytest.raises(LeaseError, match="lost its lock"):
        stale.check()
    with pytest.raises(LeaseError, match="lost its lock"):
        check_ref(stale.ref())  # what its shard writers do before each marker
    stale.release()  # gives back nothing: it no longer holds the prefix
    taker.check()
    taker.release()


def test_a_lock_left_by_a_dead_process_of_this_host_is_taken_at_once(tmp_path):
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    lease = Lease(str(out), "killed run", heartbeat=False).acquire()
    record = json.loads((out / lock_name(1)).read_text())
    record["pid"] = int(dead.stdout)  # as if that run had been killed outright a moment ago
    (out / lock_name(1)).write_text(json.dumps(record))
    lease.generation = None  # forget it without releasing, as a killed process would
    Lease(str(out), "rerun", heartbeat=False).acquire().release()


def test_an_unreadable_lock_holds_until_it_is_a_lease_old(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / lock_name(3)).write_bytes(b"")  # created, not yet written (or damaged)
    with pytest.raises(LeaseError, match="lock is being written"):
        Lease(str(out), "x", lease_seconds=60).acquire()
    old = time.time() - 61
    os.utime(out / lock_name(3), (old, old))
    lease = Lease(str(out), "x", lease_seconds=60, heartbeat=False).acquire()
    assert lease.generation == 4 and not (out / lock_name(3)).exists()
    lease.release()


def test_break_lock_takes_a_live_lease(prefix):
    holder = Lease(prefix, "stuck", heartbeat=False).acquire()
    taker = Lease(prefix, "forced", heartbeat=False).acquire(break_lock=True)
    with pytest.raises(LeaseError):
        holder.check()
    taker.release()


def test_the_heartbeat_keeps_a_lease_alive_past_its_length(tmp_path):
    lease = Lease(str(tmp_path / "out"), "long run", lease_seconds=0.4).acquire()
    try:
        time.sleep(1.2)  # three lease lengths: renewed every 0.1 s
        with pytest.raises(LeaseError):
            Lease(str(tmp_path / "out"), "other", lease_seconds=0.4, heartbeat=False).acquire()
    finally:
        lease.release()


def test_generations_only_grow_so_a_killed_runs_writer_never_mistakes_a_later_lock_for_its_own(tmp_path):
    out = str(tmp_path / "out")
    killed = Lease(out, "killed", lease_seconds=60, clock=lambda: 0.0, heartbeat=False).acquire()
    ref = killed.ref()
    later = Lease(out, "later", heartbeat=False).acquire()  # takes over the expired lock
    later.release()
    again = Lease(out, "again", heartbeat=False).acquire()
    assert again.generation == 3
    with pytest.raises(LeaseError):
        check_ref(ref)
    again.release()


# -- two synthesis runs on one prefix --------------------------------------------------------------------


def unique_keys(url: str) -> list[str]:
    shards = ShardSet(url)
    infos = shards.done()
    if storage.is_local(shards.fs):  # the stock reader too, where it opens the URL (local files)
        assert len(list(wds.WebDataset([i.tar for i in infos], shardshuffle=False))) == sum(i.count for i in infos)
    keys = [s["__key__"] for i in infos for s in shards.read(i)]
    assert len(keys) == len(set(keys))
    return keys


def only_one_fingerprint(url: str) -> str:
    info = ShardSet(url).info()
    assert info is not None and info.complete
    assert {i.marker["fingerprint"] for i in ShardSet(url).done()} == {info.fingerprint}
    return info.fingerprint


@pytest.mark.parametrize("same_seed", [False, True], ids=["other-seed", "same-seed"])
def test_two_synthesis_runs_at_once_in_threads(model, prefix, same_seed):
    barrier = threading.Barrier(2)
    outcomes: dict[int, object] = {}

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = synth_run.synthesize(model, prefix, cfg(n=12, seed=5 if same_seed else 5 + i), SAMPLING, progress=False, use_ray=False)
        except UserError as e:
            outcomes[i] = e
        except BaseException as e:  # anything else fails the test below, with its traceback
            outcomes[i] = e
            traceback.print_exc()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = [o for o in outcomes.values() if isinstance(o, synth_run.Summary)]
    refused = [o for o in outcomes.values() if isinstance(o, UserError)]
    assert len(finished) + len(refused) == 2 and finished, outcomes
    for e in refused:  # held (LeaseError), or, when it came after, another dataset (PlanError)
        one_line(e)
    if not same_seed:
        assert len(finished) == 1 and len(refused) == 1
    assert len(unique_keys(prefix)) == 12
    assert only_one_fingerprint(prefix) == finished[0].dataset["fingerprint"]


@pytest.mark.slow  # jobs as subprocesses: ~1 min; the threaded runs above cover the default suite
def test_two_synthesize_jobs_at_once_as_processes(model, prefix):
    procs = [
        subprocess.Popen(job("synthesize.py") + ["--model", model, "--out", prefix, "--n", "24", "--samples-per-shard", "4", "--steps", "3", "--seed", str(seed), "--actors", "0"],
                         env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    errors = [line for line in loser.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in loser and ("being written by another run" in errors[0] or "already holds" in errors[0])
    assert len(unique_keys(prefix)) == 24
    only_one_fingerprint(prefix)


@pytest.mark.slow  # jobs as subprocesses: ~1 min; the threaded runs above cover the default suite
def test_a_killed_synthesize_job_leaves_a_lock_that_a_rerun_takes_over(model, tmp_path):
    out = tmp_path / "out"
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"shard": 1, "after": 2}))
    argv = job("synthesize.py") + ["--model", model, "--out", str(out), "--n", "12", "--samples-per-shard", "4", "--steps", "3", "--actors", "0"]
    killed = subprocess.run(argv, env=job_env(DAKTER_FAULT_FILE=str(fault)), capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0 and (out / lock_name(1)).exists()  # the process died holding the prefix
    assert any(".tmp-" in p.name for p in out.iterdir())
    rerun = subprocess.run(argv, env=job_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over the lock" in rerun.stderr and "has ended" in rerun.stderr
    assert len(unique_keys(str(out))) == 12 and not any(".tmp-" in p.name for p in out.iterdir())


def test_a_run_that_loses_its_prefix_stops_and_keeps_its_finished_shards(model, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    real, calls = synth_worker.check_ref, []

    def rival_takes_over_after_the_first_shard(ref):
        calls.append(ref)
        if len(calls) == 2:
            Lease(out, "a rival with --break-lock", heartbeat=False).acquire(break_lock=True)
        return real(ref)

    monkeypatch.setattr(synth_worker, "check_ref", rival_takes_over_after_the_first_shard)
    with pytest.raises(LeaseError, match="lost"):
        synthesize(model, out, cfg(n=12))
    done = ShardSet(out).done()
    assert [i.shard for i in done] == [0]  # the first shard is kept; none after the take-over
    assert not ShardSet(out).info().complete


# -- readers ----------------------------------------------------------------------------------------------


def test_a_reader_never_counts_a_shard_of_another_run(model, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    synthesize(model, a, cfg(n=8, seed=1))
    synthesize(model, b, cfg(n=8, seed=2))
    for ext in ("tar", "parquet", "json"):  # a shard of run b copied over run a's shard 1
        (a / f"shard-000001.{ext}").write_bytes((b / f"shard-000001.{ext}").read_bytes())
    stream = GeneratedStream(str(a), passes=1, on_bad_shard="warn")
    assert [i.shard for i in stream.infos] == [0] and "a shard of another run" in stream.start_notices[0]
    assert len(list(stream)) == 4
    with pytest.raises(StreamError, match="a shard of another run"):
        GeneratedStream(str(a), passes=1, on_bad_shard="raise")
    # and a rerun of run a rewrites it as its own
    summary = synthesize(model, a, cfg(n=8, seed=1))
    assert summary.corrupt and summary.written == [1]
    assert only_one_fingerprint(str(a))
