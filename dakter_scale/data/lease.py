"""A writer's lease on a folder or object-store prefix: one run writes a prefix at a time.

Two runs writing one prefix at once break it in ways no later check can fully repair: one run's
clean-up removes the other's files in flight, shards of two seeds end up side by side, and the run
that finishes last decides what ``dataset.json`` counts. A run therefore takes the prefix's lease
before it looks at what the prefix holds, and holds it until it has written what it writes.
Synthesis, the filter and targeted synthesis hold their ``--out``'s lease; any other writer of a
prefix (scene inference's output folder) uses the same class: ``Lease(url, purpose).acquire()``
(``wait=`` seconds to keep trying while another run holds it), ``check()`` before each write (or
``valid_for()``, the seconds left by the holder's clock), ``ref()`` for writers in other processes,
which call ``check_ref(ref)``; ``release()``, or use it as a context manager. Liveness is the lease
alone: a record's host and pid are shown, never used (``Holder``), and ``held(fs, root, g)`` is true
only while g is the highest generation.

The lock. A small JSON object, ``lock-NNNNNN.json`` (the generation), created exclusively
(``storage.create_exclusive``: a hard link from a synced temporary locally, ``If-None-Match: *`` on
S3, ``ifGenerationMatch=0`` on GCS), so of two runs that try at once exactly one gets it. The
highest generation is the lease; a lock is never deleted and re-created: a run that takes over
creates the next generation, and only then removes the older ones.

Renewal: the holder rewrites its lock every ``lease_seconds / 4`` with a compare-and-set on the
version it last wrote (``storage.replace_if``: ``If-Match: <etag>`` on S3, a compare then a rename
locally), so a renewal never lands over anything but its own last record, nor re-creates a removed
lock on S3. Each record carries a random token and a renewal counter; host and pid are shown to
people, never used to decide anything.

Self-expiry (the fence). Let L = lease_seconds and m = L/4 the margin. A renewal (or the create)
whose request starts at time s on the holder's own clock makes the lease valid until s + L - m on
that clock (``CLOCK_BOOTTIME``: it counts time the process is stopped and the machine suspended).
A renewal that takes longer than m to return, or fails with a mismatch, ends the lease for good,
as does reaching the deadline without a renewal: the holder never renews again, and ``check``,
which every write of the holder's runs first, raises LeaseError. ``check`` also lists the lock
names and fails as soon as any higher generation exists (``held``).

Takeover. A lock marked released is free at once. Otherwise a run takes the next generation only
when it has proof that the holder's deadline has passed and its last writes have landed:
  - on the same machine (same ``boot_id``), by the shared boot clock: now >= valid_until + m;
  - from anywhere else, by watching: the lock's version unchanged for L by the taker's own clock.
A holder's last renewal started at s before the taker first saw it, so the taker acts after
s + L = the holder's deadline + m. No wall clock enters either rule: skew between hosts cannot make
a run take a live lease. Wall clocks only make a run refuse sooner: a lock whose record says it was
renewed within L/2 of the reader's wall clock is refused at once, naming its holder; any other
live-looking lock is watched for up to L (refused as soon as it changes).

Writers in other processes (Ray actors) cannot see the holder's deadline in its memory. ``check_ref``
reads the lock before each tar lands (the rename, or the upload's completion) and before each done
marker: a higher generation, a missing lock, another token or a
released lock raise; on the holder's machine the record's ``valid_until`` (boot clock) must lie
ahead; elsewhere the writer must itself have seen the lock change, at most L - m ago by its own
clock (a background reader per lease and process keeps that fresh; the first check waits for a
renewal, at most about L/4).

What the fence assumes (docs/reliability.md): clocks tick at the same rate (no bound on their
offset); a write that passed its check lands within m (one rename locally; a single PUT on S3:
botocore's retries of it must end within m); no time namespace offsets ``CLOCK_BOOTTIME`` between
two processes that report one ``boot_id``. File systems without an exclusive create get no lease
(the run says so once); object stores without a compare-and-set (gcsfs here) renew unconditionally,
and keep self-expiry and the generation check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Callable

from dakter_scale.data import storage
from dakter_scale.errors import UserError

log = logging.getLogger("dakter_scale")

LOCK_PREFIX = "lock-"
LOCK_RE = re.compile(r"^lock-(\d{6,})\.json$")
DEFAULT_LEASE_SECONDS = 120.0
MARGIN_FRACTION = 0.25  # m = L/4: a write that passed its check must land within m
RENEW_FRACTION = 0.25  # renewed every L/4: two renewals may fail before the deadline


class LeaseError(UserError, RuntimeError):
    """The prefix is held by another live run, or this run lost it; the message names the holder."""


def _secs(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.1f}"


def lock_name(generation: int) -> str:
    return f"lock-{generation:06d}.json"


def boot_clock() -> float:
    """Seconds on this machine's boot clock: monotonic, counts suspend (``CLOCK_BOOTTIME``); the
    plain monotonic clock where there is none."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


