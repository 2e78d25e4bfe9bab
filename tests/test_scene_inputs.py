"""Scene inference: radiometric conventions and scale, hysteresis, hostile and bad inputs (one line,
exit 2, naming the file or flag), and one real trained student end to end through jobs/predict.py."""

from __future__ import annotations

import json
import re
import subprocess
import zipfile

import numpy as np
import pytest

from dakter_scale.data.osd import DB_MAX, DB_MIN, uint8_to_linear
from dakter_scale.scene.predict import PredictError, PredictOptions, Predictor
from dakter_scale.scene.radiometry import (
    RadiometryError,
    db_to_codes,
    default_convention,
    lut_at,
    plan_conversion,
    plan_scale,
    sigma0_to_db,
    to_codes,
)
from dakter_scale.scene.read import SceneError, open_scene
from dakter_scale.scene.vectorise import VectoriseOptions, find_slicks, hysteresis

from conftest import job
from scenegen import DarkIsOil, draw_codes, info, sigma0_of, write_geotiff, write_raster, write_safe, zip_folder
from shardgen import TINY_STUDENT

SIM = {"kind": "sigma0_db8", "db_min": DB_MIN, "db_max": DB_MAX}

# -- radiometry and scale ------------------------------------------------------------------------------


def test_every_code_survives_sigma0_and_db_and_back():
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(db_to_codes(sigma0_to_db(uint8_to_linear(codes)), (DB_MIN, DB_MAX)), codes)
    conv = plan_conversion("sigma0", False, SIM)
    assert np.array_equal(to_codes(uint8_to_linear(codes).astype(np.float32), conv), codes)


def test_dn_calibration_by_hand():
    # sigma0 = DN^2 / A^2: DN 100, A 1000 -> 0.01 -> -20 dB -> (15 / 40) * 255 = 95.6 -> 96.
    conv = plan_conversion("dn", True, SIM)
    assert to_codes(np.array([[100]], dtype=np.uint16), conv, np.array([[1000.0]]))[0, 0] == 96
    assert "calibration LUT" in conv.steps[0]


def test_lut_is_bilinear_between_vectors():
    lines, pixels = np.array([0.0, 10.0]), np.array([0.0, 100.0])
    values = np.array([[1.0, 3.0], [5.0, 7.0]])
    out = lut_at(lines, pixels, values, np.array([0.0, 5.0, 10.0, 20.0]), np.array([0.0, 50.0, 100.0]))
    assert np.allclose(out, [[1, 2, 3], [3, 4, 5], [5, 6, 7], [5, 6, 7]])  # edge values hold outside


def test_conventions_recorded_defaulted_and_refused():
    assert default_convention({"real": "synthetic:64"}) == SIM  # an old folder trained on the simulator
    assert default_convention({"real": "osd:/data/osd"}) == {"kind": "db8"}
    with pytest.raises(RadiometryError, match="unknown radiometric convention"):
        default_convention({"radiometry": {"kind": "gamma0_linear"}})
    with pytest.raises(
        RadiometryError,
        match=r"sigma0.*8-bit dB-scaled images as delivered.*--db-window MIN,MAX.*--allow-radiometry-mismatch",
    ):
        plan_conversion("sigma0", False, {"kind": "db8"})
    assert plan_conversion("sigma0", False, {"kind": "db8"}, db_window=(-30.0, 0.0)).window == (-30.0, 0.0)
    for bad in ((5.0, -35.0), (float("nan"), 5.0), (float("-inf"), 5.0)):  # -inf: every code NaN, then 0
        with pytest.raises(RadiometryError, match=r"--db-window needs finite MIN < MAX"):
            plan_conversion("sigma0", False, SIM, db_window=bad)
    with pytest.raises(RadiometryError, match="without a calibration LUT"):
        plan_conversion("dn", False, SIM)
    assert "DN^2" in plan_conversion("dn", False, SIM, allow_mismatch=True).notes[0]


def test_scale_follows_the_training_pixel_spacing():
    student = {"resolution": 64, "crop": 128, "pixel_spacing_m": 10.0}
    s = plan_scale(10.0, student)  # crops of 128 px resized to 64: the student saw 20 m pixels
    assert s.factor == 2.0 and s.model_spacing_m == 20.0
    assert plan_scale(40.0, {"resolution": 64, "crop": 0}, pixel_spacing=20.0).factor == 0.5
    unknown = plan_scale(10.0, {"resolution": 64, "crop": 0})
    assert unknown.factor == 1.0 and "--pixel-spacing" in unknown.notes[0]


