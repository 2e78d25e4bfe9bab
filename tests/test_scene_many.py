"""Many scenes through synth's driver: in this process, on a real local Ray cluster with two
actors, and as a `ray job submit` entrypoint on a local head. One result per scene, a rerun writes nothing, a corrupt scene is reported by name while the
others finish; and the deployment export (TorchScript, ONNX) reproduces the eager logits."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dakter_scale.scene.many import RunSettings, list_scenes, predict_many
from dakter_scale.scene.outputs import RECORD
from dakter_scale.scene.predict import PredictError, PredictOptions

from conftest import ROOT, _free_port
from scenegen import draw_codes, sigma0_of, write_geotiff, write_safe
from shardgen import TINY_STUDENT

OPTIONS = PredictOptions(tile=128, overlap=16, pixel_spacing=10.0, quicklook=False)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from dakter_scale.config import load_config
    from dakter_scale.student.train import train_student

    cfg = load_config(None, [*TINY_STUDENT, "student.max_steps=1", "student.ratio=0"])
    return str(train_student(cfg, tmp_path_factory.mktemp("student") / "s", progress=False))


@pytest.fixture
def scenes(tmp_path):
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(3):
        write_geotiff(folder / f"tile-{i}.tif", sigma0_of(draw_codes(160, 200, seed=i)))
    write_safe(folder, draw_codes(120, 150))
    (folder / "broken.tif").write_bytes(b"II*\x00not a tiff at all")
    (folder / "notes.txt").write_text("not a scene")
    return folder


def outputs(out):
    return sorted(p.parent.name for p in out.glob("*/predict.json"))


def test_list_scenes_from_a_glob_a_list_file_and_a_prefix(scenes, tmp_path):
    by_prefix = list_scenes(str(scenes))
    assert [os.path.basename(u) for u in by_prefix] == [
        "S1A_IW_GRDH_1SDV_20260101T054512_20260101T054537_062000_07C0DE_ABCD.SAFE",
        "broken.tif",
        "tile-0.tif",
        "tile-1.tif",
        "tile-2.tif",
    ]
    assert list_scenes(str(scenes / "tile-*.tif")) == [str(scenes / f"tile-{i}.tif") for i in range(3)]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scenes\n{scenes / 'tile-1.tif'}\n\n{scenes / 'tile-0.tif'}\n")
    assert list_scenes(str(listing)) == [str(scenes / "tile-1.tif"), str(scenes / "tile-0.tif")]
    with pytest.raises(PredictError, match="no such glob match, folder or list file"):
        list_scenes(str(tmp_path / "nothing"))


def test_many_scenes_in_process_resume_and_report_a_corrupt_one(student, scenes, tmp_path):
    out = tmp_path / "out"
    summary = predict_many(
        student, str(scenes), str(out), OPTIONS, settings=RunSettings(retries=1), use_ray=False, progress=False
    )
    assert not summary.ok and list(summary.failed) == ["broken"] and "broken.tif" in summary.failed["broken"]
    assert [r["scene"] for r in summary.retried] == ["broken", "broken"]  # tried, retried, given up
    assert outputs(out) == sorted(summary.written) and len(summary.written) == 4
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/predict.json")}
    assert records["S1A_IW_GRDH_1SDV_20260101T054512_20260101T054537_062000_07C0DE_ABCD"]["scene"]["kind"] == "safe"
    # The run's lease (out/lock-NNNNNN.json) is the run's own: each run takes the next generation.
    assert [p.name for p in out.glob("lock-*.json")] == ["lock-000001.json"]
    stamps = {
        p: p.stat().st_mtime_ns
        for p in out.rglob("*")
        if p.is_file() and p.name != "predict_summary.json" and not p.name.startswith("lock-")
    }
    again = predict_many(
        student, str(scenes), str(out), OPTIONS, settings=RunSettings(retries=0), use_ray=False, progress=False
    )
    assert again.written == [] and len(again.skipped) == 4 and list(again.failed) == ["broken"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a rerun rewrote a finished scene"
    # Other options (or another student) into the same --out: skipping would report another run's results.
    with pytest.raises(PredictError, match=r"S1A_IW.* was predicted with other options .*give another --out"):
        predict_many(
            student, str(scenes), str(out), replace(OPTIONS, seed_threshold=0.9), use_ray=False, progress=False
        )


@pytest.mark.slow  # like the other Ray tests: a local cluster and two actors take ~50 s on the shared CPU
def test_many_scenes_on_ray_actors(student, scenes, tmp_path):
    ray = pytest.importorskip("ray")
    (scenes / "broken.tif").unlink()
    (tmp_path / "bad.tif").write_bytes(b"II*\x00truncated")
    listing = tmp_path / "list.txt"
    listing.write_text(
        "\n".join([*(str(scenes / f"tile-{i}.tif") for i in range(3)), str(tmp_path / "bad.tif")]) + "\n"
    )
    out = tmp_path / "out"
    copies = set(Path(tempfile.gettempdir()).glob("dakter-model-*"))
    try:
        summary = predict_many(
            student,
            str(listing),
            str(out),
            OPTIONS,
            settings=RunSettings(actors=2, retries=0),
            use_ray=True,
            progress=False,
        )
    finally:
        ray.shutdown()
    # the student travelled through the object store: each actor's unpacked copy is removed once loaded,
    # and the records name the folder the run was given
    assert set(Path(tempfile.gettempdir()).glob("dakter-model-*")) <= copies
    record = json.loads((out / "tile-0" / RECORD).read_text())
    assert record["student"]["folder"] == str(student)
    assert summary.strategy["strategy"] == "ray" and summary.strategy["actors"] == 2
    assert sorted(summary.written) == ["tile-0", "tile-1", "tile-2"] and outputs(out) == ["tile-0", "tile-1", "tile-2"]
    assert list(summary.failed) == ["bad"] and "bad.tif" in summary.failed["bad"]
    assert len({a["pid"] for a in summary.strategy["actors_started"]}) == 2  # one model load per actor


@contextlib.contextmanager
def ray_head():
    """A `ray start --head` with the job server (dashboard) in a private temp dir, as in
    bench/ray_job_check.sh: token authentication on with its own token file, free ports, stopped by its
    process id (never `ray stop`, which stops every Ray cluster on the machine). Yields (job server
    address, GCS port, the environment a client needs, the ray CLI)."""
    work = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths must stay under 108 bytes
    token = os.path.join(work, "auth_token")
    with open(os.open(token, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token)
    env.pop("RAY_ADDRESS", None)
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    gcs, dash, *ports = (_free_port() for _ in range(7))
    flags = [
        "--port",
        gcs,
        "--dashboard-port",
        dash,
        "--ray-client-server-port",
        ports[0],
        "--dashboard-agent-listen-port",
        ports[1],
        "--dashboard-agent-grpc-port",
        ports[2],
        "--runtime-env-agent-port",
        ports[3],
        "--metrics-export-port",
        ports[4],
    ]
    log = open(os.path.join(work, "head.log"), "w")
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            "--block",
            f"--temp-dir={work}/ray",
            "--num-cpus=2",
            "--disable-usage-stats",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            *map(str, flags),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 240
        while (
            subprocess.run([ray_cli, "job", "list", "--address", address], env=env, capture_output=True).returncode != 0
        ):
            assert head.poll() is None and time.time() < deadline, (
                "ray start --head failed:\n" + open(os.path.join(work, "head.log")).read()[-4000:]
            )
            time.sleep(1)
        yield address, gcs, env, ray_cli
    finally:
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow  # a head with its job server, then a job that starts two actors: ~2 min on the shared CPU
def test_predict_scenes_as_a_ray_job_submit_entrypoint(student, tmp_path):
    """docs/inference.md's command: the repository uploaded as the job's working dir, the job's driver
    connects to the head it was submitted to (RAY_ADDRESS, set by the job server) and not to a cluster
    of its own, two actors, one result per scene."""
    pytest.importorskip("ray")
    folder = tmp_path / "scenes"
    folder.mkdir()
    for i in range(2):
        write_geotiff(folder / f"scene-{i}.tif", sigma0_of(draw_codes(160, 200, seed=i)))
    out = tmp_path / "out"
    runtime_env = {"excludes": [".git", ".venv", "runs"], "env_vars": {"DAKTER_PROGRESS": "0"}}
    with ray_head() as (address, gcs, env, ray_cli):
        submitted = subprocess.run(
            [
                ray_cli,
                "job",
                "submit",
                "--address",
                address,
                "--submission-id",
                "predict-check",
                "--working-dir",
                str(ROOT),
                "--runtime-env-json",
                json.dumps(runtime_env),
                "--",
                sys.executable,
                "jobs/predict.py",
                "--student",
                student,
                "--scenes",
                str(folder / "*.tif"),
                "--out",
                str(out),
                "--tile",
                "128",
                "--overlap",
                "16",
                "--pixel-spacing",
                "10",
                "--no-quicklook",
                "--actors",
                "2",
                "--retries",
                "0",
                "--json",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        logs = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, logs[-4000:]
        status = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from ray.job_submission import JobSubmissionClient as C; print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)",
                address,
                "predict-check",
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        assert status.stdout.strip() == "SUCCEEDED", (status.stdout + status.stderr)[-2000:]
    summary = json.loads(next(line for line in logs.splitlines() if line.startswith("{") and '"written"' in line))
    assert (
        summary["ok"]
        and sorted(summary["written"]) == ["scene-0", "scene-1"]
        and outputs(out) == ["scene-0", "scene-1"]
    )
    # The GCS port was picked here and given to the head: a cluster started by the job would have another.
    assert summary["strategy"]["ray"].rsplit(":", 1)[-1] == str(gcs), (
        f"the job did not run on the head it was submitted to: {summary['strategy']}"
    )
    assert summary["strategy"]["actors"] == 2


# -- export ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_student_logits_equal_the_eager_ones(student, tmp_path, fmt):
    """Tolerance: 1e-4 absolute on logits (float32 kernels differ in summation order between runtimes)."""
    from dakter_scale.scene.export import EXPORT_ATOL, export_student, run_exported
    from dakter_scale.student.models import load_student

    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    path = export_student(student, fmt, tmp_path / f"student.{'pt' if fmt == 'torchscript' else 'onnx'}")
    model, _ = load_student(student)
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 1, 64, 64), (3, 1, 96, 128)):
        x = torch.rand(shape, generator=g) * 2 - 1
        with torch.no_grad():
            eager = model(x).numpy()
        exported = run_exported(path, x.numpy())
        assert exported.shape == eager.shape and np.abs(exported - eager).max() <= EXPORT_ATOL


def test_the_format_is_the_flags_and_a_failed_reexport_keeps_the_good_one(student, tmp_path, monkeypatch):
    """--format onnx into s.model ran the check as TorchScript (and deleted a good export); a re-export
    that fails its check left the earlier file deleted and its sidecar claiming a pass."""
    from dakter_scale.scene import export

    pytest.importorskip("onnxruntime")
    path = export.export_student(student, "onnx", tmp_path / "s.model")
    assert path.is_file() and json.loads((tmp_path / "s.model.json").read_text())["format"] == "onnx"
    good, sidecar = path.read_bytes(), (tmp_path / "s.model.json").read_text()
    monkeypatch.setattr(export, "EXPORT_ATOL", -1.0)  # no export can pass
    with pytest.raises(export.ExportError, match=r"s\.model: exported logits differ .* not written"):
        export.export_student(student, "onnx", tmp_path / "s.model")
    assert path.read_bytes() == good and (tmp_path / "s.model.json").read_text() == sidecar
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.model", "s.model.json"]


def test_an_export_that_fails_its_check_is_removed_with_one_line(tmp_path):
    """check_export against a file of other logits, or of another output shape: one line naming the
    file, and the file is gone (a half-checked export is never left to be deployed)."""
    from dakter_scale.scene.export import ExportError, check_export

    class Scale(torch.nn.Module):
        def __init__(self, factor: float, classes: int = 2):
            super().__init__()
            self.factor, self.classes = factor, classes

        def forward(self, x):
            return torch.cat([x * self.factor] * self.classes, dim=1)

    x = torch.zeros(1, 1, 64, 64)
    for name, exported, message in (
        ("other.pt", Scale(2.0), r"exported logits differ from the eager model's by .* not written"),
        ("shape.pt", Scale(1.0, classes=3), r"exported model gives \(1, 3, 64, 64\) .* not written"),
    ):
        path = tmp_path / name
        torch.jit.trace(exported, x).save(str(path))
        with pytest.raises(ExportError, match=message):
            check_export(Scale(1.0), path)
        assert not path.exists()
