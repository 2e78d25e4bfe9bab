"""A writer's lease on a folder or object-store prefix: one run writes a shard set at a time.

Two runs writing one prefix at once break it in ways no later check can fully repair: one run's
clean-up removes the other's files in flight, shards of two seeds end up side by side, and the run
that finishes last decides what ``dataset.json`` counts. A run therefore takes the prefix's lease
before it looks at what the prefix holds, and holds it until it has written ``dataset.json``.

The lease is a small JSON object, ``lock-NNNNNN.json`` (a generation number), created with an
exclusive create (``storage.create_exclusive``: a hard link from a synced temporary on a local file
system, a conditional put, ``If-None-Match: *``, on S3, ``ifGenerationMatch=0`` on GCS), so of two
runs that try at once exactly one gets it. The holder renews it every ``lease_seconds / 4`` (a heartbeat thread);
a lock not renewed for ``lease_seconds`` (by the holder's clock against the reader's: clocks must
agree to well within the lease), or held by a process of this host that no longer exists, is dead.
A dead lock is never deleted and re-created (two runs could each delete the other's new lock):
the next run creates the next generation, again exclusively, and the highest generation is the
lease. A finished run marks its lock released rather than removing it, so generations only grow and
one small lock file stays beside the shards. A holder that finds a higher generation than its own, or its own lock gone, has lost the
lease: ``check`` raises, and the synthesis driver and its shard writers call it before each done
marker, so a run that lost its prefix stops writing it.

File systems without an exclusive create get no lease: the run says so once and relies on the
fingerprint checks alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
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

LOCK_RE = re.compile(r"^lock-(\d{6,})\.json$")
DEFAULT_LEASE_SECONDS = 120.0


class LeaseError(UserError, RuntimeError):
    """The prefix is held by another live run, or this run lost it; the message names the holder."""


def lock_name(generation: int) -> str:
    return f"lock-{generation:06d}.json"


@dataclass(frozen=True)
class Holder:
    """What a lock file says about the run that holds it."""

    token: str
    host: str
    pid: int
    purpose: str  # e.g. "synthesis fingerprint 1a2b…"
    started: float  # Unix time, the holder's clock
    renewed: float
    lease_seconds: float
    generation: int
    released: bool = False  # the run finished and gave the prefix back

    def describe(self, now: float) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"{self.purpose} on {self.host} (pid {self.pid}), started {started}, renewed {max(0.0, now - self.renewed):.0f} s ago"


def _parse(blob: bytes, generation: int) -> Holder | None:
    try:
        obj = json.loads(blob.decode())
        return Holder(
            token=str(obj["token"]),
            host=str(obj["host"]),
            pid=int(obj["pid"]),
            purpose=str(obj.get("purpose", "")),
            started=float(obj["started"]),
            renewed=float(obj["renewed"]),
            lease_seconds=float(obj["lease_seconds"]),
            generation=generation,
            released=obj.get("released") is True,
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, owned by someone else (or we cannot tell: assume alive)
    return True


def dead_reason(holder: Holder | None, modified: float | None, now: float, lease_seconds: float, host: str) -> str | None:
    """Why a lock no longer holds its prefix, or None while it does. A lock that cannot be parsed
    (being written, or damaged) holds it until it is older than a lease by its storage time."""
    if holder is None:
        if modified is not None and now - modified > lease_seconds:
            return f"an unreadable lock last modified {now - modified:.0f} s ago"
        return None
    if holder.released:
        return "released"
    if holder.host == host and not _process_exists(holder.pid):
        return f"its process {holder.pid} on this host has ended"
    if now - holder.renewed > holder.lease_seconds:
        return f"not renewed for {now - holder.renewed:.0f} s (lease {holder.lease_seconds:.0f} s)"
    return None


def _modified(entry: dict) -> float | None:
    for key in ("mtime", "LastModified", "updated", "last_modified"):
        value = entry.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
    return None


class Lease:
    """The right to write one prefix. Use as a context manager, or acquire() / release().

    purpose: what the holder does, shown to a run that is refused (never credentials).
    break_lock: take the prefix even from a holder that looks alive (its owner must be known dead).
    """

    def __init__(self, url: str, purpose: str, lease_seconds: float = DEFAULT_LEASE_SECONDS, clock: Callable[[], float] = time.time, heartbeat: bool = True):
        if lease_seconds <= 0:
            raise ValueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self.url, self.purpose, self.lease_seconds, self.clock = url, purpose, float(lease_seconds), clock
        self.fs, self.root = storage.url_to_fs(url)
        self.token = uuid.uuid4().hex
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.generation: int | None = None
        self.supported = True
        self.started = 0.0
        self._heartbeat = heartbeat
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None

    # -- what is there

    def _locks(self) -> dict[int, dict]:
        return {int(m.group(1)): entry for name, entry in storage.list_dir(self.fs, self.root).items() if (m := LOCK_RE.match(name))}

    def _read(self, generation: int) -> Holder | None:
        try:
            return _parse(self.fs.cat_file(storage.join(self.root, lock_name(generation))), generation)
        except FileNotFoundError:
            return None

    def _record(self, generation: int, released: bool = False) -> bytes:
        now = self.clock()
        holder = Holder(self.token, self.host, self.pid, self.purpose, self.started or now, now, self.lease_seconds, generation, released)
        return (json.dumps(asdict(holder), indent=2, sort_keys=True) + "\n").encode()

    def holder(self) -> Holder | None:
        """The current lease's holder (the highest generation), or None when the prefix has no lock."""
        locks = self._locks()
        return self._read(max(locks)) if locks else None

    # -- taking and giving back

    def acquire(self, break_lock: bool = False) -> "Lease":
        """Take the lease, or raise LeaseError naming the live holder. Up to a few tries when another
        run creates a lock between our look and our create."""
        where = storage.redact_url(self.url)
        if storage.is_local(self.fs):
            self.fs.makedirs(self.root, exist_ok=True)
        for _ in range(8):
            locks = self._locks()
            generation = 1
            if locks:
                top = max(locks)
                holder = self._read(top)
                now = self.clock()
                reason = dead_reason(holder, _modified(locks[top]), now, self.lease_seconds, self.host)
                if reason is None and not break_lock:
                    who = holder.describe(now) if holder else "a run whose lock is being written"
                    raise LeaseError(
                        f"{where} is being written by another run: {who}. One run writes a prefix at a time: wait for it, "
                        f"or choose another --out; if that run is dead (another host), its lease ends {self.lease_seconds:.0f} s after its last renewal"
                    )
                if reason != "released":
                    log.warning("%s: taking over the lock of %s (%s)", where, holder.describe(now) if holder else lock_name(top), reason or "--break-lock")
                generation = top + 1
            self.started = self.clock()
            try:
                storage.create_exclusive(self.fs, storage.join(self.root, lock_name(generation)), self._record(generation))
            except FileExistsError:
                continue  # another run took this generation first: look again
            except (TypeError, NotImplementedError, ValueError) as e:
                self.supported = False
                log.warning("%s: this file system cannot create a file exclusively (%s): no lock; do not run two writers on it at once", where, type(e).__name__)
                return self
            self.generation = generation
            for older in sorted(g for g in locks if g < generation):  # dead locks: nobody holds them any more
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(storage.join(self.root, lock_name(older)))
            if self._heartbeat:
                self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
                self._thread.start()
            return self
        raise LeaseError(f"{where}: could not take the lock after 8 tries; other runs keep taking it")

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            try:
                self.renew()
            except LeaseError as e:
                self._lost = str(e)
                return
            except Exception as e:  # storage hiccup: keep trying until the lease would lapse
                log.warning("%s: renewing the lock failed (%s: %s); retrying", storage.redact_url(self.url), type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")

    def check(self) -> None:
        """Raise LeaseError if this run no longer holds the prefix (another run took it over)."""
        if not self.supported or self.generation is None:
            return
        if self._lost:
            raise LeaseError(self._lost)
        if not held(self.fs, self.root, self.generation):
            holder = self.holder()
            who = holder.describe(self.clock()) if holder else "nobody (the lock was removed)"
            self._lost = f"{storage.redact_url(self.url)}: this run lost its lock; the prefix is now held by {who}. Stopped writing; finished shards are kept"
            raise LeaseError(self._lost)

    def renew(self) -> None:
        """Write a fresh renewal time into our lock (after check)."""
        self.check()
        if self.generation is not None:
            storage.write_bytes(self.fs, storage.join(self.root, lock_name(self.generation)), self._record(self.generation))

    def ref(self) -> dict[str, Any]:
        """What a shard writer in another process needs to check the lease (LeaseRef)."""
        return {"url": self.url, "generation": self.generation}

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is not None and self._lost is None:
            # Kept, marked released, rather than removed: generations only ever grow, so a writer of a
            # killed run can never mistake a later run's lock for its own (a reused number).
            with contextlib.suppress(Exception):
                if held(self.fs, self.root, self.generation):
                    storage.write_bytes(self.fs, storage.join(self.root, lock_name(self.generation)), self._record(self.generation, released=True))
        self.generation = None

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def held(fs: Any, root: str, generation: int) -> bool:
    """Whether lock `generation` still holds the prefix: it exists and the next one does not. A run
    creates generation g + 1 only after reading g as the highest, and only a holder removes older
    locks, so this is the whole test: two existence checks, not a listing of a prefix of shards."""
    fs.invalidate_cache(root)
    return fs.exists(storage.join(root, lock_name(generation))) and not fs.exists(storage.join(root, lock_name(generation + 1)))


def check_ref(ref: dict[str, Any] | None) -> None:
    """In a shard writer: raise LeaseError unless the run's lock (ref from Lease.ref) still holds the
    prefix. Called before each done marker."""
    if not ref or ref.get("generation") is None:
        return
    fs, root = storage.url_to_fs(ref["url"])
    if not held(fs, root, int(ref["generation"])):
        raise LeaseError(f"{storage.redact_url(ref['url'])}: the run lost its lock to another run; this shard's marker is not written")
