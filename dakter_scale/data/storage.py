"""fsspec helpers: one place that knows how to write a file so that a reader never sees half of it.

Which backend gets which write (``open_atomic``):

- Local file systems (``file://``, plain paths): a file is written under a temporary name in the same
  folder (``NAME.tmp-XXXXXXXXXXXX``), synced to the disk, renamed into place (atomic on POSIX), and the
  folder synced, so a file written after it (a shard's done marker after its tar and manifest) never
  survives a power loss that the file itself does not.
- Object stores (``OBJECT_STORES``: s3://, gs://, az:// and their aliases): an object only becomes
  visible when its upload completes, so it is written directly, streaming as it goes: s3fs sends parts
  of ``default_block_size`` (50 MiB; set e.g. ``FSSPEC_S3='{"default_block_size": 8388608}'``) as a
  multipart upload that is completed on close. A writer that dies before close leaves no object, only
  an incomplete multipart upload that is invisible to readers but stored (and billed) until it is
  aborted: give the bucket a lifecycle rule that aborts incomplete multipart uploads after a day
  (docs/synthesis.md).
- Every other backend (sftp://, ftp://, webdav, smb://, hdfs://, memory://, any protocol not listed
  above): a file written there is visible, partial, while it is written, so it too is written under a
  ``.tmp-`` name in the same folder and renamed into place after close (the backend's own rename; where
  that refuses an existing name, as SMB's does, the old file is removed first, so for that moment the
  name is absent, never partial). Nothing is synced: these backends offer no ``fsync`` here. A killed
  writer leaves a ``.tmp-`` file, which ``remove_temporaries`` clears as it does locally.

Credentials come from the usual environment (AWS_* variables, ~/.aws, gcloud); nothing here logs them.
A URL can still carry them (``scheme://user:password@host/...``, a presigned ``?X-Amz-Signature=...``):
``redact_url`` is the one function that strips them, applied to every URL a message, a log line or a
recorded file (student.json, dataset.json, dakter.json, config.yaml) shows.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import inspect
import io
import json
import os
import posixpath
import re
import time
import uuid
from typing import Any, Callable, Iterator

import fsspec
import fsspec.asyn

from dakter_scale.errors import UserError

TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{12}$")
# scheme://USERINFO@ : everything up to the last @ before the first /, or, once a user is followed by
# a colon, up to the last @ of the word: an unencoded password may hold / and @ (an AWS secret key
# often has a /); hiding a little too much is better than showing part of a secret.
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)(?:[^/?#\s]*@|[^/?#@\s:]*:\S*@)")
# A query parameter whose name says it carries a secret (token, key, secret, signature, password,
# credential, sig, auth), e.g. X-Amz-Signature, X-Amz-Security-Token, access_token, Azure's sig.
# Conservative: any name containing one of those words is hidden; the data specs' size, test, seed
# and sat parameters are not.
_SECRET_PARAM_RE = re.compile(
    r"(?i)([?&;][^=&#\s?;]*(?:token|key|secret|signature|passw|pwd|credential|sig|auth)[^=&#\s?;]*=)[^&#\s;]*"
)
REDACTED = "***"


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, quota exceeded, file-size limit


class StorageError(UserError, PermissionError):
    """An output location that cannot be listed or written; the message names the URL, never credentials."""


def redact_url(text: str) -> str:
    """``text`` (a URL, a data spec, or a message holding them) with credentials hidden: the userinfo of
    every ``scheme://user:password@host`` and the values of secret-looking query parameters become
    ``***``. Everything else, the host and path included, is kept, so the output still names the place."""
    text = _USERINFO_RE.sub(lambda m: f"{m.group(1)}{REDACTED}@", str(text))
    return _SECRET_PARAM_RE.sub(lambda m: f"{m.group(1)}{REDACTED}", text)


def error_line(e: BaseException | str, limit: int = 200) -> str:
    """An error's first line for a message or a log line: credentials redacted, then cut to `limit`
    characters (in that order: a cut inside a password, before its "@", left the regex nothing to match)."""
    text = str(e)
    return redact_url(text.splitlines()[0])[:limit] if text else ""


# Object stores take credentials from the environment only: s3fs and gcsfs would read user:password@
# as part of the bucket name and echo it in their errors.
_NO_USERINFO = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
# Object stores whose objects become visible only once their upload completes (s3fs, gcsfs, adlfs):
# open_atomic writes to them directly. Every other non-local protocol writes a temporary and renames it.
OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def url_to_fs(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """(file system, path inside it) for any fsspec URL or local path."""
    scheme, sep, _ = str(url).partition("://")
    if sep and scheme.lower() in _NO_USERINFO and redact_url(url) != url:
        raise StorageError(
            f"{redact_url(url)}: credentials in a {scheme}:// URL are not used; give them in the environment (AWS_* variables, ~/.aws, gcloud)"
        )
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs, path.rstrip("/") or path


class ForkSafeFS:
    """A URL's file system (``fs``) and the path inside it (``root``), opened again in a forked process (a
    DataLoader worker): async file systems (s3fs, gcsfs) refuse an instance made before the fork ("This
    class is not fork-safe")."""

    def __init__(self, url: str):
        self.url = url
        self._fs, self.root = url_to_fs(url)
        self._pid = os.getpid()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._pid != os.getpid():
            self._fs, _ = url_to_fs(self.url)
            self._pid = os.getpid()
        return self._fs


def location(url: str) -> tuple[str, str]:
    """(protocol, normalised absolute path) of a URL or local path: symlinks and `.`/`..` resolved
    locally, `.`/`..` and repeated slashes folded on object stores, so two spellings of one place compare equal."""
    fs, path = url_to_fs(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if is_local(fs):
        return "file", os.path.realpath(path)
    return protocol, posixpath.normpath("/" + path.lstrip("/"))


def overlaps(a: str, b: str) -> bool:
    """Whether a and b are the same place or one lies inside the other (however spelled)."""
    (pa, xa), (pb, xb) = location(a), location(b)
    if pa != pb:
        return False
    sep = os.sep if pa == "file" else "/"
    return xa == xb or xa.startswith(xb.rstrip(sep) + sep) or xb.startswith(xa.rstrip(sep) + sep)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def is_object_store(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether a file written to ``fs`` becomes visible only once whole (OBJECT_STORES: an object exists
    once its upload completes), so that open_atomic writes it directly rather than renaming a temporary."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(p in OBJECT_STORES for p in protocols)


def leaves_temporaries(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether open_atomic writes ``.tmp-`` files here (every backend but an object store), which a
    killed writer leaves behind for remove_temporaries."""
    return is_local(fs) or not is_object_store(fs)


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def full_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URL for messages and records (s3://bucket/key, or the local path), credentials redacted."""
    return path if is_local(fs) else redact_url(fs.unstrip_protocol(path))


def list_dir(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, dict]:
    """{name: info} of the files directly under root, read fresh from storage.

    Object-store file systems cache listings per process; other processes (actors) write here, so
    the cache is dropped first, or a rerun in the same process would miss finished shards.
    """
    fs.invalidate_cache(root)
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        # Not there, or (object stores) its last object went between a look and the listing: a
        # prefix exists only while something is under it, and another writer may remove that.
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries}


@contextlib.contextmanager
def open_atomic(
    fs: fsspec.AbstractFileSystem, path: str, before_commit: Callable[[], None] | None = None
) -> Iterator[Any]:
    """Open ``path`` for binary writing so that it appears whole or not at all.

    before_commit: called once the bytes are written, right before they become visible (the rename,
    or the upload's completion); if it raises, nothing appears (a writer's lease check: a writer that
    lost its prefix while it streamed never lands the file).

    Local and every backend that is no object store (sftp, ftp, webdav, smb, ...): a temporary in the
    same folder, renamed into place after close (locally synced first, and its folder after). Object
    stores: the object directly (module docstring). On error the temporary is removed, or the
    multipart upload aborted. A process killed outright leaves a ``.tmp-`` file (``remove_temporaries``
    clears them) or an incomplete multipart upload (object stores; a bucket lifecycle rule clears them).
    """
    if leaves_temporaries(fs):
        local = is_local(fs)
        folder = posixpath.dirname(path) or "."
        if local:
            fs.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with fs.open(tmp, "wb") as f:
                yield f
                f.flush()
                if local:
                    fsync(f)
            if before_commit is not None:
                before_commit()
            if local:
                fs.mv(tmp, path)
                fsync_folder(folder)
            else:
                _rename_over(fs, tmp, path)
        except BaseException as e:
            with contextlib.suppress(Exception):
                remove(fs, tmp)
            if isinstance(e, OSError) and e.errno in _FULL:
                raise StorageError(
                    f"writing {full_url(fs, path)} failed: {e.strerror or e} (the disk or quota is full): nothing partial is left; free space and rerun"
                ) from None
            raise
    else:
        # Nothing to sync: the object exists only once its (multipart) upload completes, and the store
        # acknowledges that completion only after the object is durable.
        f = fs.open(path, "wb")
        try:
            yield f
            if before_commit is not None:
                before_commit()
        except BaseException:
            # Buffered object-store files upload on close(); discard() aborts a started multipart upload.
            with contextlib.suppress(Exception):
                if hasattr(f, "discard"):
                    f.discard()
            raise
        else:
            f.close()


def _rename_over(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Rename the finished temporary ``src`` to ``dst`` on a backend that is neither local nor an object
    store, replacing what is there. The backend's own rename where it has one (sftp, ftp, smb, webdav,
    hdfs); fsspec's generic ``mv`` copies and removes through ``expand_path``, which expands ``[``,
    ``*`` and ``?``, so there the one file is copied literally (``cp_file``) and the temporary removed.
    A rename that refuses an existing name (SMB) gets the old file removed first and is tried again."""
    if type(fs).mv is fsspec.AbstractFileSystem.mv:
        fs.cp_file(src, dst)
        remove(fs, src)
        return
    try:
        fs.mv(src, dst)
    except Exception:
        fs.invalidate_cache(posixpath.dirname(dst))
        if not (fs.exists(src) and fs.exists(dst)):
            raise
        remove(fs, dst)
        fs.mv(src, dst)
    fs.invalidate_cache(posixpath.dirname(dst))


def fsync(f: Any) -> None:
    """Force a local file's written bytes to the disk, where the file system offers it (a power loss
    after the rename must not leave an empty or short file under the final name)."""
    with contextlib.suppress(AttributeError, OSError, io.UnsupportedOperation):
        os.fsync(f.fileno())


def fsync_folder(folder: str) -> None:
    """Make a rename in a local folder durable (POSIX: fsync the folder); a no-op where folders cannot
    be opened or synced (Windows, some network file systems)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_temporaries(
    fs: fsspec.AbstractFileSystem, root: str, prefixes: tuple[str, ...] = ("",), min_age: float = 0.0
) -> list[str]:
    """Remove the ``.tmp-`` files (names starting with one of prefixes) that killed writers left under
    root (local, or any backend open_atomic renames on) and that nothing has written to for min_age
    seconds; returns their names. A live writer keeps its temporary's modification time fresh, so
    min_age spares it. The age is this machine's wall clock minus the time the storage reports (on
    NFS, sftp or any shared store, the server's clock): see docs/reliability.md for the skew this
    assumes. A file whose time cannot be read is kept (unless min_age is 0)."""
    removed = []
    now = time.time()
    for name, entry in list_dir(fs, root).items():
        modified = _modified(entry)
        if min_age > 0 and not (modified is not None and now - modified >= min_age):
            continue
        if name.startswith(prefixes) and TEMP_RE.search(name):
            with contextlib.suppress(FileNotFoundError):
                remove(fs, join(root, name))
            removed.append(name)
    return removed


def _modified(entry: dict) -> float | None:
    """A listing entry's modification time as seconds since the epoch, or None. Backends name and type
    it differently: local and sftp ``mtime`` (seconds), webdav ``modified`` (a datetime), ftp ``modify``
    (``YYYYMMDDHHMMSS``, UTC), memory only ``created``."""
    for key in ("mtime", "modified", "LastModified", "last_modified", "modify", "created"):
        value = entry.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)).timestamp()
        if isinstance(value, str):
            for parse in (
                datetime.datetime.fromisoformat,
                lambda v: datetime.datetime.strptime(v.split(".")[0], "%Y%m%d%H%M%S"),
            ):
                with contextlib.suppress(ValueError):
                    parsed = parse(value)
                    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)).timestamp()
    return None