def boot_id() -> str:
    """This boot of this machine's kernel ('' where unknown: then no clock is ever shared)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the run that holds it."""

    token: str
    purpose: str  # e.g. "synthesis fingerprint 1a2b…"
    started: float  # Unix time, the holder's wall clock: shown, and used only to refuse sooner
    renewed: float
    lease_seconds: float
    generation: int
    host: str = "?"  # shown to people only
    pid: int = 0
    renewal: int = 0
    boot_id: str = ""
    valid_until: float | None = None  # the holder's deadline on its boot clock (same boot_id only)
    released: bool = False  # the run finished and gave the prefix back

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"{self.purpose} on {self.host} (pid {self.pid}), started {started}, renewed {_secs(max(0.0, now - self.renewed))} s ago by its clock"


# a lock claiming a longer lease is read as unreadable (a hostile one could block a prefix for ever)
MAX_LEASE_SECONDS = 7 * 86400.0


def _parse(blob: bytes, generation: int) -> Holder | None:
    """The lock's holder, or None where it cannot be read or its numbers are not believable (not
    finite, a lease outside (0, MAX_LEASE_SECONDS]): then only the reader's own lease bounds the wait."""
    try:
        obj = json.loads(blob.decode())
        holder = Holder(
            token=str(obj["token"]),
            purpose=str(obj.get("purpose", "")),
            started=float(obj["started"]),
            renewed=float(obj["renewed"]),
            lease_seconds=float(obj["lease_seconds"]),
            generation=generation,
            host=str(obj.get("host", "?")),
            pid=int(obj.get("pid", 0)),
            renewal=int(obj.get("renewal", 0)),
            boot_id=str(obj.get("boot_id", "")),
            valid_until=float(obj["valid_until"]) if obj.get("valid_until") is not None else None,
            released=obj.get("released") is True,
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, OverflowError):
        return None
    numbers = (holder.started, holder.renewed, holder.lease_seconds) + (
        (holder.valid_until,) if holder.valid_until is not None else ()
    )
    if not all(math.isfinite(v) for v in numbers) or not 0 < holder.lease_seconds <= MAX_LEASE_SECONDS:
        return None
    return holder


def generations(fs: Any, root: str) -> list[int]:
    """The lock generations under root, ascending (one prefix listing on S3)."""
    return sorted(int(m.group(1)) for name in storage.list_names(fs, root, LOCK_PREFIX) if (m := LOCK_RE.match(name)))


def held(fs: Any, root: str, generation: int) -> bool:
    """Whether lock `generation` still holds the prefix: it exists and no higher generation does.
    The highest generation is never removed (a run removes only locks below the one it created), so
    a lock re-created after its removal never passes this."""
    gens = generations(fs, root)
    return bool(gens) and gens[-1] == generation


def _read(fs: Any, root: str, generation: int) -> tuple[bytes, str | None] | None:
    try:
        return storage.read_versioned(fs, storage.join(root, lock_name(generation)))
    except FileNotFoundError:
        return None


