"""Durability of local writes: every file is fsynced before its rename and the folder after it, so a
shard's done marker is only written once its tar and manifest are on the disk."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
from pathlib import Path
from unittest import mock

import pytest
from test_synth import tiny_model

from dakter_scale.data.shardset import ShardSet

from conftest import job
from shardgen import job_env, write_dataset


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
        "shard-000000.tar.tmp",
        "FOLDER",
        "shard-000000.parquet.tmp",
        "FOLDER",
        "shard-000000.json.tmp",
        "FOLDER",  # the marker, last of the shard
        "dataset.json.tmp",
        "FOLDER",
    ]


def test_a_file_system_without_fsync_still_writes(tmp_path):
    """Where fsync is refused (some network or FUSE file systems), writing goes on: durability is best effort."""
    import fsspec

    from dakter_scale.data import storage

    with mock.patch("os.fsync", side_effect=OSError(22, "Invalid argument")):
        storage.write_json(fsspec.filesystem("file"), str(tmp_path / "x.json"), {"a": 1})
    assert (tmp_path / "x.json").read_text().strip().startswith("{")


@pytest.mark.slow  # ~16 s: a synthesis run under a file-size limit, then its rerun
@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_a_full_disk_fails_shards_cleanly_and_a_rerun_completes(tmp_path_factory, tmp_path):
    """A disk that fills up, as a file-size limit on the job's process (RLIMIT_FSIZE with SIGXFSZ
    ignored: every write past the limit fails with EFBIG, as a full disk fails with ENOSPC)."""
    model = tiny_model(tmp_path_factory)
    out = tmp_path / "out"

    def synthesize_to(folder):
        return job("synthesize.py") + [
            "--model",
            model,
            "--out",
            str(folder),
            "--n",
            "9",
            "--samples-per-shard",
            "4",
            "--steps",
            "3",
            "--actors",
            "0",
        ]

    argv = synthesize_to(out)

    def full_disk(limit: int):
        def limit_file_size():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return limit_file_size

    # shards of 4 pairs (~30 kB) do not fit, the last one of 1 pair does
    full = subprocess.run(
        argv,
        env=job_env(PYTHONDONTWRITEBYTECODE="1"),
        preexec_fn=full_disk(20_000),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert full.returncode == 1 and "Traceback" not in full.stderr
    assert (
        "shard 0: StorageError: writing" in full.stdout + full.stderr and "(the disk or quota is full)" in full.stderr
    )
    assert sorted(i.shard for i in ShardSet(str(out)).done()) == [2]  # what fitted is finished
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]  # nothing partial is left
    assert not ShardSet(str(out)).info().complete
    # not even dataset.json fits: one line, exit 2
    tiny = subprocess.run(
        synthesize_to(tmp_path / "other"),
        env=job_env(PYTHONDONTWRITEBYTECODE="1"),
        preexec_fn=full_disk(500),
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in tiny.stderr.splitlines() if line.startswith("error:")]
    assert (
        tiny.returncode == 2
        and len(errors) == 1
        and "dataset.json failed" in errors[0]
        and "Traceback" not in tiny.stderr
    )
    # space freed: the rerun writes only what is missing
    rerun = subprocess.run(argv + ["--json"], env=job_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert sorted(summary["written"]) == [0, 1] and summary["skipped"] == [2]
    assert ShardSet(str(out)).info().complete and ShardSet(str(out)).info().count == 9
