"""Scene inference end to end on real files written here (tests/scenegen.py): GeoTIFFs with a geotransform
or GCPs, a PNG, a SAFE GRD folder and zip. Geometry is checked with a deterministic segmenter (dark is
oil), so what is measured is the pipeline, not a model.

Tolerances (stated in the issue's terms): a slick's centroid within 1 pixel (10 m at the test's 10 m
pixels) of the drawn ellipse's centre, its area within 2 % of pi a b pixels (the pixelised ellipse and
the projection's scale factor, 0.9996^2 on a UTM meridian, both fit in it); the GCP scene within 0.2
pixels and 0.5 % of the geotransform scene; tiled against whole-image probabilities within 2/255 in
the interior.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from pyproj import Geod, Transformer

from dakter_scale.scene.predict import PredictOptions, Predictor
from dakter_scale.scene.read import SceneError, footprint_lonlat, open_scene

from scenegen import SLICKS as DRAWN
from scenegen import (
    DarkIsOil,
    SmoothSegmenter,
    corner_lonlat,
    draw_codes,
    ellipse_area,
    grd_corners,
    info,
    sigma0_of,
    write_geotiff,
    write_safe,
    zip_folder,
)

SPACING = 10.0
TO_UTM = Transformer.from_crs("EPSG:4326", "EPSG:32631", always_xy=True)


def predict(tmp_path, scene, model=None, name="out", student_info=None, **options) -> tuple[dict, dict]:
    opts = PredictOptions(**{"tile": 256, "overlap": 32, **options})
    record = Predictor(model or DarkIsOil(), opts, device="cpu", info=student_info or info())(
        str(scene), tmp_path / name
    )
    return record, json.loads((tmp_path / name / "slicks.geojson").read_text())


def utm_centroids(fc: dict) -> np.ndarray:
    lonlat = np.array([f["properties"]["centroid"] for f in fc["features"]])
    x, y = TO_UTM.transform(lonlat[:, 0], lonlat[:, 1])
    return np.column_stack([x, y])


def match(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """For each expected point, the distance to the nearest found one."""
    return np.array([np.min(np.hypot(*(found - e).T)) for e in expected])


@pytest.fixture(scope="module")
def codes():
    return draw_codes()


def expected_utm():
    return np.array([(500000.0 + cx * SPACING, 5000000.0 - cy * SPACING) for cy, cx, _, _ in DRAWN])


def test_geotiff_slicks_land_where_drawn_with_their_areas(tmp_path, codes):
    scene = write_geotiff(tmp_path / "scene.tif", sigma0_of(codes))
    record, fc = predict(tmp_path, scene)
    assert record["slicks"] == len(DRAWN) == len(fc["features"])
    assert record["scene"]["georeferencing"] == "geotransform" and record["conventions"]["scale"]["factor"] == 1.0
    errors = match(utm_centroids(fc), expected_utm())
    assert np.all(errors <= 1.0 * SPACING), errors
    areas = sorted(f["properties"]["area_m2"] for f in fc["features"])
    drawn = sorted(ellipse_area(ay, ax) * SPACING**2 for _, _, ay, ax in DRAWN)
    assert np.allclose(areas, drawn, rtol=0.02), (areas, drawn)
    for f in fc["features"]:
        p = f["properties"]
        assert (
            p["class"] == "oil" and p["pixel_count"] > 0 and 0.6 <= p["mean_probability"] <= p["max_probability"] <= 1.0
        )
        ring = np.array(f["geometry"]["coordinates"][0])
        # RFC 7946: lon/lat, exterior ring counter-clockwise (positive shoelace area), closed.
        assert (
            np.all(np.abs(ring[:, 0] - 3) < 1) and np.all(np.abs(ring[:, 1] - 45) < 1) and (ring[0] == ring[-1]).all()
        )
        assert 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1]) > 0
    # The rasters are COGs: internal tiles and overviews, georeferenced like the scene.
    for name, bands in (("probabilities.tif", 5), ("classes.tif", 1)):
        with rasterio.open(tmp_path / "out" / name) as ds:
            assert ds.count == bands and ds.dtypes[0] == "uint8" and ds.profile["tiled"]
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and ds.overviews(1)
            assert ds.crs.to_epsg() == 32631 and ds.transform.a == SPACING
    assert (tmp_path / "out" / "quicklook.png").stat().st_size > 0
    assert record["tiling"]["window"].startswith("separable cosine-squared")
    assert record["conventions"]["radiometry"]["scene"] == "sigma0" and record["timings"]["total_seconds"] > 0


def test_a_narrow_scene_with_unequal_pixel_factors_keeps_its_slick_in_place(tmp_path):
    """40 x 800 scene pixels at 70 m model pixels: the grid is 6 x 114, so a model pixel is 40/6 = 6.67 scene
    rows by 800/114 = 7.02 scene columns. Polygons are scaled per axis: with one mean factor (6.84) the
    slick at column 700 moved 16 scene pixels (160 m, more than two model pixels) west."""
    codes = draw_codes(40, 800, slicks=[(20.0, 700.0, 12.0, 40.0)])
    record, fc = predict(
        tmp_path, write_geotiff(tmp_path / "s.tif", sigma0_of(codes)), student_info=info(70.0), tile=64, overlap=8
    )
    assert record["conventions"]["grid"] == {"height": 6, "width": 114} and record["slicks"] == 1
    error = match(utm_centroids(fc), np.array([(500000.0 + 700 * SPACING, 5000000.0 - 20 * SPACING)]))
    assert error[0] <= 70.0, error  # within one model pixel
    p = fc["features"][0]["properties"]
    assert p["area_pixels"] == round(p["pixel_count"] * (40 / 6) * (800 / 114), 1)


def test_min_area_without_georeferencing_is_in_scene_pixels_on_a_resampled_grid(tmp_path):
    """A PNG has no spacing, so --min-area counts scene pixels (jobs/predict.py's help). A student trained on
    128-pixel crops resized to 64 reads it at factor 2: a 61 x 300 scene on a 30 x 150 grid, a model pixel
    2.03 x 2 scene pixels. A threshold 2 % under the slick's area keeps it and 2 % over drops it; counted in
    model pixels (as it was) the threshold was 4.07 times too strict, and both dropped it."""
    from PIL import Image

    Image.fromarray(draw_codes(61, 300, slicks=[(30.0, 150.0, 18.0, 60.0)])).save(tmp_path / "s.png")
    student = {**info(None), "crop": 128}
    record, fc = predict(tmp_path, tmp_path / "s.png", student_info=student, name="all", tile=64, overlap=8)
    assert record["conventions"]["grid"] == {"height": 30, "width": 150} and record["slicks"] == 1
    area = fc["features"][0]["properties"]["area_pixels"]  # scene pixels: pixel_count x (61 / 30) x (300 / 150)
    assert abs(area - ellipse_area(18.0, 60.0)) < 0.05 * area
    kept, _ = predict(
        tmp_path, tmp_path / "s.png", student_info=student, name="below", tile=64, overlap=8, min_area_m2=0.98 * area
    )
    dropped, _ = predict(
        tmp_path, tmp_path / "s.png", student_info=student, name="above", tile=64, overlap=8, min_area_m2=1.02 * area
    )
    assert (kept["slicks"], dropped["slicks"]) == (1, 0)


def test_gcp_scene_gives_the_same_polygons(tmp_path, codes):
    _, affine = predict(tmp_path, write_geotiff(tmp_path / "affine.tif", sigma0_of(codes)), name="a")
    record, gcp = predict(tmp_path, write_geotiff(tmp_path / "gcp.tif", sigma0_of(codes), gcps=True), name="g")
    assert record["scene"]["georeferencing"] == "gcps" and len(gcp["features"]) == len(affine["features"])
    a, g = utm_centroids(affine), utm_centroids(gcp)
    assert np.all(match(g, a) <= 0.2 * SPACING)
    areas = lambda fc: sorted(f["properties"]["area_m2"] for f in fc["features"])  # noqa: E731
    assert np.allclose(areas(gcp), areas(affine), rtol=0.005)
    with rasterio.open(tmp_path / "g" / "probabilities.tif") as ds:
        assert ds.gcps[0] and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_plain_png_uses_pixel_coordinates_and_says_so(tmp_path, codes):
    from PIL import Image

    Image.fromarray(codes).save(tmp_path / "scene.png")
    record, fc = predict(tmp_path, tmp_path / "scene.png")
    assert (
        not record["scene"]["georeferenced"]
        and "pixel" in fc["coordinates"]
        and "pixel" in record["conventions"]["coordinates"]
    )
    centres = np.array([f["properties"]["centroid"] for f in fc["features"]])
    assert np.all(match(centres, np.array([(cx, cy) for cy, cx, _, _ in DRAWN])) <= 1.0)
    assert all(f["properties"]["area_m2"] is None for f in fc["features"])
    assert any("assumed" in n for n in record["conventions"]["radiometry"]["notes"])
    with pytest.raises(SceneError, match=r"scene\.png: no georeferencing.*--require-georeferencing"):
        predict(tmp_path, tmp_path / "scene.png", name="geo", require_georeferencing=True)


RECEPTIVE_RADIUS = 4  # SmoothSegmenter: four 3x3 convolutions


@pytest.mark.parametrize("tile,overlap", [(128, 32), (96, 16), (256, 64)])
def test_tiled_and_whole_image_agree_in_the_interior(tmp_path, codes, tile, overlap):
    """A conv net with a 9-pixel receptive field: a tile's pixels within 4 pixels of its edge see zero
    padding instead of the scene. The blending window gives them at most r(4) = sin^2(pi 4.5 / 2v) of
    the blend, so tiled and whole differ by at most 255 r(4) codes (+1 for rounding) in the interior:
    12 codes at v = 32, 47 at v = 16, 4 at v = 64 (measured: 7, 27, 2; means below 0.05 codes).
    Without overlap the seams are the model's full edge error (measured 191 codes, below)."""
    import math

    scene = write_geotiff(tmp_path / "scene.tif", codes[:300, :400])
    model = SmoothSegmenter()
    predict(tmp_path, scene, model, name="whole", tile=512, overlap=0)

    def difference(name: str, t: int, v: int) -> np.ndarray:
        predict(tmp_path, scene, model, name=name, tile=t, overlap=v)
        with (
            rasterio.open(tmp_path / name / "probabilities.tif") as a,
            rasterio.open(tmp_path / "whole" / "probabilities.tif") as b,
        ):
            margin = 8  # the scene's own border: padding there differs between a tile and the whole image
            return np.abs(a.read().astype(int) - b.read().astype(int))[:, margin:-margin, margin:-margin]

    diff = difference("tiled", tile, overlap)
    bound = 255 * math.sin(math.pi * (RECEPTIVE_RADIUS + 0.5) / (2 * overlap)) ** 2 + 1
    assert diff.max() <= bound, (
        f"max difference {diff.max()}/255 > {bound:.1f} at {np.unravel_index(diff.argmax(), diff.shape)}"
    )
    assert diff.mean() < 0.1
    if overlap == 32:
        assert difference("seams", tile, 0).max() > 50  # the check sees seams when there is no blending


def test_a_per_pixel_model_gives_identical_tiled_and_whole_outputs(tmp_path, codes):
    scene = write_geotiff(tmp_path / "scene.tif", codes[:300, :400])
    predict(tmp_path, scene, name="whole", tile=512, overlap=0)
    predict(tmp_path, scene, name="tiled", tile=96, overlap=24)
    with (
        rasterio.open(tmp_path / "tiled" / "probabilities.tif") as a,
        rasterio.open(tmp_path / "whole" / "probabilities.tif") as b,
    ):
        assert np.abs(a.read().astype(int) - b.read().astype(int)).max() <= 1  # float rounding of the convex blend


def test_no_data_is_never_a_slick(tmp_path, codes):
    """A scene's no-data border (NaN sigma-nought, a GRD's zero digital numbers) converts to the darkest
    code, which is what oil looks like: before it was masked, a 40-column NaN border came out as one more
    slick (80 ha for 200 x 40 pixels at 10 m). Masked, its probabilities are 0 and its class is 255, the
    class map's no-data value."""
    from rasterio.windows import Window

    data = sigma0_of(codes[:300, :400])
    data[:, :40] = np.nan
    record, _ = predict(tmp_path, write_geotiff(tmp_path / "nan.tif", data), name="nan")
    assert record["slicks"] == 1  # the one drawn slick inside the crop
    with (
        rasterio.open(tmp_path / "nan" / "classes.tif") as c,
        rasterio.open(tmp_path / "nan" / "probabilities.tif") as p,
    ):
        classes = c.read(1)
        assert c.nodata == 255 and (classes[:, :40] == 255).all() and (classes[:, 40:] != 255).all()
        assert p.read()[:, :, :40].max() == 0
    safe = write_safe(tmp_path, codes[:300, :400], polarisations=("vv",))
    with rasterio.open(next((safe / "measurement").glob("*.tiff")), "r+") as ds:
        ds.write(np.zeros((1, 300, 30), dtype=np.uint16), window=Window(370, 0, 30, 300))  # the far-range border
    record, _ = predict(tmp_path, safe, name="safe")
    assert record["slicks"] == 1 and record["scene"]["nodata"] == 0


def test_safe_grd_is_calibrated_georeferenced_and_keeps_its_footprint(tmp_path, codes):
    from shapely.geometry import Polygon

    safe = write_safe(tmp_path, codes)
    with open_scene(str(safe)) as scene:
        assert (
            scene.kind == "safe"
            and scene.polarisation == "VV"
            and scene.radiometry == "dn"
            and scene.calibration is not None
        )
        assert scene.scene_id.startswith("S1A_IW_GRDH") and scene.acquisition_time.startswith("2026-01-01T05:45:12")
        from dakter_scale.scene.radiometry import default_convention, lut_at, plan_conversion, to_codes

        conv = plan_conversion("dn", True, default_convention(info()))
        cal = scene.calibration
        back = to_codes(
            scene.read(0, 600, 0, 800),
            conv,
            lut_at(cal.lines, cal.pixels, cal.sigma_nought, np.arange(600.0), np.arange(800.0)),
        )
        # DN = A sqrt(sigma0) were rounded to integers: at the darkest codes here (~40, DN ~15) that is up to
        # 3 % in amplitude, 0.3 dB, 2 codes; most pixels come back exactly.
        assert np.abs(back.astype(int) - codes.astype(int)).max() <= 2 and np.mean(back == codes) > 0.9
        product = Polygon(scene.footprint)
    record, fc = predict(tmp_path, safe)
    assert (
        record["scene"]["calibrated"] and record["scene"]["georeferencing"] == "gcps" and record["slicks"] == len(DRAWN)
    )
    assert all(
        f["properties"]["scene_id"] == record["scene"]["scene_id"] and f["properties"]["acquisition_time"]
        for f in fc["features"]
    )
    with open_scene(str(tmp_path / "out" / "probabilities.tif"), band=1) as out:
        written = Polygon(footprint_lonlat(out))
    assert written.intersection(product).area / written.union(product).area > 0.995
    geod = Geod(ellps="WGS84")
    truth = [corner_lonlat(cy, cx, 600, 800) for cy, cx, _, _ in DRAWN]
    for lon, lat in truth:
        d = min(geod.inv(lon, lat, *f["properties"]["centroid"])[2] for f in fc["features"])
        assert d < 1.5 * SPACING * 2, d  # the grid's pixels are ~22 x 28 m here: within about one pixel
    zipped = zip_folder(safe, tmp_path / "product.zip")
    record_zip, fc_zip = predict(tmp_path, zipped, name="zip")
    assert record_zip["slicks"] == record["slicks"]
    assert [f["properties"]["pixel_count"] for f in fc_zip["features"]] == [
        f["properties"]["pixel_count"] for f in fc["features"]
    ]
    vh, _ = predict(tmp_path, safe, name="vh", polarisation="VH")
    assert vh["scene"]["polarisation"] == "VH"
    with pytest.raises(SceneError, match=r"\.SAFE: no HH polarisation.*holds VH, VV \(--polarisation\)"):
        predict(tmp_path, safe, name="hh", polarisation="HH")


def test_safe_geolocation_grid_points_are_pixel_centres(tmp_path):
    """A grid point's line/pixel is a sample index (ESA's product specification; docs/inference.md, "Limits"):
    its latitude/longitude is that pixel's centre, (pixel + 0.5, line + 0.5) in the pixel-corner coordinates of
    GDAL's GCPs. Taken as corners (as before), every position moved half a pixel: here 0.0025 degrees of
    longitude, ~200 m, at the synthetic product's ~400 m pixels."""
    import re

    height, width = 60, 80
    safe = write_safe(tmp_path, draw_codes(height, width, slicks=[]), polarisations=("vv",), calibration=False)
    annotation = next((safe / "annotation").glob("*.xml")).read_text()
    first = re.search(
        r"<line>(\d+)</line><pixel>(\d+)</pixel><latitude>([-\d.]+)</latitude><longitude>([-\d.]+)<", annotation
    )
    line, pixel, lat, lon = int(first[1]), int(first[2]), float(first[3]), float(first[4])
    assert (line, pixel) == (0, 0)
    with open_scene(str(safe)) as scene:
        assert (scene.gcps[0].row, scene.gcps[0].col) == (0.5, 0.5)
        assert (scene.gcps[-1].row, scene.gcps[-1].col) == (height - 0.5, width - 0.5)  # the last pixel's centre
        lons, lats = scene.pixel_to_lonlat(np.array([0.5, 0.0, width]), np.array([0.5, 0.0, height]))
    assert abs(lons[0] - lon) < 1e-7 and abs(lats[0] - lat) < 1e-7  # the grid point at the first pixel's centre
    corners = grd_corners(height, width)  # the image's outer corners, where the synthetic truth puts them
    assert np.allclose([lons[1], lats[1]], corners[(0, 0)], atol=1e-6)
    assert np.allclose([lons[2], lats[2]], corners[(height, width)], atol=1e-6)


class LandOnTheRight(DarkIsOil):
    """DarkIsOil, plus a land logit just above the oil logit from column 600 on: there the class map says
    land while p(oil) stays about 0.45, above the outline threshold."""

    def forward(self, x):
        logits = super().forward(x)
        logits[:, 4, :, 600:] = torch.maximum(logits[:, 1, :, 600:], logits[:, 0, :, 600:]) + 0.2
        return logits


def test_land_from_the_model_and_from_a_vector_file_with_a_buffer(tmp_path, codes):
    scene = write_geotiff(tmp_path / "scene.tif", sigma0_of(codes))
    thresholds = dict(seed_threshold=0.4, outline_threshold=0.4)
    _, sea = predict(tmp_path, scene, name="sea", **thresholds)
    _, model_land = predict(tmp_path, scene, LandOnTheRight(), name="model", tile=1024, **thresholds)
    assert len(sea["features"]) == 3 and len(model_land["features"]) == 2  # the slick at column 650 is on land
    to_lonlat = Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True)

    def box(r0, r1, c0, c1):
        xs, ys = (
            [500000 + c * SPACING for c in (c0, c1, c1, c0, c0)],
            [5000000 - r * SPACING for r in (r0, r0, r1, r1, r0)],
        )
        return [list(p) for p in zip(*to_lonlat.transform(xs, ys))]

    # A small island (2 x 2 pixels) at the centre of the slick at (row 300, col 650; semi-axes 12 x 40 px).
    land = tmp_path / "land.geojson"
    land.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Polygon", "coordinates": [box(299, 301, 649, 651)]},
                    }
                ],
            }
        )
    )
    _, island = predict(tmp_path, scene, name="island", land=str(land))
    assert len(island["features"]) == 3  # the island cuts a hole, the slick stays
    _, buffered = predict(
        tmp_path, scene, name="buffered", land=str(land), land_buffer_m=450.0
    )  # 45 px > the 40 px semi-axis
    assert len(buffered["features"]) == 2
    with rasterio.open(tmp_path / "buffered" / "classes.tif") as ds:
        assert ds.read(1)[300, 650] == 4 and ds.read(1)[300, 200] == 0  # land in the class map, sea elsewhere
    with pytest.raises(SceneError, match=r"--land .*nothing\.gpkg: not a readable vector file"):
        predict(tmp_path, scene, name="bad", land=str(tmp_path / "nothing.gpkg"))
    # a student without a land class (SOS: background, oil): the land file still removes the slick, as
    # certain background (it was read, then ignored)
    two = ("background", "oil")
    _, sos = predict(
        tmp_path, scene, DarkIsOil(two), name="sos", student_info=info(classes=two), land=str(land), land_buffer_m=450.0
    )
    assert len(sos["features"]) == 2  # as the 5-class student's with this land: its oil is the same rule
    with rasterio.open(tmp_path / "sos" / "classes.tif") as ds:
        assert ds.read(1)[300, 650] == 0
    with rasterio.open(tmp_path / "sos" / "probabilities.tif") as ds:
        assert ds.read(2)[300, 650] == 0 and ds.read(1)[300, 650] == 255  # probabilities in 1/255