def test_a_coarser_student_sees_a_resampled_scene_and_polygons_stay_put(tmp_path):
    """Scene at 10 m, student trained at 20 m: the model grid has half the pixels per side and the
    slicks keep their place and area. Area within 7 %: GDAL averages linear sigma-nought (the multilook
    average of intensity), so a 20 m pixel half oil, half sea is 3 dB below the sea and reads as sea; a dark
    slick can lose up to half a model pixel (10 m) around its outline: 6.2 % of the smallest ellipse (12 x 40 px)."""
    codes = draw_codes()
    scene = write_geotiff(tmp_path / "s.tif", sigma0_of(codes))
    fine = Predictor(DarkIsOil(), PredictOptions(tile=256, overlap=32), device="cpu", info=info(10.0))(
        str(scene), tmp_path / "fine"
    )
    coarse = Predictor(DarkIsOil(), PredictOptions(tile=128, overlap=16), device="cpu", info=info(20.0))(
        str(scene), tmp_path / "coarse"
    )
    assert coarse["conventions"]["scale"]["factor"] == 2.0 and coarse["conventions"]["grid"] == {
        "height": 300,
        "width": 400,
    }
    a = json.loads((tmp_path / "fine" / "slicks.geojson").read_text())["features"]
    b = json.loads((tmp_path / "coarse" / "slicks.geojson").read_text())["features"]
    assert fine["slicks"] == coarse["slicks"] == 3
    for fa, fb in zip(
        sorted(a, key=lambda f: f["properties"]["centroid"]), sorted(b, key=lambda f: f["properties"]["centroid"])
    ):
        assert np.allclose(fa["properties"]["centroid"], fb["properties"]["centroid"], atol=2e-4)  # ~15 m
        assert fb["properties"]["area_m2"] == pytest.approx(fa["properties"]["area_m2"], rel=0.07)


def test_degree_pixels_at_60_north_are_resampled_per_axis_to_square_model_pixels(tmp_path):
    """A disc of 300 m radius on the ground, in a scene of square-degree pixels at 60 N (11.1 x 5.6 m):
    the model grid has square 10 m pixels (factors ~0.9 down a column, ~1.8 along a row), so the disc is
    round for the student and holds pi * 30^2 model pixels. One mean factor would have made it a 2:1
    ellipse of 12 % more pixels."""
    from rasterio.transform import from_origin

    h, w, step = 120, 240, 1e-4
    rows, cols = np.mgrid[0:h, 0:w]
    transform = from_origin(10.0, 60.006, step, step)
    path = write_raster(tmp_path / "degrees.tif", np.zeros((h, w), dtype=np.float32), "EPSG:4326", transform)
    with open_scene(path) as scene:
        dy, dx = scene.ground_spacing()
    inside = ((rows + 0.5 - h / 2) * dy) ** 2 + ((cols + 0.5 - w / 2) * dx) ** 2 <= 300.0**2
    write_raster(path, sigma0_of(np.where(inside, 60, 170).astype(np.uint8)), "EPSG:4326", transform)
    record = Predictor(DarkIsOil(), PredictOptions(tile=128, overlap=16), device="cpu", info=info(10.0))(
        str(path), tmp_path / "out"
    )
    scale, grid = record["conventions"]["scale"], record["conventions"]["grid"]
    assert scale["factors"] == pytest.approx([10.0 / dy, 10.0 / dx])
    assert grid == {"height": round(h * dy / 10.0), "width": round(w * dx / 10.0)}
    (slick,) = json.loads((tmp_path / "out" / "slicks.geojson").read_text())["features"]
    assert slick["properties"]["pixel_count"] == pytest.approx(np.pi * 30.0**2, rel=0.05)
    assert slick["properties"]["area_m2"] == pytest.approx(np.pi * 300.0**2, rel=0.05)


