"""One run writes a prefix at a time: the lease (data/lease.py) on a local folder and on the moto S3
server (whose conditional puts honour If-None-Match and If-Match, as S3 does): exclusive creation,
compare-and-set renewals, self-expiry, takeover only with proof, holders paused in a thread or
stopped with SIGSTOP across a takeover; and two synthesis runs on one prefix at once, as threads and
as processes: either both finish with exactly N unique pairs, or the second is refused with one
line; no shard of a differently seeded run is ever counted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback

import pytest
import webdataset as wds
from test_synth import SAMPLING, cfg, synthesize

from dakter_scale.data import storage
from dakter_scale.data.lease import Lease, LeaseError, boot_clock, check_ref, generations, held, lock_name
from dakter_scale.data.shardset import ShardSet, shard_name
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
        assert (
            "synthesis of 8 pairs (seed 1)" in text
            and f"pid {os.getpid()}" in text
            and "being written by another run" in text
        )
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


def stall_heartbeat(lease: Lease) -> None:
    """Stop a holder's heartbeat thread without releasing: the holder is alive but renews no more
    (a hung process, as far as its lock shows)."""
    lease._stop.set()
    lease._thread.join()


def test_compare_and_set_writes_only_over_the_version_last_seen(prefix):
    fs, root = storage.url_to_fs(prefix)
    path = storage.join(root, "x.json")
    v1 = storage.create_exclusive(fs, path, b"one")
    v2 = storage.replace_if(fs, path, b"two", v1)
    assert storage.read_versioned(fs, path) == (b"two", v2)
    with pytest.raises(storage.VersionMismatch):
        storage.replace_if(fs, path, b"stale", v1)
    assert storage.read_versioned(fs, path)[0] == b"two"
    fs.rm(path)
    with pytest.raises(storage.VersionMismatch):
        storage.replace_if(fs, path, b"back", v2)
    fs.invalidate_cache(root)
    assert not fs.exists(path)  # a removed object is never created again by a stale writer


def test_a_holder_stops_writing_by_its_own_clock_before_anyone_can_take_over(prefix):
    lease = Lease(prefix, "hung", lease_seconds=1.0, heartbeat=False).acquire()
    assert 0 < lease.valid_for() <= 0.75  # L - L/4 from the create's start
    with pytest.raises(LeaseError, match="being written by another run"):
        Lease(prefix, "early", lease_seconds=1.0).acquire()  # its deadline lies ahead
    time.sleep(lease.valid_for())
    with pytest.raises(LeaseError, match="lapsed"):
        lease.check()  # nobody took the prefix yet: the holder stops by itself
    with pytest.raises(LeaseError, match="lapsed"):
        check_ref(lease.ref())  # and so do its writers on this machine (the boot clock is shared)
    with pytest.raises(LeaseError):
        lease.renew()  # for good: it never renews again
    taker = Lease(prefix, "next run", lease_seconds=1.0, heartbeat=False).acquire()
    assert boot_clock() >= lease.valid_until + 0.25  # the margin after its deadline, for its last writes to land
    assert taker.generation == 2
    taker.release()


def test_a_holder_paused_between_its_check_and_its_renewal_never_holds_again(prefix, monkeypatch):
    """The issue's case: a holder stopped after its check, before its renewal's write, resumed after
    two successors. Its renewal is a compare-and-set on its own last version: the lock it names is
    gone, so nothing is written, and it knows it lost."""
    holder = Lease(prefix, "paused holder", lease_seconds=1.0, heartbeat=False).acquire()
    real, paused, go = storage.replace_if, threading.Event(), threading.Event()

    def pausing(*args, **kwargs):
        if threading.current_thread().name == "paused-renewal":
            paused.set()
            go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "replace_if", pausing)
    outcome: list[object] = []

    def renew() -> None:
        try:
            holder.renew()
            outcome.append("renewed")
        except LeaseError as e:
            outcome.append(e)

    thread = threading.Thread(target=renew, name="paused-renewal")
    thread.start()
    assert paused.wait(10)  # checked, about to write
    first = Lease(prefix, "first successor", lease_seconds=1.0, heartbeat=False).acquire(wait=5)  # hangs too
    second = Lease(prefix, "second successor", lease_seconds=1.0).acquire(wait=5)
    go.set()
    thread.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseError), outcome
    fs, root = storage.url_to_fs(prefix)
    assert generations(fs, root) == [3]  # lock 1 was not written again
    for lost in (holder, first):
        with pytest.raises(LeaseError):
            lost.check()
        with pytest.raises(LeaseError):
            check_ref(lost.ref())
    second.check()
    check_ref(second.ref())
    assert held(fs, root, 3) and not held(fs, root, 1)
    second.release()


def test_held_is_false_as_soon_as_any_higher_generation_exists(prefix):
    fs, root = storage.url_to_fs(prefix)
    holder = Lease(prefix, "holder", heartbeat=False).acquire()
    assert held(fs, root, 1)
    storage.create_exclusive(fs, storage.join(root, lock_name(5)), b"{}")  # a gap: 2-4 never existed
    assert not held(fs, root, 1)
    with pytest.raises(LeaseError, match="lost its lock"):
        holder.check()


def test_a_renewal_slower_than_the_margin_ends_the_lease(tmp_path, monkeypatch):
    lease = Lease(str(tmp_path / "out"), "slow store", lease_seconds=0.8, heartbeat=False).acquire()
    real = storage.replace_if

    def slow(*args, **kwargs):
        time.sleep(0.3)  # the margin is 0.2 s: this write may have landed after a taker's last look
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "replace_if", slow)
    with pytest.raises(LeaseError, match="more than the 0.2 s margin"):
        lease.renew()
    with pytest.raises(LeaseError):
        lease.check()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_pid_decides_nothing_a_dead_process_keeps_its_lock_until_its_lease_runs_out(tmp_path):
    """Liveness by host and pid took a live lease between containers sharing a hostname. A lock is
    now judged by its lease alone: the process that wrote it has ended, on this very host, and the
    lock still holds until its deadline has passed by the boot clock."""
    out = tmp_path / "out"
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import os; from dakter_scale.data.lease import Lease; Lease({str(out)!r}, 'killed run', lease_seconds=2.0).acquire(); os._exit(9)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 9, child.stderr
    record = json.loads((out / lock_name(1)).read_text())
    assert record["host"] == socket.gethostname() and not process_exists(record["pid"])
    with pytest.raises(LeaseError, match="killed run"):
        Lease(str(out), "rerun", lease_seconds=2.0).acquire()
    rerun = Lease(str(out), "rerun", lease_seconds=2.0, heartbeat=False).acquire(wait=5)
    assert rerun.generation == 2
    rerun.release()


def test_a_dead_lock_of_another_machine_is_taken_only_after_a_whole_lease_unchanged(prefix):
    dead = Lease(prefix, "died elsewhere", lease_seconds=1.0, heartbeat=False)
    dead.boot_id = "another-machine"  # its boot clock means nothing here
    dead.acquire()
    with pytest.raises(LeaseError):  # renewed within L/2 by its wall clock: refused at once
        Lease(prefix, "early", lease_seconds=1.0).acquire()
    time.sleep(0.6)
    t0 = time.monotonic()
    taker = Lease(prefix, "taker", lease_seconds=1.0, heartbeat=False).acquire()
    assert time.monotonic() - t0 >= 1.0 and taker.generation == 2
    with pytest.raises(LeaseError):
        dead.check()
    taker.release()


def test_a_taker_with_a_shorter_lease_waits_the_holders_lease(tmp_path):
    out = str(tmp_path / "out")
    dead = Lease(out, "long lease elsewhere", lease_seconds=2.0, heartbeat=False)
    dead.boot_id = "another-machine"
    dead.acquire()
    time.sleep(1.1)  # past the holder's L/2 by the wall clock: watched, not refused
    t0 = time.monotonic()
    taker = Lease(out, "short lease", lease_seconds=0.5, heartbeat=False).acquire()
    assert time.monotonic() - t0 >= 2.0 and taker.generation == 2  # the holder's 2 s, not the taker's 0.5 s
    taker.release()


@pytest.mark.parametrize("skew", [-1000.0, 1000.0], ids=["holder-behind", "holder-ahead"])
def test_clock_skew_never_lets_a_run_take_a_live_lease(prefix, skew):
    """Skew over 90 s took a live lease. Wall clocks now only make a run refuse sooner: a holder on
    another machine whose clock is 1000 s off is watched, seen to renew, and refused."""
    # a 6 s lease: with 2 s, a loaded CI machine once let 2 s pass without the holder's renewal (every L/4,
    # through the one fsspec event loop this process shares with the taker's watch and the S3 server), and
    # the taker rightly took a lease its holder had lost
    live = Lease(prefix, "skewed holder", lease_seconds=6.0, wall_clock=lambda: time.time() + skew)
    live.boot_id = "another-machine"
    live.acquire()
    try:
        t0 = time.monotonic()
        with pytest.raises(LeaseError, match="renewed while this run watched"):
            Lease(prefix, "taker", lease_seconds=6.0).acquire()
        assert time.monotonic() - t0 < 6.0  # refused at its first renewal (every 1.5 s), not after a lease
        live.check()
    finally:
        live.release()


def test_a_writer_on_another_machine_writes_only_after_seeing_a_renewal(prefix):
    holder = Lease(prefix, "holder", lease_seconds=2.0).acquire()
    ref = holder.ref()
    t0 = time.monotonic()
    check_ref(ref, local_boot="another-machine")  # waits for a change it saw: about L/4
    assert time.monotonic() - t0 < 1.5
    check_ref(ref, local_boot="another-machine")  # its background reader keeps that fresh
    stall_heartbeat(holder)
    time.sleep(2.0)  # no renewal for a whole lease
    with pytest.raises(LeaseError, match="not renewed"):
        check_ref(ref, local_boot="another-machine")


def test_a_writers_read_that_returns_late_never_extends_its_deadline(tmp_path, monkeypatch):
    """A writer's background reader and its check read the lock at once. A read that began at t=10
    and saw the old record, applied after one that began at t=11 and saw the renewal, is no proof
    that the renewal landed after t=11: the writer may write until at most 10 + L - m."""
    from dakter_scale.data import lease as lease_mod

    holder = Lease(str(tmp_path / "out"), "holder", lease_seconds=100.0, heartbeat=False).acquire()
    now = {"t": 5.0}
    watch = lease_mod._Watch(holder.ref(), "another-machine", lambda: now["t"])
    watch.read()  # t=5: the first record
    first, real_read = lease_mod._read(holder.fs, holder.root, holder.generation), lease_mod._read
    started, go = threading.Event(), threading.Event()

    def scripted(fs, root, generation):
        if threading.current_thread().name == "slow-reader":
            started.set()
            go.wait(5)
            return first  # served before the renewal landed, returned after the next read
        return real_read(fs, root, generation)

    monkeypatch.setattr(lease_mod, "_read", scripted)
    now["t"] = 10.0
    slow = threading.Thread(target=watch.read, name="slow-reader")
    slow.start()
    assert started.wait(5)
    holder.renew()
    now["t"] = 11.0
    watch.read()  # sees the renewal
    go.set()
    slow.join(5)
    assert watch.valid_until <= 10.0 + 100.0 - 25.0
    holder.release()


def test_the_heartbeat_keeps_a_lease_alive_past_its_length(tmp_path):
    lease = Lease(str(tmp_path / "out"), "long run", lease_seconds=1.5).acquire()
    try:
        time.sleep(4.5)  # three lease lengths: renewed every 0.375 s
        lease.check()
        with pytest.raises(LeaseError):
            Lease(str(tmp_path / "out"), "other", lease_seconds=1.5, heartbeat=False).acquire()
    finally:
        lease.release()


def test_an_unreadable_lock_is_taken_over_after_a_lease_unchanged(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / lock_name(3)).write_bytes(b"")  # damaged (a lock is never seen half-written)
    t0 = time.monotonic()
    lease = Lease(str(out), "x", lease_seconds=0.5, heartbeat=False).acquire()
    assert time.monotonic() - t0 >= 0.5
    assert lease.generation == 4 and not (out / lock_name(3)).exists()
    lease.release()


@pytest.mark.parametrize("lease_seconds", ["Infinity", "1e300", "-5", "NaN"])
def test_a_lock_claiming_an_unbelievable_lease_is_read_as_unreadable(tmp_path, lease_seconds):
    """A lock of another machine whose lease is endless (JSON's Infinity parses) would have made a
    takeover watch it for ever; its numbers are not believed, and the reader's own lease bounds the wait."""
    out = tmp_path / "out"
    out.mkdir()
    old = time.time() - 3600
    (out / lock_name(3)).write_text(
        f'{{"token": "t", "started": {old}, "renewed": {old}, "lease_seconds": {lease_seconds}, "host": "elsewhere"}}'
    )
    t0 = time.monotonic()
    lease = Lease(str(out), "x", lease_seconds=0.5, heartbeat=False).acquire()
    assert 0.5 <= time.monotonic() - t0 < 30 and lease.generation == 4
    lease.release()


def test_break_lock_takes_a_live_lease(prefix):
    holder = Lease(prefix, "stuck", heartbeat=False).acquire()
    taker = Lease(prefix, "forced", heartbeat=False).acquire(break_lock=True)
    with pytest.raises(LeaseError):
        holder.check()
    taker.release()


def test_generations_only_grow_so_a_killed_runs_writer_never_mistakes_a_later_lock_for_its_own(tmp_path):
    out = str(tmp_path / "out")
    killed = Lease(
        out, "killed", lease_seconds=60, clock=lambda: 0.0, heartbeat=False
    ).acquire()  # its deadline: 45 s after boot
    ref = killed.ref()
    later = Lease(out, "later", heartbeat=False).acquire()  # takes over the expired lock
    later.release()
    again = Lease(out, "again", heartbeat=False).acquire()
    assert again.generation == 3
    with pytest.raises(LeaseError):
        check_ref(ref)
    again.release()


# -- holders and writers stopped across a takeover (SIGSTOP), as processes ---------------------------------

STOPPED_WRITER = """
import sys, time
from dakter_scale.data import storage
from dakter_scale.data.lease import Lease, LeaseError, check_ref
url, role = sys.argv[1], sys.argv[2]
fs, root = storage.url_to_fs(url)
if role == "holder":
    lease = Lease(url, "stopped holder", lease_seconds=2.0).acquire()
    check = lease.check
else:  # a shard writer of the parent's lease, acting as one on another machine
    ref = {"url": url, "generation": 1, "token": sys.argv[3], "lease_seconds": 2.0}
    check = lambda: check_ref(ref, local_boot="another-machine")
i = 0
try:
    while True:
        check()
        storage.write_bytes(fs, storage.join(root, f"written-{i:04d}.txt"), b"x")
        print(f"wrote {i}", flush=True)
        i += 1
        time.sleep(0.4)
except LeaseError as e:
    print(f"stopped: {e}", flush=True)
    sys.exit(3)
"""


def written(prefix: str) -> set[str]:
    fs, root = storage.url_to_fs(prefix)
    return {n for n in storage.list_dir(fs, root) if n.startswith("written-")}


def stop(proc: subprocess.Popen) -> None:
    """SIGSTOP proc and wait until the kernel shows it stopped."""
    os.kill(proc.pid, signal.SIGSTOP)
    for _ in range(500):
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.01)
    raise AssertionError("the process did not stop")


