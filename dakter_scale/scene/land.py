"""Land from a user's vector file: polygons (any format GDAL/OGR reads, through pyogrio), moved to the
scene's CRS, grown by a buffer in metres, and rasterised block by block onto the model grid.

The buffer is applied in metres: in the scene's CRS when it is projected in metres, otherwise in an
azimuthal equidistant projection centred on the scene (distances from its centre are true). Polygons
reach pixels through the inverse of the scene's georeferencing (the affine inverse, or GDAL's GCP
transformer in the inverse direction).

Only the features near the scene are read: the file is read within the scene's footprint grown by the
buffer (GDAL's spatial filter, which uses the file's spatial index where it has one) and each polygon is
clipped to that window before the union, so a global coastline file costs a scene what its own coast does.
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from dakter_scale.data import storage
from dakter_scale.scene.read import Scene, SceneError

log = logging.getLogger("dakter_scale")

MARGIN_M = 1000.0  # added to the buffer when bounding the window: the footprint's edges are sampled, not exact
EDGE_POINTS = 32  # points sampled along each edge of the scene and of the window


def _unreadable(url: str, e: Exception) -> SceneError:
    # pyogrio raises DataSourceError / DataLayerError for anything unreadable
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return SceneError(f"--land {storage.redact_url(url)}: not a readable vector file: {type(e).__name__}: {first}")


def vector_info(url: str) -> tuple[str | None, int]:
    """(the vector file's CRS, WKT or an authority code, or None where it names none; its feature count,
    -1 where the driver cannot tell without reading)."""
    import pyogrio

    try:
        info = pyogrio.read_info(url)
    except Exception as e:
        raise _unreadable(url, e) from None
    return info.get("crs"), int(info.get("features", -1))


Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax


def read_vector(url: str, windows: list[Box] | None = None):
    """(shapely geometries, CRS WKT or None) of the features in a vector file; with windows (boxes in the
    file's CRS), only those that meet one, each clipped to it. A file with no features at all is refused;
    one with none in the windows gives an empty list (a scene in open water)."""
    import pyogrio
    import shapely

    geoms, crs = [], None
    for bbox in windows if windows is not None else [None]:
        try:
            meta, _, wkb, _ = pyogrio.raw.read(url, read_geometry=True, columns=[], bbox=bbox)
        except Exception as e:
            raise _unreadable(url, e) from None
        crs = meta.get("crs")
        found = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty] if wkb is not None else []
        if bbox is not None:
            found = [c for c in (shapely.clip_by_rect(g, *bbox) for g in found) if not c.is_empty]
        geoms += found
    if windows is None and not geoms:
        raise SceneError(f"--land {storage.redact_url(url)}: no geometries")
    return geoms, crs


def _wrap(w: float, s: float, e: float, n: float) -> list[Box]:
    """A lon/lat box as boxes within [-180, 180]: what lies past one side comes in at the other."""
    out = [(max(w, -180.0), s, min(e, 180.0), n)]
    if w < -180.0:
        out.append((w + 360.0, s, 180.0, n))
    if e > 180.0:
        out.append((-180.0, s, e - 360.0, n))
    return out


def footprint_windows(scene: Scene, grow_m: float, crs) -> list[Box] | None:
    """Boxes in `crs` (a pyproj CRS) that together hold every point within grow_m metres of the scene: its
    border, sampled, taken to longitude and latitude, grown by grow_m + MARGIN_M as degrees at the highest
    latitude it reaches, and taken to `crs` with densified edges. A window across the antimeridian is two
    boxes; one that reaches within 1 degree of a pole runs to the pole. None where no box is safe to use
    (a border the georeferencing or the projection cannot take): then the whole file is read."""
    from pyproj import CRS, Transformer

    from dakter_scale.scene.read import footprint_lonlat

    try:
        lon, lat = np.asarray(footprint_lonlat(scene, EDGE_POINTS), dtype=np.float64).T
    except Exception:  # a GCP fit that cannot take its own border
        return None
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        return None
    grow = grow_m + MARGIN_M
    dlat = grow / 110_000.0  # a degree of latitude is at least 110.57 km
    south, north = float(lat.min()) - dlat, float(lat.max()) + dlat
    if north > 89.0 or south < -89.0:
        boxes = [(-180.0, max(south, -90.0), 180.0, 90.0) if north > 89.0 else (-180.0, -90.0, 180.0, north)]
    else:
        lon = (lon + 180.0) % 360.0 - 180.0
        dlon = grow / (111_320.0 * np.cos(np.radians(max(abs(south), abs(north)))))
        if lon.max() - lon.min() <= 180.0:
            boxes = [(float(lon.min()) - dlon, south, float(lon.max()) + dlon, north)]
        else:  # across the antimeridian: its east side in [0, 360)
            east_side = lon % 360.0
            west, east = float(east_side.min()) - dlon, float(east_side.max()) + dlon - 360.0
            boxes = [(west, south, 180.0, north), (-180.0, south, east, north)]
    # a box grown past +-180 (the buffer crosses the antimeridian, the scene does not) wraps round
    boxes = [wrapped for box in boxes for wrapped in _wrap(*box)]
    if crs.is_geographic:
        return boxes
    to_crs = Transformer.from_crs(CRS.from_epsg(4326), crs, always_xy=True)
    t = np.linspace(0.0, 1.0, EDGE_POINTS + 1)
    out = []
    for w, s, e, n in boxes:
        xs = np.concatenate([w + t * (e - w), np.full_like(t, e), w + t * (e - w), np.full_like(t, w)])
        ys = np.concatenate([np.full_like(t, s), s + t * (n - s), np.full_like(t, n), s + t * (n - s)])
        try:
            x, y = (np.asarray(v) for v in to_crs.transform(xs, ys))
        except Exception:
            return None
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            return None
        out.append((float(x.min()), float(y.min()), float(x.max()), float(y.max())))
    return out


def land_rasteriser(
    url: str, buffer_m: float, scene: Scene, fy: float, fx: float
) -> Callable[[int, int, int, int], np.ndarray]:
    """A function (row0, row1, col0, col1) of the model grid -> bool land mask of that block."""
    import shapely
    from affine import Affine
    from pyproj import CRS, Transformer
    from rasterio.features import rasterize

    if not scene.georeferenced:
        raise SceneError(f"--land: {scene.source} has no georeferencing, so land polygons cannot be placed on it")
    vcrs, features = vector_info(url)
    if features == 0:
        raise SceneError(f"--land {storage.redact_url(url)}: no geometries")
    src = CRS.from_user_input(vcrs) if vcrs else CRS.from_epsg(4326)
    windows = footprint_windows(scene, buffer_m, src)
    if windows is None:
        log.warning(
            "--land %s: the scene's surroundings cannot be bounded in the file's CRS, so the whole file is read; "
            "polygons far from the scene pass through projections that do not hold there",
            storage.redact_url(url),
        )
    geoms, _ = read_vector(url, windows)
    if not geoms:  # no land near this scene
        return lambda r0, r1, c0, c1: np.zeros((r1 - r0, c1 - c0), dtype=bool)
    scene_crs = CRS.from_user_input(scene.crs.to_wkt())

    def through(t: Transformer, parts: list) -> list:
        """The parts in t's target CRS, less any it cannot take (a polygon far outside a UTM zone comes
        out infinite, and one infinite vertex would void the whole union)."""
        moved = [shapely.transform(g, lambda c: np.column_stack(t.transform(c[:, 0], c[:, 1]))) for g in parts]
        kept = [g for g in moved if np.isfinite(shapely.get_coordinates(g)).all()]
        return [g if g.is_valid else shapely.make_valid(g) for g in kept]  # a projection may fold a ring

    if buffer_m > 0:
        metric = (
            scene_crs if scene_crs.is_projected and scene_crs.axis_info[0].unit_name in ("metre", "meter") else None
        )
        if metric is None:
            lon, lat = scene.pixel_to_lonlat(np.array([scene.width / 2]), np.array([scene.height / 2]))
            metric = CRS.from_proj4(f"+proj=aeqd +lat_0={lat[0]} +lon_0={lon[0]} +datum=WGS84 +units=m")
        grown = [g.buffer(buffer_m) for g in through(Transformer.from_crs(src, metric, always_xy=True), geoms)]
        parts = through(Transformer.from_crs(metric, scene_crs, always_xy=True), grown)
    else:
        parts = through(Transformer.from_crs(src, scene_crs, always_xy=True), geoms)
    land = shapely.union_all(parts)
    # Scene CRS -> model-grid pixels.
    if scene.transform is not None:
        inverse = ~(scene.transform @ Affine.scale(fx, fy))
        pixels = shapely.transform(land, lambda c: np.column_stack(inverse @ (c[:, 0], c[:, 1])))
    else:
        t = scene.gcp_transformer()

        def to_pixels(c):
            rows, cols = t.rowcol(c[:, 0], c[:, 1], op=lambda v: v)
            return np.column_stack([np.asarray(cols, dtype=np.float64) / fx, np.asarray(rows, dtype=np.float64) / fy])

        pixels = shapely.transform(land, to_pixels)
    pixels = pixels.intersection(shapely.box(0, 0, scene.width / fx + 1, scene.height / fy + 1))
    if pixels.is_empty:
        return lambda r0, r1, c0, c1: np.zeros((r1 - r0, c1 - c0), dtype=bool)
    shapely.prepare(pixels)

    def mask(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        block = shapely.box(c0, r0, c1, r1)
        if not pixels.intersects(block):
            return np.zeros((r1 - r0, c1 - c0), dtype=bool)
        return rasterize(
            [pixels.intersection(block)],
            out_shape=(r1 - r0, c1 - c0),
            transform=Affine.translation(c0, r0),
            fill=0,
            default_value=1,
            dtype="uint8",
        ).astype(bool)

    return mask