def test_a_safe_product_with_unequal_annotated_spacings_is_resampled_per_axis(tmp_path):
    """Azimuth pixels of 20 m and range pixels of 10 m, as annotated: a 10 m student's grid doubles the
    rows (each 20 m row becomes two 10 m ones) and keeps the columns; the annotation sets this, not the grid."""
    codes = draw_codes()[:300, :400]
    safe = write_safe(tmp_path, codes, polarisations=("vv",), spacing=(20.0, 10.0))
    record = Predictor(DarkIsOil(), PredictOptions(tile=128, overlap=16), device="cpu", info=info(10.0))(
        str(safe), tmp_path / "out"
    )
    assert record["conventions"]["scale"]["factors"] == [0.5, 1.0]
    assert record["conventions"]["grid"] == {"height": 600, "width": 400}
    assert any(
        "pixels are 20 x 10 m (rows x columns), not square: resampled" in n
        for n in record["conventions"]["scale"]["notes"]
    )


def test_a_geolocation_grid_places_pixels_between_its_points_at_high_latitude(tmp_path):
    """A GRD-like footprint of 250 x 167 km at 70 N with a 10 x 21 geolocation grid (as an IW annotation
    has): pixels between the grid's points land within metres of the truth. GDAL's default least-squares
    polynomial put them a median 30 m off there (bench/gcp_accuracy.py); the thin-plate spline follows
    the grid."""
    from pyproj import Geod
    from rasterio.control import GroundControlPoint

    from scenegen import track_lonlat

    lines, samples, spacing = 250, 167, 1000.0  # the IW footprint in 1 km pixels
    R, C = np.meshgrid(np.linspace(0, lines - 1, 10), np.linspace(0, samples - 1, 21), indexing="ij")
    lon, lat = track_lonlat(70.0, -12.0, R + 0.5, C + 0.5, lines, samples, spacing)
    gcps = [
        GroundControlPoint(row=r + 0.5, col=c + 0.5, x=x, y=y, z=0.0)
        for r, c, x, y in zip(R.ravel(), C.ravel(), lon.ravel(), lat.ravel())
    ]
    path = write_raster(tmp_path / "grid.tif", np.full((lines, samples), 0.05, dtype=np.float32), gcps=gcps)
    rng = np.random.default_rng(0)
    rows, cols = rng.uniform(0, lines, 500), rng.uniform(0, samples, 500)
    with open_scene(str(path)) as scene:
        assert scene.transform is None and scene.gcps
        got = scene.pixel_to_lonlat(cols, rows)
    _, _, d = Geod(ellps="WGS84").inv(*track_lonlat(70.0, -12.0, rows, cols, lines, samples, spacing), *got)
    assert np.median(np.abs(d)) < 3.0


def test_a_safe_product_without_image_information_takes_its_spacing_from_the_grid(tmp_path):
    """No imageInformation in the annotation: the spacing is measured from the geolocation grid, as
    before per-axis spacings were read (the annotated pair was then left unset and the product failed)."""
    import re as _re

    safe = write_safe(tmp_path, draw_codes()[:60, :80], polarisations=("vv",))
    ann = next((safe / "annotation").glob("*.xml"))
    ann.write_text(_re.sub(r"<imageInformation>.*?</imageInformation>", "", ann.read_text(), flags=_re.S))
    with open_scene(str(safe)) as scene:
        assert scene.annotated_spacing_m is None and scene.pixel_spacing() == pytest.approx(
            sum(scene.ground_spacing()) / 2
        )


def test_contradicting_gcps_fall_back_to_the_polynomial_and_the_transformer_is_built_once(tmp_path, monkeypatch):
    """Two GCPs at one pixel a metre apart make the spline singular (NaN everywhere); the polynomial fits
    through them, so such a set gets it. A scene builds its transformer once, however often it is asked."""
    from rasterio.control import GroundControlPoint

    from dakter_scale.scene import read

    grid = [(r, c) for r in (0, 32, 64) for c in (0, 32, 64)]
    gcps = [GroundControlPoint(row=r, col=c, x=10.0 + c * 1e-4, y=60.0 - r * 1e-4) for r, c in grid]
    gcps.append(GroundControlPoint(row=32, col=32, x=10.0 + 32e-4 + 1e-5, y=60.0 - 32e-4))  # ~0.6 m off the other
    path = write_raster(tmp_path / "gcps.tif", np.full((64, 64), 0.05, dtype=np.float32), gcps=gcps)
    built = []
    real = read.gcp_transformer
    monkeypatch.setattr(read, "gcp_transformer", lambda g: built.append(1) or real(g))
    with open_scene(str(path)) as scene:
        for _ in range(3):
            lon, lat = scene.pixel_to_lonlat(np.array([16.0, 48.0]), np.array([16.0, 48.0]))
            assert np.isfinite(lon).all() and np.isfinite(lat).all()
        assert lon[0] == pytest.approx(10.0016, abs=1e-5) and lat[1] == pytest.approx(60.0 - 48e-4, abs=1e-5)
    assert len(built) == 1