def create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> str | None:
    """Create ``path`` holding ``data`` only if nothing is there: of two writers that try at once,
    exactly one succeeds and the other gets FileExistsError; a reader never sees a partial file.
    Returns the new object's version for ``replace_if`` (None where the store gives none).

    Local: the bytes go to a synced temporary that is hard-linked to ``path`` (``link`` fails when
    the name exists, atomically), or ``O_EXCL`` where the file system has no hard links. Object
    stores: the backend's conditional put (s3fs: ``If-None-Match: *``; gcsfs:
    ``ifGenerationMatch=0``). fsspec's generic ``pipe_file(mode="create")`` looks and then writes,
    which two writers can both pass (seen on local disk: 2 of 6 runs took one lock), so a file system
    without its own exclusive create raises NotImplementedError instead.
    """
    if is_local(fs):
        folder = posixpath.dirname(path) or "."
        fs.makedirs(folder, exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                fsync(f)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:  # no hard links here (some network and FUSE file systems)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    fsync(f)
        finally:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        fsync_folder(folder)
        return _content_version(data)
    for name in ("_pipe_file", "pipe_file"):
        owner = next((k for k in type(fs).__mro__ if name in k.__dict__), None)
        if owner is not None and not owner.__module__.startswith(("fsspec.spec", "fsspec.asyn")):
            if "mode" in inspect.signature(owner.__dict__[name]).parameters:
                out = fs.pipe_file(path, data, mode="create")
                return _s3_etag(out) if _is_s3(fs) else None
    raise NotImplementedError(f"{type(fs).__name__} has no exclusive create")


# -- compare-and-set: a write that lands only over the version the writer last saw ------------------------


class VersionMismatch(Exception):
    """``replace_if`` found the object changed or gone: it wrote nothing (or, locally, see there)."""


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("s3", "s3a")


def _content_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _s3_etag(out: Any) -> str | None:
    return out.get("ETag") if isinstance(out, dict) else None


def _precondition_failed(e: BaseException) -> bool:
    """s3fs turns S3's 412 PreconditionFailed (and 409 ConditionalRequestConflict) into OSError(EINVAL)."""
    cause = e.__cause__ or e.__context__
    code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or (
        isinstance(e, OSError) and e.errno == errno.EINVAL and "pre-condition" in str(e)
    )


def read_versioned(fs: fsspec.AbstractFileSystem, path: str) -> tuple[bytes, str | None]:
    """(bytes, version) of ``path`` read in one request, so the version is that of these bytes: the
    S3 ETag of the GET that returned them, or locally the bytes' sha256 (a renewal record is unique:
    it holds a token and a counter). Raises FileNotFoundError. Elsewhere the version is None."""
    if is_local(fs):
        with open(path, "rb") as f:
            data = f.read()
        return data, _content_version(data)
    if not _is_s3(fs):
        fs.invalidate_cache(path)
        return fs.cat_file(path), None

    async def get() -> tuple[bytes, str | None]:
        bucket, key, _ = fs.split_path(path)
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            return await resp["Body"].read(), resp.get("ETag")
        finally:
            resp["Body"].close()

    return fsspec.asyn.sync(fs.loop, get)


def replace_if(fs: fsspec.AbstractFileSystem, path: str, data: bytes, version: str | None) -> str | None:
    """Replace ``path`` with ``data`` only if it still holds ``version`` (from ``read_versioned``,
    ``create_exclusive`` or an earlier ``replace_if``); returns the new version. Raises
    VersionMismatch when the object changed or is gone, NotImplementedError where the store has no
    compare-and-set (the caller decides whether an unconditional write will do).

    S3: a PUT with ``If-Match: <etag>`` (S3 since November 2024, botocore >= 1.35.69; moto honours
    it): the store compares and writes in one step, and a missing key fails too. Local: the file is
    opened (which pins the inode it names), its bytes compared with ``version``, and a synced
    temporary renamed over it. The compare and the rename are two steps: a writer that replaces the
    file between them is overwritten, and a file removed between them is created again. The lease
    (data/lease.py) is built so that neither changes who holds a prefix: only a lock's holder
    replaces its lock, and a lock is removed only after the next generation exists.
    """
    if version is None:
        raise NotImplementedError(f"{type(fs).__name__}: no version to compare")
    if is_local(fs):
        try:
            with open(path, "rb") as f:
                if _content_version(f.read()) != version:
                    raise VersionMismatch(f"{path} changed")
        except FileNotFoundError:
            raise VersionMismatch(f"{path} is gone") from None
        write_bytes(fs, path, data)
        return _content_version(data)
    if not _is_s3(fs):
        raise NotImplementedError(f"{type(fs).__name__} has no compare-and-set here")
    try:
        out = fs.pipe_file(path, data, IfMatch=version)
    except FileNotFoundError:
        raise VersionMismatch(f"{full_url(fs, path)} is gone") from None
    except OSError as e:
        if _precondition_failed(e):
            raise VersionMismatch(f"{full_url(fs, path)} changed") from None
        raise
    except Exception as e:  # botocore before 1.35.69 refuses the IfMatch parameter itself
        if type(e).__name__ == "ParamValidationError":
            raise NotImplementedError(
                f"this botocore cannot send If-Match on PutObject (needs botocore >= 1.35.69): {str(e).splitlines()[0][:120]}"
            ) from None
        raise
    return _s3_etag(out)


def list_names(fs: fsspec.AbstractFileSystem, root: str, prefix: str) -> list[str]:
    """Names directly under root that start with ``prefix``, read fresh from storage: on S3 one
    ``ListObjectsV2`` with that key prefix, however many shards lie beside them; locally the folder's
    names (no stat of each); elsewhere a listing of root, filtered."""
    if is_local(fs):
        try:
            return [name for name in os.listdir(root) if name.startswith(prefix)]  # names only: no stat per shard
        except FileNotFoundError:
            return []
    if not _is_s3(fs):
        return [name for name in list_dir(fs, root) if name.startswith(prefix)]

    async def listing() -> list[str]:
        bucket, key, _ = fs.split_path(root)
        base = f"{key.rstrip('/')}/" if key else ""
        names, token = [], None
        while True:
            kw = {"ContinuationToken": token} if token else {}
            resp = await fs._call_s3("list_objects_v2", Bucket=bucket, Prefix=base + prefix, Delimiter="/", **kw)
            names += [obj["Key"][len(base) :] for obj in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return names
            token = resp["NextContinuationToken"]

    return fsspec.asyn.sync(fs.loop, listing)


def remove(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove the one file at ``path``, taken literally. ``fs.rm`` expands ``[``, ``*`` and ``?`` on
    object stores (s3fs), so a set at ``gen[1]`` removed ``gen1``'s file of the same name."""
    fs.rm_file(path)


def read_files(fs: fsspec.AbstractFileSystem, paths: list[str]) -> list[bytes | Exception]:
    """The bytes of each of ``paths`` (concurrently on object stores), or the exception its read
    raised, in order. Not ``fs.cat``: it expands ``[``, ``*`` and ``?`` in every path (locally too),
    so a set at ``gen[1]`` read ``gen1``'s files."""
    return fs.cat_ranges(paths, None, None, on_error="return") if paths else []


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    with open_atomic(fs, path) as f:
        f.write(data)


def write_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    write_bytes(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def check_writable(url: str) -> None:
    """Fail early, naming the URL, when an output location cannot be written (writes and removes a probe).
    The message never includes credentials: only the URL and the backend's error class and text."""
    try:
        fs, root = url_to_fs(url)
        if is_local(fs):
            fs.makedirs(root, exist_ok=True)
        probe = join(root, f".write-probe-{uuid.uuid4().hex[:8]}")
        fs.pipe_file(probe, b"ok")
        remove(fs, probe)
    except Exception as e:  # any backend error means: not writable
        raise StorageError(f"output {redact_url(url)} is not writable: {type(e).__name__}: {error_line(e)}") from None
