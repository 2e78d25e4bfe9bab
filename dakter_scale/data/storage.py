"""fsspec helpers: one place that knows how to write a file so that a reader never sees half of it.

On a local file system a file is written under a temporary name in the same folder and renamed
into place (atomic on POSIX). On object stores (s3://, gs://, ...) an object only becomes visible
when its upload completes, so it is written directly, streaming (multipart) as it goes.
Credentials come from the usual environment (AWS_* variables, ~/.aws, gcloud); nothing here logs them.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid
from typing import Any, Iterator

import fsspec


def url_to_fs(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path inside it) for any fsspec URL or local path."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs, path.rstrip("/") or path


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URL for messages and records (s3://bucket/key, or the local path)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


@contextlib.contextmanager
def open_atomic(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[Any]:
    """Open ``path`` for binary writing so that it appears whole or not at all.

    On error the partial file is removed (local) or the upload aborted (object stores discard an
    unfinished multipart upload when the file object is not committed).
    """
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with fs.open(tmp, "wb") as f:
                yield f
            fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(tmp)
            raise
    else:
        f = fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            # fsspec's buffered files upload on close(); discard() drops a pending multipart upload.
            with contextlib.suppress(Exception):
                if hasattr(f, "discard"):
                    f.discard()
            raise
        else:
            f.close()


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    with open_atomic(fs, path) as f:
        f.write(data)


def write_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    write_bytes(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read().decode())


def check_writable(url: str) -> None:
    """Fail early, naming the URL, when an output location cannot be written (writes and removes a probe)."""
    try:
        fs, root = url_to_fs(url)
        if is_local(fs):
            fs.makedirs(root, exist_ok=True)
        probe = join(root, f".write-probe-{uuid.uuid4().hex[:8]}")
        fs.pipe_file(probe, b"ok")
        fs.rm(probe)
    except Exception as e:  # any backend error means: not writable
        raise PermissionError(f"output {url} is not writable: {type(e).__name__}: {e}") from None