def test_a_projected_grid_of_unequal_steps_is_resampled_by_its_nominal_steps(tmp_path):
    """Web Mercator at 60 N with 10 x 12 m nominal steps: the factors follow the nominal steps, as the
    scale of a square grid does (not the ground's, which differ by the projection's scale factor)."""
    from rasterio.transform import Affine

    from dakter_scale.scene.predict import plan_geometry
    from dakter_scale.scene.radiometry import plan_scale

    merc = Affine(12.0, 0.0, 1113194.9, 0.0, -10.0, 8399737.9)
    path = write_raster(tmp_path / "merc.tif", np.full((64, 64), 0.01, dtype=np.float32), "EPSG:3857", merc)
    with open_scene(str(path)) as scene:
        assert scene.axis_spacing() == (10.0, 12.0)
        scale = plan_geometry(scene, plan_scale(scene.pixel_spacing(), info(10.0)))
    assert scale.axes == pytest.approx((1.0, 10.0 / 12.0))


# -- hysteresis and band-wise components ----------------------------------------------------------------------


def test_hysteresis_by_hand():
    p = np.array([[0.5, 0.5, 0.0, 0.5], [0.0, 0.9, 0.0, 0.5], [0.0, 0.0, 0.0, 0.5]])
    assert hysteresis(p, 0.8, 0.4).tolist() == [
        [True, True, False, False],
        [False, True, False, False],
        [False, False, False, False],
    ]
    valid = np.ones_like(p, dtype=bool)
    valid[1, 1] = False  # the seed pixel is land: nothing is left
    assert not hysteresis(p, 0.8, 0.4, valid).any()


@pytest.mark.parametrize("band_rows", [7, 64, 1000])
def test_band_wise_components_equal_the_whole_array_rule(band_rows):
    from scipy import ndimage

    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.random((150, 170)), 3)
    codes = np.clip((field - field.min()) / np.ptp(field) * 255, 0, 255).astype(np.uint8)
    valid = np.ones(codes.shape, dtype=bool)
    valid[:, :10] = False
    opts = VectoriseOptions(seed=0.8, outline=0.55, band_rows=band_rows)
    slicks = find_slicks(lambda r0, r1: (codes[r0:r1], valid[r0:r1]), *codes.shape, opts)
    seed_code, outline_code = opts.codes()
    reference = hysteresis(codes, seed_code, outline_code, valid)
    assert (
        sum(s.pixels for s in slicks) == reference.sum()
        and len(slicks) == ndimage.label(reference, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])[1]
    )
    assert sum(s.geometry.area for s in slicks) == pytest.approx(
        reference.sum()
    )  # pixel-edge polygons: exactly their pixels
    big = find_slicks(
        lambda r0, r1: (codes[r0:r1], valid[r0:r1]),
        *codes.shape,
        VectoriseOptions(seed=0.8, outline=0.55, band_rows=band_rows, min_area_m2=200),
    )
    assert all(s.pixels >= 200 for s in big) and len(big) < len(slicks)


# -- bad and hostile input -------------------------------------------------------------------------------------


def scene_error(tmp_path, path, match, **options):
    with pytest.raises(SceneError, match=match):
        Predictor(DarkIsOil(), PredictOptions(tile=128, overlap=16, **options), device="cpu", info=info())(
            str(path), tmp_path / "out"
        )


