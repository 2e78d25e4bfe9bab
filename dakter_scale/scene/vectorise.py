"""Probabilities -> slick polygons: hysteresis, connected components over row bands, GeoJSON.

Hysteresis: a slick is a 4-connected region of pixels whose class probability is >= the outline
threshold and which holds at least one pixel >= the seed threshold (and is not land). Probabilities
come from the uint8 probability raster (p = code / 255), so thresholds act at that precision.

Bounded memory: the map is read in bands of rows. Pass 1 labels each band's outline pixels
(scipy.ndimage), joins labels that touch across a band boundary (union-find) and sums per-component
statistics (pixels, sum and max of p); pass 2 relabels each band with the component roots kept
(seeded, at least ``min_area_m2``) and polygonises it with rasterio.features.shapes; each slick's
band pieces share exact integer-pixel edges, so shapely's union joins them. Memory: one band plus
per-component counters and the kept polygons.

Geometry: polygons are simplified in pixels (``simplify_m`` / pixel spacing), moved to the scene's
CRS through its georeferencing (affine or GCPs) and to EPSG:4326; the area is the geodesic area on
the WGS84 ellipsoid (pyproj.Geod), which is what an equal-area projection preserves, never an area in
degrees. Rings follow RFC 7946's right-hand rule. A scene without georeferencing keeps pixel
coordinates and areas in pixels, and the file says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


@dataclass(frozen=True)
class VectoriseOptions:
    seed: float = 0.6  # a slick holds at least one pixel at or above this probability
    outline: float = 0.4  # ... and is the connected region at or above this one
    min_area_m2: float = 0.0  # smaller slicks are dropped (m^2; scene pixels without a pixel spacing)
    simplify_m: float = 0.0  # Douglas-Peucker tolerance in metres (scene pixels without a pixel spacing)
    band_rows: int = 1024

    def codes(self) -> tuple[int, int]:
        """The thresholds on the uint8 probability codes (code >= round(255 t))."""
        return int(round(255 * self.seed)), int(round(255 * self.outline))


def hysteresis(prob: np.ndarray, seed: float, outline: float, valid: np.ndarray | None = None) -> np.ndarray:
    """The whole-array rule (the reference the band-wise pass must match): the 4-connected components
    of prob >= outline (within valid) that contain a pixel >= seed."""
    from scipy import ndimage

    mask = prob >= outline
    if valid is not None:
        mask &= valid
    labels, n = ndimage.label(mask, structure=FOUR)
    if n == 0:
        return mask
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[np.unique(labels[mask & (prob >= seed)])] = True
    seeded[0] = False
    return seeded[labels]


class _UnionFind:
    def __init__(self) -> None:
        self.parent = np.zeros(1, dtype=np.int64)

    def grow(self, n: int) -> None:
        old = len(self.parent)
        if n + 1 > old:
            self.parent = np.concatenate([self.parent, np.arange(old, n + 1, dtype=np.int64)])

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:  # path compression
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


@dataclass
class Slick:
    """One slick in model-grid pixel coordinates, before georeferencing."""

    label: int
    pixels: int
    mean: float
    max: float
    geometry: object = field(repr=False)  # shapely (Multi)Polygon in pixel coordinates


BandReader = Callable[
    [int, int], tuple[np.ndarray, np.ndarray]
]  # (row0, row1) -> (codes uint8 (h, W), valid bool (h, W))


def find_slicks(
    read_band: BandReader, height: int, width: int, opts: VectoriseOptions, pixel_area: float = 1.0
) -> list[Slick]:
    """The slicks of one class over an H x W probability raster read band by band (module docstring).
    ``pixel_area`` (a model pixel's m^2, or its scene pixels without a spacing) turns ``min_area_m2`` into a count
    of model pixels."""
    from scipy import ndimage

    seed_code, outline_code = opts.codes()
    uf = _UnionFind()
    counts, sums, maxes = [np.zeros(1, np.int64)], [np.zeros(1, np.float64)], [np.zeros(1, np.int64)]
    offsets, total, previous = [], 0, None
    for r0 in range(0, height, opts.band_rows):
        r1 = min(height, r0 + opts.band_rows)
        codes, valid = read_band(r0, r1)
        mask = (codes >= outline_code) & valid
        labels, n = ndimage.label(mask, structure=FOUR)
        offsets.append(total)
        if n:
            idx = np.arange(1, n + 1)
            counts.append(np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64))
            sums.append(ndimage.sum_labels(codes, labels, idx).astype(np.float64))
            maxes.append(ndimage.maximum(codes, labels, idx).astype(np.int64))
        glob = np.where(labels > 0, labels + total, 0)
        uf.grow(total + n)
        if previous is not None:
            touching = (previous > 0) & (glob[0] > 0)
            for a, b in set(zip(previous[touching].tolist(), glob[0][touching].tolist())):
                uf.union(a, b)
        previous = glob[-1].copy()
        total += n
    roots = uf.roots()
    count, psum, pmax = np.concatenate(counts), np.concatenate(sums), np.concatenate(maxes)
    root_count = np.bincount(roots, weights=count, minlength=total + 1)
    root_sum = np.bincount(roots, weights=psum, minlength=total + 1)
    root_max = np.zeros(total + 1, dtype=np.int64)
    np.maximum.at(root_max, roots, pmax)
    min_pixels = max(1.0, opts.min_area_m2 / pixel_area) if opts.min_area_m2 > 0 else 1.0
    keep = (root_max >= seed_code) & (root_count >= min_pixels)
    keep[0] = False
    if not keep.any():
        return []
    kept_root = np.where(keep[roots], roots, 0)
    return _polygons(read_band, height, opts, outline_code, offsets, kept_root, root_count, root_sum, root_max)


def _polygons(
    read_band: BandReader,
    height: int,
    opts: VectoriseOptions,
    outline_code: int,
    offsets,
    kept_root,
    root_count,
    root_sum,
    root_max,
) -> list[Slick]:
    from affine import Affine
    from rasterio.features import shapes
    from scipy import ndimage
    from shapely.geometry import shape
    from shapely.ops import unary_union

    pieces: dict[int, list] = {}
    for band, r0 in enumerate(range(0, height, opts.band_rows)):
        r1 = min(height, r0 + opts.band_rows)
        codes, valid = read_band(r0, r1)
        labels, _ = ndimage.label((codes >= outline_code) & valid, structure=FOUR)
        ids = np.where(labels > 0, kept_root[np.where(labels > 0, labels + offsets[band], 0)], 0).astype(np.int32)
        if not ids.any():
            continue
        for geom, value in shapes(ids, mask=ids > 0, connectivity=4, transform=Affine.translation(0, r0)):
            pieces.setdefault(int(value), []).append(shape(geom))
    slicks = []
    for root, parts in sorted(pieces.items()):
        geometry = unary_union(parts) if len(parts) > 1 else parts[0]
        n = int(root_count[root])
        slicks.append(Slick(root, n, float(root_sum[root]) / n / 255.0, float(root_max[root]) / 255.0, geometry))
    return slicks


# -- georeferencing and GeoJSON ---------------------------------------------------------------------------


def _to_crs(geometry, to_xy: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]):
    import shapely

    def move(coords: np.ndarray) -> np.ndarray:
        x, y = to_xy(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geometry, move)


def features(
    slicks: list[Slick],
    class_name: str,
    *,
    to_lonlat: Callable | None,
    scale: tuple[float, float],
    simplify_px: float,
    extra: dict,
) -> list[dict]:
    """GeoJSON features of one class's slicks. ``to_lonlat(cols, rows)`` maps scene pixel-edge
    coordinates to (lon, lat); None keeps pixel coordinates. ``scale``: scene pixels per model pixel
    (rows, cols), per axis: grid sides are rounded separately, so a narrow scene's differ by percents."""
    from pyproj import Geod
    from shapely.geometry import mapping
    from shapely.geometry.polygon import orient
    from shapely.ops import unary_union

    sy, sx = scale
    geod = Geod(ellps="WGS84")
    out = []
    for s in slicks:
        g = s.geometry.simplify(simplify_px, preserve_topology=True) if simplify_px > 0 else s.geometry
        g = _to_crs(g, lambda c, r: (c * sx, r * sy))
        if to_lonlat is not None:
            g = _to_crs(g, to_lonlat)
            area = abs(geod.geometry_area_perimeter(g)[0])
        else:
            area = None
        g = _orient(g, orient, unary_union)
        c = g.centroid
        props = {
            "class": class_name,
            "area_m2": round(area, 1) if area is not None else None,
            "area_pixels": round(float(s.geometry.area) * sy * sx, 1),
            "pixel_count": s.pixels,
            "mean_probability": round(s.mean, 4),
            "max_probability": round(s.max, 4),
            "centroid": [round(c.x, 7), round(c.y, 7)],
            **extra,
        }
        out.append(
            {
                "type": "Feature",
                "geometry": _rounded(mapping(g), 7 if to_lonlat is not None else 3),
                "properties": props,
            }
        )
    return out


def _orient(g, orient, unary_union):
    if g.geom_type == "Polygon":
        return orient(g, 1.0)
    if g.geom_type == "MultiPolygon":
        from shapely.geometry import MultiPolygon

        return MultiPolygon([orient(p, 1.0) for p in g.geoms])
    return g


def _rounded(geometry: dict, digits: int) -> dict:
    def walk(c):
        return (
            [walk(x) for x in c]
            if isinstance(c, (list, tuple)) and c and isinstance(c[0], (list, tuple))
            else [round(float(v), digits) for v in c]
        )

    return {"type": geometry["type"], "coordinates": walk(geometry["coordinates"])}


def feature_collection(features_: list[dict], georeferenced: bool, extra: dict | None = None) -> dict:
    fc: dict = {"type": "FeatureCollection", "features": features_}
    if not georeferenced:
        # RFC 7946 allows only WGS84 longitude/latitude; a scene without georeferencing cannot give them.
        fc["coordinates"] = (
            "pixel (column, row) of the scene, not RFC 7946 longitude/latitude: the scene has no georeferencing"
        )
    if extra:
        fc.update(extra)
    return fc


def write_geojson(path, fc: dict) -> None:
    from pathlib import Path

    Path(path).write_text(json.dumps(fc, separators=(",", ":")) + "\n")