def test_the_simulated_mosaic_is_a_georeferenced_scene_with_its_truth(tmp_path):
    from dakter_scale.data.synthetic_sar import scene_seed, simulate_scene
    from dakter_scale.scene.mosaic import write_mosaic

    image, truth = write_mosaic(tmp_path / "m.tif", 2, 3, size=32, seed=1, sigma0=True)
    with open_scene(str(image)) as scene, rasterio.open(truth) as t:
        assert (scene.height, scene.width, scene.radiometry) == (64, 96, "sigma0") and scene.pixel_spacing() == SPACING
        codes, mask = simulate_scene(scene_seed(1, "test", 4), 32, 32)  # row 1, column 1
        assert np.array_equal(t.read(1)[32:, 32:64], mask) and scene.scene_id.startswith("simulated-mosaic-2x3")
        from dakter_scale.scene.radiometry import default_convention, plan_conversion, to_codes

        assert np.array_equal(
            to_codes(scene.read(32, 64, 32, 64), plan_conversion("sigma0", False, default_convention(info()))), codes
        )


def test_a_scene_at_an_fsspec_url_is_read_in_place_and_its_credentials_never_recorded(tmp_path, codes):
    import fsspec

    secret = "s3cr3t-token"
    url = f"memory://user:{secret}@host/{tmp_path.name}/scene.tif"
    local = write_geotiff(tmp_path / "scene.tif", sigma0_of(codes[:300, :400]))
    with fsspec.open(url, "wb") as f:
        f.write(local.read_bytes())
    record, fc = predict(tmp_path, url)
    assert (
        record["slicks"] == 1 and record["scene"]["georeferencing"] == "geotransform"
    )  # the one slick inside the 300 x 400 crop
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "out").glob("*.json")) + json.dumps(fc)
    assert secret not in written and "memory://***@host" in record["scene"]["source"]


