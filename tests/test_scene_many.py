"""Many scenes through synth's driver: in this process, and on a real local Ray cluster with two
actors. One result per scene, a rerun writes nothing, a corrupt scene is reported by name while the
others finish; and the deployment export (TorchScript, ONNX) reproduces the eager logits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from dakter_scale.scene.predict import PredictError, PredictOptions, RunSettings, list_scenes, predict_many

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
    assert [os.path.basename(u) for u in by_prefix] == ["S1A_IW_GRDH_1SDV_20260101T054512_20260101T054537_062000_07C0DE_ABCD.SAFE", "broken.tif", "tile-0.tif", "tile-1.tif", "tile-2.tif"]
    assert list_scenes(str(scenes / "tile-*.tif")) == [str(scenes / f"tile-{i}.tif") for i in range(3)]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# scenes\n{scenes / 'tile-1.tif'}\n\n{scenes / 'tile-0.tif'}\n")
    assert list_scenes(str(listing)) == [str(scenes / "tile-1.tif"), str(scenes / "tile-0.tif")]
    with pytest.raises(PredictError, match="no such glob match, folder or list file"):
        list_scenes(str(tmp_path / "nothing"))


def test_many_scenes_in_process_resume_and_report_a_corrupt_one(student, scenes, tmp_path):
    out = tmp_path / "out"
    summary = predict_many(student, str(scenes), str(out), OPTIONS, settings=RunSettings(retries=1), use_ray=False, progress=False)
    assert not summary.ok and list(summary.failed) == ["broken"] and "broken.tif" in summary.failed["broken"]
    assert [r["scene"] for r in summary.retried] == ["broken", "broken"]  # tried, retried, given up
    assert outputs(out) == sorted(summary.written) and len(summary.written) == 4
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/predict.json")}
    assert records["S1A_IW_GRDH_1SDV_20260101T054512_20260101T054537_062000_07C0DE_ABCD"]["scene"]["kind"] == "safe"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "predict_summary.json"}
    again = predict_many(student, str(scenes), str(out), OPTIONS, settings=RunSettings(retries=0), use_ray=False, progress=False)
    assert again.written == [] and len(again.skipped) == 4 and list(again.failed) == ["broken"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a rerun rewrote a finished scene"


@pytest.mark.slow  # like the other Ray tests: a local cluster and two actors take ~50 s on the shared CPU
def test_many_scenes_on_ray_actors(student, scenes, tmp_path):
    ray = pytest.importorskip("ray")
    (scenes / "broken.tif").unlink()
    (tmp_path / "bad.tif").write_bytes(b"II*\x00truncated")
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join([*(str(scenes / f"tile-{i}.tif") for i in range(3)), str(tmp_path / "bad.tif")]) + "\n")
    out = tmp_path / "out"
    try:
        summary = predict_many(student, str(listing), str(out), OPTIONS, settings=RunSettings(actors=2, retries=0), use_ray=True, progress=False)
    finally:
        ray.shutdown()
    assert summary.strategy["strategy"] == "ray" and summary.strategy["actors"] == 2
    assert sorted(summary.written) == ["tile-0", "tile-1", "tile-2"] and outputs(out) == ["tile-0", "tile-1", "tile-2"]
    assert list(summary.failed) == ["bad"] and "bad.tif" in summary.failed["bad"]
    assert len({a["pid"] for a in summary.strategy["actors_started"]}) == 2  # one model load per actor


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