@pytest.mark.parametrize("role", ["holder", "writer"])
def test_a_stopped_process_never_writes_again_once_a_successor_holds_the_prefix(prefix, role):
    """The process is stopped between two guarded writes (after it printed one: it then sleeps), a
    successor takes the prefix, the process is continued: it writes nothing more, and says why."""
    holder = None
    argv = [sys.executable, "-c", STOPPED_WRITER, prefix, role]
    if role == "writer":
        holder = Lease(prefix, "parent holder", lease_seconds=2.0).acquire()
        argv.append(holder.token)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(2):
            line = proc.stdout.readline()
            assert line.startswith("wrote"), (line, proc.stderr.read() if proc.poll() is not None else "")
        stop(proc)
        if holder is not None:
            stall_heartbeat(holder)  # the run it writes for hangs as well
        successor = Lease(prefix, "successor", lease_seconds=2.0).acquire(wait=10)
        before = written(prefix)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, (out, err)
        assert out.splitlines()[-1].startswith("stopped:") and "Traceback" not in err
        assert written(prefix) == before  # nothing after the takeover
        successor.check()
        fs, root = storage.url_to_fs(prefix)
        assert generations(fs, root) == [2]
        successor.release()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()


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
            outcomes[i] = synth_run.synthesize(
                model, prefix, cfg(n=12, seed=5 if same_seed else 5 + i), SAMPLING, progress=False, use_ray=False
            )
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
        subprocess.Popen(
            job("synthesize.py")
            + [
                "--model",
                model,
                "--out",
                prefix,
                "--n",
                "24",
                "--samples-per-shard",
                "4",
                "--steps",
                "3",
                "--seed",
                str(seed),
                "--actors",
                "0",
            ],
            env=job_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    errors = [line for line in loser.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1
        and "Traceback" not in loser
        and ("being written by another run" in errors[0] or "already holds" in errors[0])
    )
    assert len(unique_keys(prefix)) == 24
    only_one_fingerprint(prefix)


@pytest.mark.slow  # jobs as subprocesses: ~1 min; the threaded runs above cover the default suite
def test_a_killed_synthesize_job_leaves_a_lock_that_a_rerun_takes_over_once_its_lease_ran_out(model, tmp_path):
    out = tmp_path / "out"
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"shard": 1, "after": 2}))
    argv = job("synthesize.py") + [
        "--model",
        model,
        "--out",
        str(out),
        "--n",
        "12",
        "--samples-per-shard",
        "4",
        "--steps",
        "3",
        "--actors",
        "0",
        "synthesis.lease_seconds=20",
    ]
    killed = subprocess.run(
        argv, env=job_env(DAKTER_FAULT_FILE=str(fault)), capture_output=True, text=True, timeout=600
    )
    died = time.monotonic()
    assert killed.returncode != 0 and (out / lock_name(1)).exists()  # the process died holding the prefix
    assert any(".tmp-" in p.name for p in out.iterdir())
    early = subprocess.run(argv, env=job_env(), capture_output=True, text=True, timeout=600)
    # the dead holder's deadline (L - L/4 = 15 s after its last renewal) is still ahead: refused, whatever its
    # pid; a start-up that took the whole window would make this no check at all, so it fails instead
    assert time.monotonic() - died < 14, "the early rerun started too late to test the refusal"
    errors = [line for line in early.stderr.splitlines() if line.startswith("error:")]
    assert early.returncode == 2 and len(errors) == 1 and "being written by another run" in errors[0], early.stderr
    time.sleep(max(0.0, 20 - (time.monotonic() - died)))
    rerun = subprocess.run(argv, env=job_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over the lock" in rerun.stderr
    assert len(unique_keys(str(out))) == 12 and not any(".tmp-" in p.name for p in out.iterdir())


def test_a_run_that_loses_its_prefix_stops_and_keeps_its_finished_shards(model, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    real, calls = synth_worker.check_ref, []

    def rival_takes_over_after_the_first_shard(ref):
        calls.append(ref)
        if len(calls) == 3:  # a shard's writer checks twice: before its tar lands and before its marker
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


def test_a_writer_whose_fence_fails_before_the_commit_lands_no_tar_and_no_marker(prefix):
    """The fence runs right before a tar becomes visible (the rename, or the upload's completion) and
    right before the marker: a writer that lost its prefix while it streamed leaves nothing, locally or
    on the S3 API, not even a temporary."""
    import numpy as np
    import torch

    from dakter_scale.data.shardset import sample_key

    from shardgen import pair_record

    shards = ShardSet(prefix)

    def lost():
        raise LeaseError("the prefix is another run's now")

    q = torch.full((5, 8, 8), 0.2)
    rows, samples = zip(*(pair_record(sample_key(0, i), 0, i, i, np.zeros((8, 8), np.uint8), q) for i in range(3)))
    with pytest.raises(LeaseError):
        shards.write_tar(0, samples, before_commit=lost)
    fs, root = storage.url_to_fs(prefix)
    assert not fs.exists(root) or not storage.list_dir(fs, root)
    nbytes, sha = shards.write_tar(0, samples, before_commit=lambda: None)
    with pytest.raises(LeaseError):
        shards.finish_shard(0, rows, nbytes, sha, "fp", before_marker=lost)
    assert shard_name(0, "json") not in storage.list_dir(fs, root) and shards.done() == []