def test_a_failed_write_or_forward_mid_scene_is_raised_and_leaves_no_result(tmp_path, codes, monkeypatch):
    """Blending and writing run on a helper thread: its error reaches the caller, the model's error stops
    it, and neither leaves a predict.json or the work folder behind (a rerun starts over)."""
    from dakter_scale.scene import outputs

    scene = write_geotiff(tmp_path / "scene.tif", codes[:300, :400])
    real_write, writes = outputs.RasterSink.write, []

    def failing_write(self, y0, x0, probs, class_map):
        writes.append((y0, x0))
        if len(writes) == 3:
            raise OSError("disk full")
        real_write(self, y0, x0, probs, class_map)

    monkeypatch.setattr(outputs.RasterSink, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        predict(tmp_path, scene, name="write", tile=96, overlap=24, batch_size=2)
    assert (
        len(writes) == 3
        and not (tmp_path / "write" / "predict.json").exists()
        and not (tmp_path / "write" / outputs.WORK).exists()
    )
    monkeypatch.undo()

    class FailsOnThirdBatch(DarkIsOil):
        calls = 0

        def forward(self, x):
            FailsOnThirdBatch.calls += 1
            if FailsOnThirdBatch.calls == 3:
                raise RuntimeError("out of memory")
            return super().forward(x)

    with pytest.raises(RuntimeError, match="out of memory"):
        predict(tmp_path, scene, model=FailsOnThirdBatch(), name="forward", tile=96, overlap=24, batch_size=2)
    assert not (tmp_path / "forward" / "predict.json").exists() and not (tmp_path / "forward" / outputs.WORK).exists()


def test_a_zero_filled_border_of_linear_sigma0_is_no_data_not_oil(tmp_path, codes):
    """A terrain-corrected GeoTIFF of linear sigma-nought, zero outside the swath and no no-data tag: the
    zeros (the darkest pixels in dB, oil to a dark-spot model) are no data, 255 in the class map, no slick."""
    data = sigma0_of(codes).copy()
    data[:, :60] = 0.0  # the border, wider than a slick
    scene = write_geotiff(tmp_path / "border.tif", data)
    record, fc = predict(tmp_path, scene, name="border")
    with rasterio.open(tmp_path / "border" / "classes.tif") as ds:
        classes = ds.read(1)
    assert (classes[:, :60] == 255).all() and (classes[:, 70:] != 255).all()
    with open_scene(str(scene)) as s:
        assert s.nodata == 0.0
    lonlat = np.array([f["properties"]["centroid"] for f in fc["features"]])
    x, _ = TO_UTM.transform(lonlat[:, 0], lonlat[:, 1])
    assert ((x - 500000.0) / SPACING > 60).all(), "no slick in the border"
