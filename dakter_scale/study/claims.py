"""A runner's claim on one unit of a study folder that several runners share: OUT/claims/KEY.lock.

Runners of one study share a machine (one per core) or a network folder, are paused for a while
(SIGSTOP, to free the cores) and are killed when a session ends. A claim must stay held while its
runner lives, however long it is stopped, and be free the moment the runner is gone. That is what the
kernel's file locks give (``flock``): a lock belongs to the open file, a stopped process keeps it and
the kernel drops it when the process exits, however it exits. The fencing lease of data/lease.py is
the wrong tool here: it ends when its holder stops renewing it, which a paused runner cannot do.

The lock file is never removed (removing it would let two runners lock two different files of one
name); while held it says who holds it, for people. On NFS, flock is carried by the server's byte-range
locks (NFSv4), which a crashed client's server releases after its lease period.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


class Claim:
    """One claim. take() -> whether this process now holds it (never waits); release() gives it back."""

    def __init__(self, path: str | Path, what: str):
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    def take(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        record = {"what": self.what, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> dict | None:
        """Who holds it or held it last, as written for people (a killed holder's record stays until the
        next take; a released claim's file is empty)."""
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def held(path: str | Path) -> Iterator[None]:
    """The lock at `path` held for a moment, waiting for it: a read-modify-write of a file that several
    runners update (timings.json, the records' identity.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock
