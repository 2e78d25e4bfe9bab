"""Durability of local writes: every file is fsynced before its rename and the folder after it, so a
shard's done marker is only written once its tar and manifest are on the disk."""

from __future__ import annotations

import os
import re
from pathlib import Path
from unittest import mock

import pytest

from shardgen import write_dataset


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names synced descriptors through /proc")
def test_a_shard_is_synced_file_by_file_before_its_marker(tmp_path):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    out = tmp_path / "shards"
    with mock.patch("os.fsync", recording_fsync):
        write_dataset(str(out), [3], size=16)
    names = [re.sub(r"\.tmp-[0-9a-f]{12}$", ".tmp", Path(p).name) if p != str(out) else "FOLDER" for p in synced]
    assert names == [
        "shard-000000.tar.tmp", "FOLDER",
        "shard-000000.parquet.tmp", "FOLDER",
        "shard-000000.json.tmp", "FOLDER",  # the marker, last of the shard
        "dataset.json.tmp", "FOLDER",
    ]


def test_a_file_system_without_fsync_still_writes(tmp_path):
    """Where fsync is refused (some network or FUSE file systems), writing goes on: durability is best effort."""
    import fsspec

    from dakter_scale.data import storage

    with mock.patch("os.fsync", side_effect=OSError(22, "Invalid argument")):
        storage.write_json(fsspec.filesystem("file"), str(tmp_path / "x.json"), {"a": 1})
    assert (tmp_path / "x.json").read_text().strip().startswith("{")
