"""Land from a user's vector file: polygons (any format GDAL/OGR reads, through pyogrio), moved to the
scene's CRS, grown by a buffer in metres, and rasterised block by block onto the model grid.

The buffer is applied in metres: in the scene's CRS when it is projected in metres, otherwise in an
azimuthal equidistant projection centred on the scene (distances from its centre are true). Polygons
reach pixels through the inverse of the scene's georeferencing (the affine inverse, or GDAL's GCP
transformer in the inverse direction).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dakter_scale.data import storage
from dakter_scale.scene.read import Scene, SceneError


def read_vector(url: str):
    """(shapely geometries, CRS WKT or None) of every feature in a vector file."""
    import pyogrio
    import shapely

    shown = storage.redact_url(url)
    try:
        meta, _, wkb, _ = pyogrio.raw.read(url, read_geometry=True, skip_features=0, columns=[])
    except Exception as e:  # pyogrio raises DataSourceError / DataLayerError for anything unreadable
        raise SceneError(
            f"--land {shown}: not a readable vector file: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        ) from None
    geoms = [g for g in shapely.from_wkb(wkb) if g is not None and not g.is_empty] if wkb is not None else []
    if not geoms:
        raise SceneError(f"--land {shown}: no geometries")
    return geoms, meta.get("crs")


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
    geoms, vcrs = read_vector(url)
    scene_crs = CRS.from_user_input(scene.crs.to_wkt())
    src = CRS.from_user_input(vcrs) if vcrs else CRS.from_epsg(4326)

    def through(t: Transformer, g):
        return shapely.transform(g, lambda c: np.column_stack(t.transform(c[:, 0], c[:, 1])))

    land = shapely.union_all(geoms)
    if buffer_m > 0:
        metric = (
            scene_crs if scene_crs.is_projected and scene_crs.axis_info[0].unit_name in ("metre", "meter") else None
        )
        if metric is None:
            lon, lat = scene.pixel_to_lonlat(np.array([scene.width / 2]), np.array([scene.height / 2]))
            metric = CRS.from_proj4(f"+proj=aeqd +lat_0={lat[0]} +lon_0={lon[0]} +datum=WGS84 +units=m")
        land = through(
            Transformer.from_crs(metric, scene_crs, always_xy=True),
            through(Transformer.from_crs(src, metric, always_xy=True), land).buffer(buffer_m),
        )
    else:
        land = through(Transformer.from_crs(src, scene_crs, always_xy=True), land)
    # Scene CRS -> model-grid pixels.
    if scene.transform is not None:
        inverse = ~(scene.transform * Affine.scale(fx, fy))
        pixels = shapely.transform(land, lambda c: np.column_stack(inverse * (c[:, 0], c[:, 1])))
    else:
        from rasterio.transform import GCPTransformer

        with GCPTransformer(scene.gcps) as t:

            def to_pixels(c):
                rows, cols = t.rowcol(c[:, 0], c[:, 1], op=lambda v: v)
                return np.column_stack(
                    [np.asarray(cols, dtype=np.float64) / fx, np.asarray(rows, dtype=np.float64) / fy]
                )

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
