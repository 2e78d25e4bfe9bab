"""storage.open_atomic on backends that are neither local nor an object store (sftp, ftp, webdav, smb,
memory, ...): a file written there is visible, partial, while it is written, so open_atomic writes a
temporary beside it and renames it after close; remove_temporaries clears what killed writers left.
Object stores keep their direct writes (tests/test_synth.py::test_s3_unfinished_multipart_upload_is_invisible)."""

from __future__ import annotations

import datetime
import types
import uuid

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from dakter_scale.data import storage
from dakter_scale.data.shardset import ShardSet


class RemoteDiskFileSystem(LocalFileSystem):
    """A local disk under another protocol: writes land in place as they are made (as on sftp or smb),
    and it is neither local to storage.is_local nor an object store."""

    protocol = ("testremote",)
    root_marker = "/"

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith("testremote://"):
            path = path[len("testremote://") :]
        return super()._strip_protocol(path)


class NoReplaceMemoryFileSystem(MemoryFileSystem):
    """A memory file system whose own rename refuses an existing name, as SMB's does."""

    protocol = ("testnoreplace",)

    def mv(self, path1, path2, **kwargs):
        if self.exists(path2):
            raise FileExistsError(path2)
        self.cp_file(path1, path2)
        self.rm_file(path1)


fsspec.register_implementation("testremote", RemoteDiskFileSystem, clobber=True)
fsspec.register_implementation("testnoreplace", NoReplaceMemoryFileSystem, clobber=True)


@pytest.fixture(params=["memory", "remote-disk", "no-replace"])
def where(request, tmp_path):
    """(file system, a folder in it) for each kind of non-local, non-object-store backend."""
    if request.param == "remote-disk":
        return RemoteDiskFileSystem(), str(tmp_path)
    fs = MemoryFileSystem() if request.param == "memory" else NoReplaceMemoryFileSystem()
    return fs, f"/{request.param}-{uuid.uuid4().hex[:8]}"


def _names(fs, folder):
    return sorted(storage.list_dir(fs, folder))


def test_the_backends_are_told_apart():
    def kind(*protocols):
        return types.SimpleNamespace(protocol=protocols if len(protocols) > 1 else protocols[0])

    for store in (kind("s3", "s3a"), kind("gs", "gcs"), kind("abfs", "az", "abfss")):
        assert storage.is_object_store(store) and not storage.leaves_temporaries(store)
    for other in (kind("sftp", "ssh"), kind("ftp"), kind("webdav", "dav"), kind("smb"), kind("memory"), kind("hdfs")):
        assert not storage.is_object_store(other) and storage.leaves_temporaries(other)
    assert storage.leaves_temporaries(kind("file", "local"))


def test_a_writer_that_dies_mid_write_leaves_nothing_at_the_final_name(where):
    fs, folder = where
    path = storage.join(folder, "shard-000001.tar")
    with pytest.raises(RuntimeError, match="killed"):
        with storage.open_atomic(fs, path) as f:
            f.write(b"half a shard")
            f.flush()
            # what a writer killed outright (kill -9, a lost node) leaves: a temporary, no final name
            names = _names(fs, folder)
            assert not fs.exists(path) and len(names) == 1 and storage.TEMP_RE.search(names[0]), names
            raise RuntimeError("killed")
    assert not fs.exists(path) and _names(fs, folder) == []  # the temporary is removed too


def test_a_finished_write_replaces_the_old_file_only_once_whole(where):
    fs, folder = where
    path = storage.join(folder, "dataset.json")
    storage.write_bytes(fs, path, b"old")
    with storage.open_atomic(fs, path) as f:
        f.write(b"new, ")
        f.flush()
        assert fs.cat_file(path) == b"old"  # a reader meanwhile sees the old file whole
        f.write(b"whole")
    assert fs.cat_file(path) == b"new, whole" and _names(fs, folder) == ["dataset.json"]


def test_a_set_at_a_glob_like_path_renames_its_own_file(tmp_path):
    """fsspec's generic mv copies through expand_path ([, * and ? are patterns): the one file is
    renamed literally, and the neighbour whose name the pattern matches is untouched."""
    fs = MemoryFileSystem()
    base = f"/glob-{uuid.uuid4().hex[:8]}"
    storage.write_bytes(fs, f"{base}/gen1/x.json", b"neighbour")
    storage.write_bytes(fs, f"{base}/gen[1]/x.json", b"own")
    assert fs.cat_file(f"{base}/gen[1]/x.json") == b"own" and fs.cat_file(f"{base}/gen1/x.json") == b"neighbour"
    assert _names(fs, f"{base}/gen[1]") == ["x.json"] and _names(fs, f"{base}/gen1") == ["x.json"]


def test_remove_temporaries_clears_what_killed_writers_left_on_such_a_backend():
    """ShardSet.remove_temporaries runs on every backend open_atomic renames on (it returned nothing
    off a local disk): dead temporaries go, a fresh one is spared under min_age, other names stay.
    memory:// reports a creation datetime, not an mtime: the age is read from it."""
    url = f"memory://set-{uuid.uuid4().hex[:8]}"
    out = ShardSet(url)
    dead, fresh = out.path("shard-000001.tar.tmp-0123456789ab"), out.path("shard-000002.tar.tmp-ba9876543210")
    other = out.path("notes.txt.tmp-0123456789ab")
    for p in (dead, fresh, other):
        out.fs.pipe_file(p, b"half")
    out.fs.store[out.fs._strip_protocol(dead)].created = datetime.datetime.now(datetime.timezone.utc) - (
        datetime.timedelta(hours=2)
    )
    assert out.remove_temporaries(min_age=3600) == ["shard-000001.tar.tmp-0123456789ab"]
    assert out.remove_temporaries() == ["shard-000002.tar.tmp-ba9876543210"]
    assert sorted(out.listing()) == ["notes.txt.tmp-0123456789ab"]


def test_modification_times_are_read_whatever_the_backend_calls_them():
    t = 1_700_000_000.0
    utc = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    for entry in (
        {"mtime": t},
        {"modified": utc},
        {"modified": utc.replace(tzinfo=None)},  # naive: read as UTC
        {"LastModified": utc.isoformat()},
        {"modify": utc.strftime("%Y%m%d%H%M%S")},  # ftp's MLSD
        {"created": utc},
    ):
        assert storage._modified(entry) == t, entry
    assert storage._modified({"mtime": True}) is None and storage._modified({"size": 3}) is None
