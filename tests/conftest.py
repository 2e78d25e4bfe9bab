"""Shared fixtures: a real S3 API server on loopback (moto's ThreadedMotoServer) reached through s3fs,
as s3fs's own test suite does; quiet progress bars; the repository root; one temp folder per session."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DAKTER_PROGRESS", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session; sets the AWS_* environment so that
    s3fs (and subprocesses: jobs, Ray workers) reach it with plain s3:// URLs."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; returns its s3:// URL. fsspec's instance cache is cleared so no stale listing leaks."""
    import fsspec
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    yield f"s3://{name}"
    s3fs.S3FileSystem.clear_instance_cache()


def job(name: str) -> list[str]:
    """argv prefix to run a job script with this interpreter."""
    return [sys.executable, str(ROOT / "jobs" / name)]


def synthesize_in_process(argv: list[str], capsys, monkeypatch, sampling_allowed: bool = False):
    """jobs/synthesize.py's main() in this process (no interpreter start-up): (exit status, captured
    output). Unless allowed, no worker may start: a check that should refuse before any work fails the
    test if sampling begins. Not for --json, which moves file descriptor 1 (a subprocess test does that)."""
    from dakter_scale.synth import run as synth_run

    def no_worker(*args, **kwargs):
        raise AssertionError("a worker started")

    if not sampling_allowed:
        monkeypatch.setattr(synth_run, "run_tasks", no_worker)
    return job_in_process("synthesize.py", argv, capsys, monkeypatch)


def job_in_process(name: str, argv: list[str], capsys, monkeypatch):
    """A job's main() in this process, as `python jobs/NAME ARGV` runs it but without an interpreter's
    start-up: (exit status, captured output)."""
    import runpy

    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "jobs" / name), run_name="job")["main"]()  # not __main__: script() exits
    return exit_.value.code, capsys.readouterr()


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    """The tiny joint model of the synthesis tests (test_synth.tiny_model: trained once per session)."""
    from test_synth import tiny_model

    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="session", autouse=True)
def _one_temp_folder(tmp_path_factory):
    """What the suite's processes put in the temp dir outside any tmp_path (Ray's sessions, torchrun's
    logs, multiprocessing's folders, in this process and the jobs it starts) goes into one folder, removed
    at the end: CI shares its disk. pytest's own folders stay where they are (failed tests' are kept)."""
    tmp_path_factory.getbasetemp()
    scratch = tempfile.mkdtemp(prefix="dk-")  # short: Ray's socket paths under it must stay under 108 bytes
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"], tempfile.tempdir = scratch, None
    yield
    if before is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before
    tempfile.tempdir = None
    for _ in range(5):  # a Ray process still stopping may write its session folder again for a moment
        shutil.rmtree(scratch, ignore_errors=True)
        time.sleep(1)
        if not os.path.exists(scratch):
            break


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The in-process writer sets torch's thread count (as an actor would); give it back after each test."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