def test_bad_geotiffs_are_refused_naming_the_file(tmp_path):
    import rasterio

    codes = draw_codes(200, 200)
    good = write_geotiff(tmp_path / "good.tif", sigma0_of(codes))
    data = good.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])  # GDAL's GTiff writes its directory last: gone
    scene_error(tmp_path, tmp_path / "cut.tif", r"cut\.tif: not a readable GeoTIFF \(corrupt or truncated\?\)")
    from rasterio.shutil import copy

    copy(
        good, tmp_path / "cog.tif", driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=128
    )  # a COG's header comes first: the tiles go
    (tmp_path / "cutcog.tif").write_bytes(
        (tmp_path / "cog.tif").read_bytes()[: int((tmp_path / "cog.tif").stat().st_size * 0.6)]
    )
    scene_error(tmp_path, tmp_path / "cutcog.tif", r"cutcog\.tif: unreadable at rows .*\(corrupt or truncated\?\)")
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    scene_error(tmp_path, tmp_path / "junk.tif", r"junk\.tif: not a readable GeoTIFF")
    write_geotiff(tmp_path / "dn.tif", codes.astype(np.uint16) * 100)
    scene_error(tmp_path, tmp_path / "dn.tif", r"dn\.tif: uint16 digital numbers without a calibration")
    write_geotiff(tmp_path / "int.tif", codes.astype(np.int32))
    scene_error(tmp_path, tmp_path / "int.tif", r"int\.tif: data type int32 is not a SAR band")
    with rasterio.open(tmp_path / "rgb.tif", "w", driver="GTiff", height=50, width=50, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 50, 50), dtype=np.uint8))
    scene_error(tmp_path, tmp_path / "rgb.tif", r"rgb\.tif: 3 bands.*--band N")
    scene_error(tmp_path, tmp_path / "none.tif", r"none\.tif: no such scene")
    scene_error(
        tmp_path, tmp_path / "good.tif", r"good\.tif: --scene-radiometry db8 needs uint8", scene_radiometry="db8"
    )


def test_students_from_another_class_set_or_convention_are_refused(tmp_path):
    from dakter_scale.student.models import build_student, save_student

    sos = save_student(
        tmp_path / "sos",
        build_student("unet", "resnet18", 2, None, 3),
        {
            "arch": "unet",
            "encoder": "resnet18",
            "encoder_depth": 3,
            "classes": ["background", "oil-spill"],
            "resolution": 64,
            "crop": 0,
        },
    )
    with pytest.raises(
        PredictError, match=r"--classes oil: not a class of .*sos, whose classes are background, oil-spill"
    ):
        Predictor(sos, PredictOptions())
    odd = dict(info(), radiometry={"kind": "amplitude16"})
    with pytest.raises(RadiometryError, match="unknown radiometric convention"):
        Predictor(DarkIsOil(), PredictOptions(), device="cpu", info=odd)
    with pytest.raises(PredictError, match="--outline-threshold 0.7 is above --seed-threshold 0.6"):
        Predictor(DarkIsOil(), PredictOptions(outline_threshold=0.7), device="cpu", info=info())


