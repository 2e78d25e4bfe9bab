"""What scene inference leaves behind when something fails: a failed scene's work rasters and
temporaries (a killed actor runs no Python cleanup), a sink whose second raster cannot be created, a
record or an export whose write fails, and the listings s3fs caches for every SAFE folder it reads.
Real files throughout (tests/scenegen.py); a failure is forced only where it is what is under test."""

from __future__ import annotations

import pytest
import torch
from test_scene_many import OPTIONS, student  # noqa: F401 - the module's trained student fixture

from dakter_scale.scene import outputs
from dakter_scale.scene.many import RunSettings, predict_many
from dakter_scale.scene.predict import PredictOptions, Predictor
from dakter_scale.scene.read import SceneError, open_scene

from scenegen import DarkIsOil, draw_codes, info, sigma0_of, write_geotiff, write_safe


def test_a_failed_scene_loses_what_a_killed_writer_left_and_finished_scenes_keep_theirs(student, tmp_path):  # noqa: F811
    """An actor killed mid-scene runs no RasterSink.abort: its .work rasters and predict.json.tmp (and a
    storage temporary) stay. The run removes them from each scene that failed for good, keeps whatever
    else the folder holds, and never touches a finished scene."""
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_geotiff(scenes / "tile-0.tif", sigma0_of(draw_codes(160, 200)))
    (scenes / "broken.tif").write_bytes(b"II*\x00not a tiff at all")
    out = tmp_path / "out"
    run = lambda: predict_many(  # noqa: E731
        student, str(scenes), str(out), OPTIONS, settings=RunSettings(retries=0), use_ray=False, progress=False
    )
    assert list(run().failed) == ["broken"]
    finished = {p: p.stat().st_mtime_ns for p in (out / "tile-0").rglob("*")}
    assert (out / "tile-0" / outputs.RECORD) in finished
    left = out / "broken"
    (left / outputs.WORK).mkdir(parents=True)
    write_geotiff(left / outputs.WORK / outputs.PROBABILITIES, draw_codes(64, 64))
    (left / (outputs.RECORD + ".tmp")).write_text("{")
    (left / "item.json.tmp-0123456789ab").write_text("{")
    (left / "notes.txt").write_text("the operator's")
    again = run()
    assert again.skipped == ["tile-0"] and list(again.failed) == ["broken"]
    assert sorted(p.name for p in left.iterdir()) == ["notes.txt"]
    assert {p: p.stat().st_mtime_ns for p in (out / "tile-0").rglob("*")} == finished


def test_a_sink_whose_second_raster_cannot_be_created_leaves_no_work_folder(tmp_path, monkeypatch):
    import rasterio

    scene = write_geotiff(tmp_path / "scene.tif", draw_codes(128, 160))
    real_open = rasterio.open

    def no_class_raster(path, mode="r", *args, **kwargs):
        if mode == "w" and str(path).endswith(outputs.CLASSES_FILE):
            raise rasterio.errors.RasterioIOError("classes.tif: No space left on device")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", no_class_raster)
    with pytest.raises(rasterio.errors.RasterioIOError, match="No space left"):
        Predictor(DarkIsOil(), PredictOptions(tile=64, overlap=16), device="cpu", info=info())(
            str(scene), tmp_path / "out"
        )
    assert not (tmp_path / "out" / outputs.WORK).exists()


def test_a_record_that_cannot_be_written_leaves_no_temporary(tmp_path):
    (tmp_path / outputs.RECORD).mkdir()  # a folder in its place: the rename onto it fails
    with pytest.raises(IsADirectoryError):
        outputs.write_record(tmp_path, {"scene": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [outputs.RECORD]


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_that_fails_midway_leaves_no_partial_file(student, tmp_path, monkeypatch, fmt):  # noqa: F811
    """The exporter writes part of its file, then fails (a full disk): the partial file goes, and an
    earlier good export stays as it was."""
    from dakter_scale.scene import export

    if fmt == "onnx":
        pytest.importorskip("onnx")
    good = export.export_student(student, "torchscript", tmp_path / "s.model")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_written(path: str) -> None:
        with open(path, "wb") as f:
            f.write(b"half an export")
        raise OSError(28, "No space left on device")

    if fmt == "torchscript":
        traced = type("Traced", (), {"save": lambda self, path: half_written(path)})()
        monkeypatch.setattr(torch.jit, "trace", lambda *args, **kwargs: traced)
    else:
        monkeypatch.setattr(torch.onnx, "export", lambda model, args, path, **kwargs: half_written(path))
    with pytest.raises(OSError, match="No space left"):
        export.export_student(student, fmt, good)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_safe_scenes_read_from_s3_leave_no_listings_cached(tmp_path, s3_bucket):
    """s3fs keeps every listing on its one filesystem instance for the life of the process: a long run
    over SAFE folders cached four more folders per scene, for good. The cache stays the same size
    however many scenes are read, opened as a Predictor opens them or refused."""
    import fsspec

    fs = fsspec.filesystem("s3")
    safe = write_safe(tmp_path, draw_codes(96, 128), polarisations=("vv",))
    urls = []
    for i in range(5):
        urls.append(f"{s3_bucket}/scene-{i}/{safe.name}")
        fs.put(str(safe), urls[-1], recursive=True)
    fs.rm(f"{urls[4]}/manifest.safe")
    fs.invalidate_cache()
    sizes = []
    for url in urls[:3]:
        with open_scene(url) as scene:
            scene.read(0, 32, 0, 32)
        sizes.append(len(fs.dircache))
    record = Predictor(DarkIsOil(), PredictOptions(tile=64, overlap=16, quicklook=False), device="cpu", info=info())(
        urls[3], tmp_path / "out"
    )
    assert record["scene"]["kind"] == "safe"
    sizes.append(len(fs.dircache))
    with pytest.raises(SceneError, match="no manifest.safe"):
        open_scene(urls[4])
    sizes.append(len(fs.dircache))
    assert sizes == [sizes[0]] * len(sizes), sizes
    assert not [path for path in fs.dircache if ".SAFE" in path], sorted(fs.dircache)