class Lease:
    """The right to write one prefix. Use as a context manager, or acquire() / release().

    purpose: what the holder does, shown to a run that is refused (never credentials).
    clock: the deadline clock (``boot_clock``); wall_clock: what the record shows as renewal times
    (``time.time``); tests pass others to act as a machine whose clocks differ.
    heartbeat: renew from a background thread every lease_seconds / 4.
    """

    def __init__(
        self,
        url: str,
        purpose: str,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        clock: Callable[[], float] = boot_clock,
        heartbeat: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ):
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self.url, self.purpose, self.lease_seconds, self.clock, self.wall_clock = (
            url,
            purpose,
            float(lease_seconds),
            clock,
            wall_clock,
        )
        self.margin = self.lease_seconds * MARGIN_FRACTION
        self.fs, self.root = storage.url_to_fs(url)
        self.token = uuid.uuid4().hex
        self.host, self.pid, self.boot_id = socket.gethostname(), os.getpid(), boot_id()
        self.generation: int | None = None
        self.supported = True
        self.started = 0.0  # wall clock, when the lease was taken
        self.valid_until = float("-inf")  # on self.clock: no write starts at or after it
        self._version: str | None = None
        self._renewal = 0
        self._heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = threading.Lock()
        self._lost: str | None = None
        self._where = storage.redact_url(url)

    # -- what is there

    def _record(self, generation: int, valid_until: float, released: bool = False) -> bytes:
        now = self.wall_clock()
        holder = Holder(
            self.token,
            self.purpose,
            self.started or now,
            now,
            self.lease_seconds,
            generation,
            self.host,
            self.pid,
            self._renewal,
            self.boot_id,
            valid_until,
            released,
        )
        return (json.dumps(asdict(holder), indent=2, sort_keys=True) + "\n").encode()

    def holder(self) -> Holder | None:
        """The current lease's holder (the highest generation), or None when the prefix has no lock."""
        gens = generations(self.fs, self.root)
        got = _read(self.fs, self.root, gens[-1]) if gens else None
        return _parse(got[0], gens[-1]) if got else None

    # -- taking and giving back

    def acquire(self, break_lock: bool = False, wait: float = 0.0) -> "Lease":
        """Take the lease, or raise LeaseError naming the live holder. A lock that is neither
        released nor provably dead is watched for up to lease_seconds (module docstring); wait:
        seconds to keep trying while a live run holds the prefix (0: refuse at once)."""
        if storage.is_local(self.fs):
            self.fs.makedirs(self.root, exist_ok=True)
        tries, since = 0, self.clock()
        while tries < 8:
            tries += 1
            gens = generations(self.fs, self.root)
            generation = 1
            if gens:
                top = gens[-1]
                if break_lock:
                    log.warning("%s: taking over lock %s with --break-lock", self._where, lock_name(top))
                else:
                    try:
                        if not self._dead(top):
                            continue  # it changed under us (a new generation): look again
                    except LeaseError:
                        if self.clock() - since >= wait:
                            raise
                        tries -= 1
                        time.sleep(max(0.02, min(self.lease_seconds / 16, 2.0)))
                        continue
                generation = top + 1
            start = self.clock()
            self.started = self.wall_clock()
            self._renewal = 0
            record = self._record(generation, start + self.lease_seconds - self.margin)
            try:
                version = storage.create_exclusive(self.fs, storage.join(self.root, lock_name(generation)), record)
            except FileExistsError:
                continue  # another run took this generation first: look again
            except (TypeError, NotImplementedError, ValueError) as e:
                self.supported = False
                log.warning(
                    "%s: this file system cannot create a file exclusively (%s): no lock; do not run two writers on it at once",
                    self._where,
                    type(e).__name__,
                )
                return self
            self.generation, self._version, self.valid_until = (
                generation,
                version,
                start + self.lease_seconds - self.margin,
            )
            for older in gens:  # dead or released locks: nobody holds them any more
                with contextlib.suppress(FileNotFoundError):
                    storage.remove(self.fs, storage.join(self.root, lock_name(older)))
            if self._heartbeat:
                self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
                self._thread.start()
            return self
        raise LeaseError(f"{self._where}: could not take the lock after 8 tries; other runs keep taking it")

    def _dead(self, top: int) -> bool:
        """True once lock `top` is proven free (released, or its holder's deadline passed and its
        writes landed); False when a higher generation appeared meanwhile; raises LeaseError while
        its holder is alive."""
        got = _read(self.fs, self.root, top)
        if got is None:
            return False  # removed: a higher generation exists
        first_seen = self.clock()
        holder = _parse(got[0], top)
        if holder is not None and holder.released:
            return True
        shared = (
            holder is not None
            and holder.valid_until is not None
            and bool(holder.boot_id)
            and holder.boot_id == self.boot_id
        )
        if shared and first_seen < holder.valid_until:
            raise self._refusal(holder, "")  # its own deadline, on this machine's clock, lies ahead
        # The holder's own lease length, not ours, bounds its deadline (unreadable: ours is all we know).
        length = max(self.lease_seconds, holder.lease_seconds) if holder is not None else self.lease_seconds
        if not shared and holder is not None and abs(self.wall_clock() - holder.renewed) <= length / 2:
            raise self._refusal(holder, "")  # wall clocks only ever make a run refuse sooner
        name = holder.describe(self.wall_clock()) if holder else f"{lock_name(top)} (unreadable)"
        wait = holder.valid_until + holder.lease_seconds * MARGIN_FRACTION - first_seen if shared else length
        log.warning(
            "%s: the lock of %s is not being renewed; watching it for up to %s s before taking it over",
            self._where,
            name,
            _secs(wait),
        )
        poll = max(0.02, min(self.lease_seconds / 16, 2.0))
        while True:
            waited = self.clock() - first_seen
            if waited >= wait:
                log.warning(
                    "%s: taking over the lock of %s (%s)",
                    self._where,
                    name,
                    "its lease ended by this machine's clock" if shared else f"unchanged for {_secs(waited)} s",
                )
                return True
            time.sleep(min(poll, wait - waited))
            again = _read(self.fs, self.root, top)
            if again is None or generations(self.fs, self.root)[-1:] != [top]:
                return False
            if again[0] != got[0]:
                renewed = _parse(again[0], top)
                if renewed is not None and renewed.released:
                    return True
                raise self._refusal(renewed, " (renewed while this run watched it)")

    def _refusal(self, holder: Holder | None, note: str) -> LeaseError:
        who = holder.describe(self.wall_clock()) if holder else "a run whose lock cannot be read"
        return LeaseError(
            f"{self._where} is being written by another run: {who}{note}. One run writes a prefix at a time: wait for it, "
            f"or choose another --out; if that run is dead, its lock is taken over {_secs(holder.lease_seconds if holder else self.lease_seconds)} s after its last renewal"
        )

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds * RENEW_FRACTION):
            try:
                self.renew()
            except LeaseError:
                return
            except Exception as e:  # storage hiccup: keep trying until the deadline
                log.warning(
                    "%s: renewing the lock failed (%s: %s); retrying",
                    self._where,
                    type(e).__name__,
                    storage.error_line(e),
                )

    def _lose(self, why: str) -> LeaseError:
        with self._state:
            if self._lost is None:
                self._lost = f"{self._where}: this run lost its lock ({why}). Stopped writing; finished shards are kept"
            return LeaseError(self._lost)

    def valid_for(self) -> float:
        """Seconds left before this run must stop writing, by its own clock (<= 0: stop)."""
        return self.valid_until - self.clock()

    def check(self) -> None:
        """Raise LeaseError unless this run may write now: its deadline lies ahead by its own clock
        and no higher generation exists. Call it before every write to the prefix."""
        if not self.supported or self.generation is None:
            return
        if self._lost:
            raise LeaseError(self._lost)
        if self.valid_for() <= 0:
            raise self._lose(
                f"its lease lapsed: not renewed within {_secs(self.lease_seconds - self.margin)} s by its own clock"
            )
        if not held(self.fs, self.root, self.generation):
            holder = self.holder()
            raise self._lose(
                f"the prefix is now held by {holder.describe(self.wall_clock()) if holder else 'nobody (the lock was removed)'}"
            )

    def renew(self) -> None:
        """Rewrite our lock with a fresh deadline, conditionally on our last version (after check).
        A mismatch, or a renewal slower than the margin, ends the lease for good."""
        self.check()
        assert self.generation is not None
        path = storage.join(self.root, lock_name(self.generation))
        start = self.clock()
        deadline = start + self.lease_seconds - self.margin
        self._renewal += 1
        record = self._record(self.generation, deadline)
        try:
            version = storage.replace_if(self.fs, path, record, self._version)
        except storage.VersionMismatch as e:
            raise self._lose(f"its lock was changed or removed by another run: {e}") from None
        except NotImplementedError:
            storage.write_bytes(
                self.fs, path, record
            )  # no compare-and-set here: self-expiry and the generation check still fence
            version = None
        took = self.clock() - start
        if took > self.margin:
            raise self._lose(f"a renewal took {took:.1f} s, more than the {self.margin:.1f} s margin")
        with self._state:
            if self._lost is None:
                self._version, self.valid_until = version, deadline

    def ref(self) -> dict[str, Any]:
        """What a shard writer in another process needs to check the lease (``check_ref``)."""
        return {
            "url": self.url,
            "generation": self.generation,
            "token": self.token,
            "lease_seconds": self.lease_seconds,
        }

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is not None and self._lost is None and self.valid_for() > 0:
            # Kept, marked released, rather than removed: generations only ever grow, so a writer of a
            # killed run can never mistake a later run's lock for its own (a reused number).
            with contextlib.suppress(Exception):
                path = storage.join(self.root, lock_name(self.generation))
                record = self._record(self.generation, self.valid_until, released=True)
                try:
                    storage.replace_if(self.fs, path, record, self._version)
                except NotImplementedError:
                    if held(self.fs, self.root, self.generation):
                        storage.write_bytes(self.fs, path, record)
        self.generation = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# -- writers in other processes -----------------------------------------------------------------------