def test_hostile_safe_products_are_refused(tmp_path):
    codes = draw_codes(100, 120)
    safe = write_safe(tmp_path / "p", codes, polarisations=("vh",))
    scene_error(tmp_path, safe, r"\.SAFE: no VV polarisation .*holds VH")
    annotation = next((safe / "annotation").glob("*.xml"))
    text = annotation.read_text()
    annotation.write_text(text.replace("<product>", '<!DOCTYPE product [<!ENTITY a "aaaa">]><product>&a;', 1))
    scene_error(
        tmp_path,
        safe,
        r"s1a-iw-grd-vh.*\.xml: XML with a document type declaration or entities is refused",
        polarisation="VH",
    )
    annotation.write_text(text[: len(text) // 2])
    scene_error(tmp_path, safe, r"\.xml: not well-formed XML", polarisation="VH")
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        z.writestr("X.SAFE/manifest.safe", "<a/>")
        z.writestr("../../etc/X.SAFE/measurement/evil.tiff", "x")
    scene_error(tmp_path, tmp_path / "evil.zip", r"evil\.zip: member '\.\./\.\./etc.*refused")
    (tmp_path / "cut.zip").write_bytes(zip_folder(safe, tmp_path / "whole.zip").read_bytes()[:500])
    scene_error(tmp_path, tmp_path / "cut.zip", r"cut\.zip: not a readable zip archive")
    nocal = write_safe(tmp_path / "q", codes, calibration=False)
    with pytest.raises(RadiometryError, match="digital numbers without a calibration LUT"):
        Predictor(DarkIsOil(), PredictOptions(tile=128, overlap=16), device="cpu", info=info())(
            str(nocal), tmp_path / "out"
        )
    with open_scene(str(nocal)) as scene:
        assert scene.calibration is None and scene.kind == "safe"


# -- a real student, through the job ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory):
    from dakter_scale.config import load_config
    from dakter_scale.student.train import train_student

    cfg = load_config(None, [*TINY_STUDENT, "student.max_steps=2", "student.ratio=0"])
    return train_student(cfg, tmp_path_factory.mktemp("student") / "s", progress=False)


def test_a_trained_student_records_its_convention_and_runs_end_to_end(tmp_path, trained_student):
    recorded = json.loads((trained_student / "student.json").read_text())
    assert recorded["radiometry"] == SIM and recorded["pixel_spacing_m"] is None
    scene = write_geotiff(tmp_path / "scene.tif", sigma0_of(draw_codes(300, 400)))
    r = subprocess.run(
        job("predict.py")
        + [
            "--student",
            str(trained_student),
            "--scene",
            str(scene),
            "--out",
            str(tmp_path / "out"),
            "--tile",
            "128",
            "--overlap",
            "16",
            "--pixel-spacing",
            "10",
            "--classes",
            "oil,look-alike",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    record = json.loads(r.stdout)
    assert record["student"]["sha256"] and record["student"]["radiometry"] == SIM and record["tiling"]["count"] == 12
    assert record["thresholds"]["classes"] == ["oil", "look-alike"]
    for name in ("probabilities.tif", "classes.tif", "slicks.geojson", "quicklook.png", "predict.json"):
        assert (tmp_path / "out" / name).is_file()
    # the scene has no acquisition time: no STAC item, and the job's log (stderr) says so
    assert record["scene"]["acquisition_time"] is None and not (tmp_path / "out" / "item.json").exists()
    assert re.search(r"scene\.tif: no acquisition time, so no STAC item", r.stderr), r.stderr[-2000:]
    fc = json.loads((tmp_path / "out" / "slicks.geojson").read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == record["slicks"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scene", "TMP/none.tif"], r"^error: .*none\.tif: no such scene$"),
        (["--scene", "TMP/scene.png", "--require-georeferencing"], r"^error: .*scene\.png: no georeferencing"),
        (["--scene", "TMP/scene.png", "--overlap", "600"], r"^error: --overlap must be in \[0, 511\], got 600$"),
        (["--scene", "TMP/scene.png", "--band", "2"], r"^error: .*scene\.png: --band is for GeoTIFFs; a PNG or JPEG"),
    ],
)
def test_the_job_reports_bad_input_in_one_line(tmp_path, trained_student, args, message):
    from PIL import Image

    Image.fromarray(draw_codes(64, 64)).save(tmp_path / "scene.png")
    argv = (
        job("predict.py")
        + ["--student", str(trained_student), "--out", str(tmp_path / "out")]
        + [a.replace("TMP", str(tmp_path)) for a in args]
    )
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    import re

    assert re.search(message, r.stderr.strip()), r.stderr


@pytest.mark.parametrize("name", ["predict.py", "export_student.py"])
def test_the_jobs_explain_every_flag(name):
    import re

    r = subprocess.run(job(name) + ["--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "usage:" in r.stdout
    text = r.stdout.split("\noptions:", 1)[1]  # after the usage lines
    flags = set(re.findall(r"^\s+(--[a-z-]+)", text, re.M))
    expected = {"--student", "--out"} | (
        {
            "--scene",
            "--scenes",
            "--tile",
            "--overlap",
            "--classes",
            "--seed-threshold",
            "--outline-threshold",
            "--min-area",
            "--simplify",
            "--land",
            "--land-buffer",
            "--db-window",
            "--pixel-spacing",
            "--polarisation",
            "--actors",
        }
        if name == "predict.py"
        else {"--format"}
    )
    assert expected <= flags
    for flag in flags - {"--help"}:  # each flag's line, or the one after it, carries its explanation
        line = re.search(rf"^\s+{flag}\b.*(?:\n\s{{20,}}\S.*)?", text, re.M).group(0)
        assert len(line.split(flag, 1)[1].strip()) > 10, f"{flag} has no help: {line!r}"


def predict_job(monkeypatch, capsys, argv: list[str]) -> tuple[int, str, dict]:
    """jobs/predict.py's main() in this process with a recording Predictor: (exit status, stderr, the
    options the job built). Flags are checked without a student or a scene."""
    import runpy
    import sys

    from dakter_scale.scene import predict as predict_module

    from conftest import ROOT

    seen: dict = {}

    class Recording:
        def __init__(self, student, options, **_):
            seen["options"] = options

        def __call__(self, scene, out):
            return {"slicks": 0}

    monkeypatch.setattr(predict_module, "Predictor", Recording)
    monkeypatch.setattr(sys, "argv", ["predict.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "jobs" / "predict.py"), run_name="job")["main"]()  # not __main__: script() exits
    return exit_.value.code, capsys.readouterr().err, seen


def test_a_db_window_below_zero_is_a_value_not_a_flag(monkeypatch, capsys, tmp_path):
    """Every dB window of sigma-nought starts below 0: argparse takes '-35,5' for a flag unless the job
    joins it to --db-window (it reads only plain negative numbers as values)."""
    args = ["--student", "s", "--scene", "x.tif", "--out", str(tmp_path / "o"), "--json"]
    for window in (["--db-window", "-35,5"], ["--db-window=-30,-2"]):
        code, err, seen = predict_job(monkeypatch, capsys, args + window)
        assert code == 0 and seen["options"].db_window == tuple(
            float(v) for v in window[-1].split("=")[-1].split(",")
        ), err


@pytest.mark.parametrize(
    "value,message",
    [("abc", r"--actors must be auto or a number >= 0, got 'abc'"), ("-1", r"--actors must be >= 0, got -1")],
)
def test_a_bad_actor_count_is_one_line(monkeypatch, capsys, tmp_path, value, message):
    import re

    argv = ["--student", "s", "--scenes", str(tmp_path / "*.tif"), "--out", str(tmp_path / "o"), "--actors", value]
    code, err, _ = predict_job(monkeypatch, capsys, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), err


def test_pixels_that_are_not_square_or_not_their_nominal_size_on_the_ground_are_named(tmp_path):
    """Square-degree pixels at 60 N are half as wide as tall on the ground: resampled per axis to square
    model pixels (a note), or, without a training spacing, a warning; Web Mercator's nominal metres are
    twice the ground's there: a warning. A UTM scene of square metric pixels has none."""
    import rasterio
    from rasterio.transform import from_origin

    from dakter_scale.scene.predict import plan_geometry
    from dakter_scale.scene.radiometry import plan_scale

    def scene_at(name, crs, x0, y0, step):
        path = tmp_path / name
        profile = dict(driver="GTiff", width=64, height=64, count=1, dtype="float32", crs=crs)
        with rasterio.open(path, "w", transform=from_origin(x0, y0, step, step), **profile) as ds:
            ds.write(np.full((1, 64, 64), 0.01, dtype=np.float32))
        return path

    cases = {
        "degrees.tif": (
            "EPSG:4326",
            10.0,
            60.0,
            1e-4,
            r"pixels are 11.1 x 5.58 m on the ground .* not square: resampled along each axis",
        ),
        "mercator.tif": ("EPSG:3857", 1113194.9, 8399737.9, 10.0, r"nominal 10 m pixels are 5.01 m on the ground"),
        "utm.tif": ("EPSG:32631", 500000.0, 5000000.0, 10.0, None),
    }
    for name, (crs, x0, y0, step, expected) in cases.items():
        with open_scene(str(scene_at(name, crs, x0, y0, step))) as scene:
            scale = plan_geometry(scene, plan_scale(scene.pixel_spacing(), info()))
            notes = [n for n in scale.notes if "ground" in n]
            unknown = plan_geometry(scene, plan_scale(scene.pixel_spacing(), info(pixel_spacing=None)))
            dy, dx = scene.ground_spacing()
        if expected is None:
            assert notes == [] and scale.axes is None
        else:
            assert len(notes) == 1 and re.search(expected, notes[0]), notes
        if name == "degrees.tif":
            assert scale.axes == pytest.approx((10.0 / dy, 10.0 / dx)) and 1.99 < dy / dx < 2.01
            assert unknown.axes is None and re.search(
                r"not square: the student sees the scene stretched", unknown.notes[-1]
            )
