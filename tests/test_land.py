"""scene/land.py: only the land near a scene is read (a window around its footprint grown by the buffer),
and the mask is the one the whole file gives."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from rasterio.transform import from_origin

from dakter_scale.scene import land
from dakter_scale.scene.read import SceneError, open_scene

from scenegen import ORIGIN, UTM, write_geotiff, write_raster, write_vector

SPACING = 10.0
H, W = 120, 160
BUFFER_M = 300.0  # 30 px


def utm_box(r0, r1, c0, c1):
    """A box of scene pixels (rows r0..r1, columns c0..c1; outside the scene too) in UTM metres."""
    return shapely.box(
        ORIGIN[0] + c0 * SPACING, ORIGIN[1] - r1 * SPACING, ORIGIN[0] + c1 * SPACING, ORIGIN[1] - r0 * SPACING
    )


def in_crs(geoms, crs: str):
    t = Transformer.from_crs(UTM, crs, always_xy=True)
    return [
        shapely.transform(shapely.segmentize(g, 50.0), lambda c: np.column_stack(t.transform(c[:, 0], c[:, 1])))
        for g in geoms
    ]


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    return write_geotiff(tmp_path_factory.mktemp("land") / "scene.tif", np.full((H, W), 0.05, dtype=np.float32))


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", UTM])
def test_the_window_reads_only_land_near_the_scene_and_gives_the_whole_files_mask(
    scene_path, tmp_path, crs, monkeypatch
):
    """An island inside the scene, a coast 20 px past its east edge (inside the 30 px buffer), a large
    polygon over its first 10 columns that reaches 30 km west, a coast 5 km south and land 600 km away: the
    window reads the first three (the large one cut to the window), and the mask is the one the whole
    file gives."""
    from pyproj import CRS

    near = [utm_box(50, 60, 70, 80), utm_box(0, H, W + 20, W + 60), utm_box(-2000, 3000, -3000, 10)]
    south = utm_box(H + 500, H + 540, 0, W)
    far = shapely.segmentize(shapely.box(10.0, 50.0, 12.0, 52.0), 0.01)  # lon/lat, in Germany
    to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    geoms = in_crs(near + [south], crs) + [
        shapely.transform(far, lambda c: np.column_stack(to_crs.transform(c[:, 0], c[:, 1])))
    ]
    url = write_vector(tmp_path / "land.gpkg", geoms, crs)
    with open_scene(str(scene_path)) as scene:
        window = land.footprint_windows(scene, BUFFER_M, CRS(crs))
        assert window is not None and len(window) == 1
        read, _ = land.read_vector(url, window)
        assert len(read) == 3  # the island, the east coast, the large polygon clipped
        assert all(shapely.box(*window[0]).buffer(1e-6).contains(g) for g in read)
        assert shapely.area(read[2]) < 0.5 * shapely.area(geoms[2])
        windowed = land.land_rasteriser(url, BUFFER_M, scene, 1.0, 1.0)(0, H, 0, W)
        monkeypatch.setattr(land, "footprint_windows", lambda *a: None)
        whole = land.land_rasteriser(url, BUFFER_M, scene, 1.0, 1.0)(0, H, 0, W)
    assert np.array_equal(windowed, whole)
    assert windowed[55, 75]  # the island
    assert windowed[5, W - 1] and not windowed[5, W - 15]  # the east coast's buffer reaches 10 px in
    assert windowed[5, 35] and not windowed[5, 45]  # the large polygon's 10 columns and its 30 px buffer
    assert not windowed[H - 1, W // 2]


def write_scene(path, crs: str, x0: float, y0: float, step: float) -> str:
    return write_raster(path, np.full((H, W), 0.05, dtype=np.float32), crs, from_origin(x0, y0, step, step))


def test_a_scene_across_the_antimeridian_reads_land_on_both_sides(tmp_path, monkeypatch):
    """A UTM 60N scene whose middle column is at 180 degrees: two windows, one each side; land on both
    sides (lon/lat polygons ending 0.004 degrees from it) lands on the right columns, as from the whole file."""
    from pyproj import CRS

    lat0 = 10.0
    x180, y0 = Transformer.from_crs("EPSG:4326", "EPSG:32660", always_xy=True).transform(180.0, lat0)
    scene_path = write_scene(tmp_path / "s.tif", "EPSG:32660", x180 - SPACING * W / 2, y0, SPACING)
    # densified, so that the meridians stay the same curves in UTM whether clipped to a window or not
    west, east = (
        shapely.segmentize(shapely.box(*b), 0.001) for b in ((179.9, 9.9, 179.996, 10.1), (-179.996, 9.9, -179.9, 10.1))
    )
    url = write_vector(tmp_path / "land.gpkg", [west, east], "EPSG:4326")
    with open_scene(scene_path) as scene:
        windows = land.footprint_windows(scene, 0.0, CRS("EPSG:4326"))
        assert len(windows) == 2 and windows[0][2] == 180.0 and windows[1][0] == -180.0
        assert len(land.read_vector(url, windows)[0]) == 2
        mask = land.land_rasteriser(url, 0.0, scene, 1.0, 1.0)(0, H, 0, W)
        monkeypatch.setattr(land, "footprint_windows", lambda *a: None)
        whole = land.land_rasteriser(url, 0.0, scene, 1.0, 1.0)(0, H, 0, W)
    assert np.array_equal(mask, whole)
    edge = 0.004 * 111_320 * np.cos(np.radians(lat0)) / SPACING  # px from 180 degrees to each polygon
    assert mask[H // 2, : int(W / 2 - edge) - 2].all() and mask[H // 2, int(W / 2 + edge) + 2 :].all()
    assert not mask[H // 2, int(W / 2 - edge) + 2 : int(W / 2 + edge) - 2].any()


def test_a_window_near_a_pole_runs_to_the_pole(tmp_path):
    from pyproj import CRS

    with open_scene(write_scene(tmp_path / "s.tif", "EPSG:4326", 10.0, 89.5, 0.002)) as scene:
        ((w, s, e, n),) = land.footprint_windows(scene, BUFFER_M, CRS("EPSG:4326"))
    assert (w, e, n) == (-180.0, 180.0, 90.0) and 89.2 < s < 89.5 - H * 0.002


def test_a_land_file_with_no_features_is_refused_and_one_with_none_near_the_scene_is_open_water(scene_path, tmp_path):
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with open_scene(str(scene_path)) as scene:
        with pytest.raises(SceneError, match=r"^--land .*empty\.geojson: no geometries$"):
            land.land_rasteriser(str(empty), BUFFER_M, scene, 1.0, 1.0)
        far = write_vector(tmp_path / "far.gpkg", [shapely.box(10.0, 50.0, 12.0, 52.0)], "EPSG:4326")
        assert not land.land_rasteriser(far, BUFFER_M, scene, 1.0, 1.0)(0, H, 0, W).any()


@pytest.mark.parametrize("buffer_m", [0.0, BUFFER_M])
def test_a_world_wide_land_file_places_the_coast_and_nothing_from_the_far_side_of_the_globe(
    scene_path, tmp_path, buffer_m
):
    """Reading a world-wide file whole put every polygon through the scene's UTM zone or an equidistant
    projection centred on it; far from the scene those fold, and the whole scene came out land (or GEOS
    raised). Read within the scene's window, the mask is the coast drawn down its middle column, grown by
    the buffer."""
    lon_mid, _ = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(
        ORIGIN[0] + W * SPACING / 2, ORIGIN[1]
    )
    world = [shapely.box(x, y, x + 6.0, y + 6.0) for x in range(-180, 180, 10) for y in range(-60, 80, 10)]
    world = [g for g in world if not g.intersects(shapely.box(-10.0, 35.0, 15.0, 55.0))]
    coast = shapely.segmentize(shapely.box(2.0, 44.0, lon_mid, 46.0), 0.001)
    url = write_vector(tmp_path / "world.gpkg", world + [coast], "EPSG:4326")
    with open_scene(str(scene_path)) as scene:
        mask = land.land_rasteriser(url, buffer_m, scene, 1.0, 1.0)(0, H, 0, W)
    edge = W / 2 + buffer_m / SPACING
    assert mask[:, : int(edge) - 1].all() and not mask[:, int(edge) + 1 :].any()


def test_land_across_the_antimeridian_within_the_buffer_of_a_scene_that_stops_short_of_it(tmp_path, monkeypatch):
    """The scene ends 0.006 degrees west of 180 and the buffer is 1 km: land starting 0.002 degrees east
    of 180 lies within it. The window wraps round to take it, as the whole file does."""
    from pyproj import CRS

    lat0 = 10.0
    x_edge, y0 = Transformer.from_crs("EPSG:4326", "EPSG:32660", always_xy=True).transform(179.994, lat0)
    scene_path = write_scene(tmp_path / "s.tif", "EPSG:32660", x_edge - SPACING * W, y0, SPACING)
    url = write_vector(
        tmp_path / "land.gpkg", [shapely.segmentize(shapely.box(-179.998, 9.9, -179.9, 10.1), 0.001)], "EPSG:4326"
    )
    with open_scene(scene_path) as scene:
        windows = land.footprint_windows(scene, 1000.0, CRS("EPSG:4326"))
        assert len(windows) == 2 and windows[1][0] == -180.0
        mask = land.land_rasteriser(url, 1000.0, scene, 1.0, 1.0)(0, H, 0, W)
        monkeypatch.setattr(land, "footprint_windows", lambda *a: None)
        whole = land.land_rasteriser(url, 1000.0, scene, 1.0, 1.0)(0, H, 0, W)
    assert mask.any() and np.array_equal(mask, whole)