class _Watch:
    """One process's view of one lease: what it has seen of the lock, and until when (on this
    process's boot clock) it may write under it."""

    def __init__(self, ref: dict[str, Any], local_boot: str, clock: Callable[[], float]):
        self.url, self.generation, self.token = ref["url"], int(ref["generation"]), ref.get("token")
        self.lease_seconds = float(ref.get("lease_seconds", DEFAULT_LEASE_SECONDS))
        self.margin = self.lease_seconds * MARGIN_FRACTION
        self.fs, self.root = storage.url_to_fs(self.url)
        self.local_boot, self.clock = local_boot, clock
        self.where = storage.redact_url(self.url)
        self.blob: bytes | None = None
        self.last_read = float("-inf")  # when the read that saw self.blob started
        self.valid_until = float("-inf")  # from a change this process saw
        self.lost: str | None = None
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def read(self) -> Holder:
        """Read the lock once; raise LeaseError if the lease is gone; note when it last changed."""
        start = self.clock()
        got = _read(self.fs, self.root, self.generation)
        gens = generations(self.fs, self.root)
        with self.lock:
            if self.lost:
                raise LeaseError(self.lost)
            holder = _parse(got[0], self.generation) if got else None
            if got is None or gens[-1:] != [self.generation]:
                self.lost = f"{self.where}: the run lost its lock to another run; this shard is not written"
            elif holder is None or (self.token and holder.token != self.token) or holder.released:
                self.lost = f"{self.where}: the run's lock was replaced or released; this shard is not written"
            if self.lost:
                raise LeaseError(self.lost)
            if self.blob is not None and got[0] != self.blob:
                # Two reads saw different bytes, so a write landed after the earlier of them began (the
                # poller's and check's reads overlap: either may return last); a taker acts at least L
                # after that.
                since = min(start, self.last_read)
                self.valid_until = max(self.valid_until, since + self.lease_seconds - self.margin)
            if start >= self.last_read:  # an older read's bytes never replace a newer one's
                self.blob, self.last_read = got[0], start
            return holder

    def _poll(self) -> None:
        while True:
            time.sleep(max(0.02, self.lease_seconds / 8))
            try:
                self.read()
            except LeaseError:
                return
            except Exception:  # storage hiccup: the deadline covers it
                continue

    def check(self) -> None:
        holder = self.read()
        if self.local_boot and holder.boot_id == self.local_boot and holder.valid_until is not None:
            if self.clock() < holder.valid_until:
                return  # the holder's own deadline, on this machine's clock
            raise LeaseError(
                f"{self.where}: the run's lease lapsed (not renewed in time by its holder); this shard is not written"
            )
        if self.thread is None:
            self.thread = threading.Thread(target=self._poll, name="lease-watch", daemon=True)
            self.thread.start()
        waited = self.clock()
        while self.clock() >= self.valid_until:
            if self.clock() - waited > self.lease_seconds:
                raise LeaseError(
                    f"{self.where}: the run's lock was not renewed for {_secs(self.lease_seconds)} s as seen from here; this shard is not written"
                )
            time.sleep(max(0.02, self.lease_seconds / 32))
            self.read()


_watches: dict[tuple, _Watch] = {}
_watches_lock = threading.Lock()


def check_ref(
    ref: dict[str, Any] | None, *, local_boot: str | None = None, clock: Callable[[], float] = boot_clock
) -> None:
    """In a shard writer: raise LeaseError unless the run's lock (ref from Lease.ref) still holds the
    prefix and its lease is provably unexpired now (module docstring). Called right before each tar
    becomes visible and before each done marker. local_boot: this machine's boot id (tests pass another to act as a remote writer)."""
    if not ref or ref.get("generation") is None:
        return
    local_boot = boot_id() if local_boot is None else local_boot
    key = (str(ref["url"]), int(ref["generation"]), ref.get("token"), local_boot, clock)
    with _watches_lock:
        watch = _watches.get(key)
        if watch is None:
            watch = _watches[key] = _Watch(ref, local_boot, clock)
    watch.check()
