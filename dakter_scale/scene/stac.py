"""STAC records of scene predictions (README, "STAC"): ``item.json`` beside each scene's outputs
and ``collection.json`` over a many-scene run, so that catalogues and tile servers (stac-fastapi, titiler,
pystac) index the COGs and the slicks without reading predict.json.

An Item (STAC 1.1.0, the version pystac writes and validates offline; 1.0 readers read it) has the scene's
footprint as geometry and bbox (the product's own footprint for a SAFE, else the outline of its pixels),
the acquisition time as datetime, the projection of the written grid (projection extension: code, shape,
transform), per-band data types and scaling (raster extension), sizes and sha256 multihashes (file
extension), assets for the two COGs, the GeoJSON and the quick-look (role thumbnail), and links to the
source scene (derived_from) and the student that made them (related). A scene without an acquisition
time gets no Item (STAC requires a datetime; the toolkit will not invent one): ``write_item`` says why.

Written by scene/predict.py (the Item, before predict.json, which stays the last file of a scene, the
sign it is done) and scene/many.py (the Collection after a many-scene run's summary, last).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from dakter_scale.data import storage
from dakter_scale.scene import outputs

log = logging.getLogger("dakter_scale")

STAC_VERSION = "1.1.0"
ITEM_FILE, COLLECTION_FILE = "item.json", "collection.json"
EXTENSIONS = {
    "projection": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
}
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def stac_datetime(text: str | None) -> str | None:
    """An acquisition time as RFC 3339 UTC (SAFE's naive UTC times, ISO with an offset, or TIFF's
    ``YYYY:MM:DD HH:MM:SS``), or None when there is none or it cannot be read."""
    if not text:
        return None
    value = None
    for parse in (
        lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00")),
        lambda s: dt.datetime.strptime(s, "%Y:%m:%d %H:%M:%S"),
    ):
        try:
            value = parse(text.strip())
            break
        except ValueError:
            continue
    if value is None:
        return None
    value = value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def _file_fields(path: Path) -> dict:
    h = hashlib.sha256()
    with path.open("rb") as f:  # in chunks: a full IW probability raster is hundreds of MB
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    return {"file:size": path.stat().st_size, "file:checksum": "1220" + digest}  # multihash: sha2-256, 32 bytes


def _projection(path: Path) -> dict:
    """The projection extension's fields of a written GeoTIFF's grid (EPSG code, else WKT2; transform
    unless it is placed by ground control points)."""
    import rasterio

    with rasterio.open(path) as src:
        crs = src.crs
        gcps, gcp_crs = src.gcps if crs is None else (None, None)
        crs = crs or gcp_crs
        out: dict[str, Any] = {"proj:shape": [src.height, src.width]}
        if crs is not None:
            epsg = crs.to_epsg()
            out["proj:code"] = f"EPSG:{epsg}" if epsg else None
            if not epsg:
                out["proj:wkt2"] = crs.to_wkt()
        if not gcps and not src.transform.is_identity:
            t = src.transform
            out["proj:transform"] = [t.a, t.b, t.c, t.d, t.e, t.f]
    return out


def _href(target: str, out: Path) -> str:
    """A link's href to `target` as STAC readers resolve it: a URL or an absolute path as it is; a path
    relative to the working folder (``--scene scene.tif``, ``--student runs/student``) made relative to the
    item's folder `out` (written as given, a reader resolved it against the item: OUT/scene.tif)."""
    target = str(target)
    if "://" in target:
        return target
    # absolute local paths too: an item names no folder of the machine that wrote it (/home/NAME/...)
    try:
        return Path(os.path.relpath(os.path.abspath(target), os.path.abspath(out))).as_posix()
    except ValueError:  # another drive
        return Path(os.path.abspath(target)).as_posix()


def _geometry(scene) -> tuple[dict | None, list[float] | None]:
    from dakter_scale.scene.read import footprint_lonlat

    """The footprint as RFC 7946 GeoJSON (outer rings counter-clockwise) and its bbox. A footprint across
    the antimeridian is two polygons, one each side, and its bbox runs west > east (RFC 7946 5.2)."""
    import shapely
    from shapely.affinity import translate
    from shapely.geometry import mapping
    from shapely.geometry.polygon import orient

    if not scene.georeferenced:
        return None, None
    ring = np.asarray(scene.footprint or footprint_lonlat(scene), dtype=np.float64)
    lons = (ring[:, 0] + 180.0) % 360.0 - 180.0
    if lons.max() - lons.min() <= 180.0:
        polygon = orient(shapely.Polygon(np.column_stack([lons, ring[:, 1]])), 1.0)
        return mapping(polygon), list(polygon.bounds)
    east = np.where(lons < 0, lons + 360.0, lons)  # continuous across 180: cut there, bring the east part back
    whole = shapely.Polygon(np.column_stack([east, ring[:, 1]]))
    west_part = whole.intersection(shapely.box(-180.0, -90.0, 180.0, 90.0))
    east_part = translate(whole.intersection(shapely.box(180.0, -90.0, 540.0, 90.0)), -360.0)
    parts = [orient(p, 1.0) for g in (west_part, east_part) for p in getattr(g, "geoms", [g]) if p.area > 0]
    geometry = mapping(shapely.MultiPolygon(parts))
    (w, s, _, n), (_, s2, e, n2) = west_part.bounds, east_part.bounds
    return geometry, [w, min(s, s2), e, max(n, n2)]


def item(out: Path, record: dict, scene) -> dict | None:
    """The STAC Item of a scene's outputs in `out` (predict.json's `record`, the open `scene`), or None
    when the scene has no acquisition time."""
    when = stac_datetime(record["scene"].get("acquisition_time"))
    if when is None:
        return None
    geometry, bbox = _geometry(scene)
    classes = list(record["student"]["classes"])
    student = record["student"]
    assets: dict[str, dict] = {
        "probabilities": {
            "href": f"./{outputs.PROBABILITIES}",
            "type": COG,
            "title": "class probabilities, one band per class, uint8 = round(255 p)",
            "roles": ["data"],
            "raster:bands": [
                {"name": c, "description": f"p({c}) x 255", "data_type": "uint8", "scale": 1 / 255, "offset": 0.0}
                for c in classes
            ],
        },
        "classes": {
            "href": f"./{outputs.CLASSES_FILE}",
            "type": COG,
            "title": "class map (argmax), " + ", ".join(f"{i} {c}" for i, c in enumerate(classes)),
            "roles": ["data"],
            "raster:bands": [
                {
                    "name": "class",
                    "description": "class index: " + ", ".join(f"{i} {c}" for i, c in enumerate(classes)),
                    "data_type": "uint8",
                    "nodata": outputs.NODATA_CLASS,
                }
            ],
        },
        "slicks": {
            "href": f"./{outputs.SLICKS}",
            "type": "application/geo+json",
            "title": f"{record['slicks']} slick polygons (EPSG:4326)",
            "roles": ["data"],
        },
    }
    if outputs.QUICKLOOK in record.get("outputs", []):  # this run's own (an earlier run's may still lie there)
        assets["thumbnail"] = {
            "href": f"./{outputs.QUICKLOOK}",
            "type": "image/png",
            "title": "quick-look with the slick outlines",
            "roles": ["thumbnail"],
        }
    assets["record"] = {
        "href": f"./{outputs.RECORD}",
        "type": "application/json",
        "title": "predict.json: how the outputs were made",
        "roles": ["metadata"],
    }
    for asset in assets.values():
        path = out / asset["href"][2:]
        if path.is_file():
            asset.update(_file_fields(path))
    properties = {
        "datetime": when,
        **_projection(out / outputs.PROBABILITIES),
        "title": f"oil-slick segmentation of {record['scene'].get('scene_id') or Path(str(record['scene']['source'])).name}",
        "dakter:slicks": record["slicks"],
        "dakter:classes": classes,
        "dakter:vectorised_classes": record["thresholds"]["classes"],
    }
    if record["scene"].get("polarisation"):
        properties["dakter:polarisation"] = record["scene"]["polarisation"]
    if record["scene"].get("time_source"):  # a TIFF's own time is the file's, not always the acquisition's
        properties["dakter:datetime_source"] = record["scene"]["time_source"]
    links = [
        {"rel": "derived_from", "href": _href(record["scene"]["source"], out), "title": "the SAR scene"},
        {
            "rel": "related",
            "href": _href(os.path.join(student["folder"], "student.json"), out)
            if student.get("folder")
            else "student.json",
            "type": "application/json",
            "title": f"the student that produced these: {student.get('arch')} ({student.get('encoder')}), weights sha256 {str(student.get('sha256'))[:16]}",
        },
    ]
    out_item = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": list(EXTENSIONS.values()),
        "id": out.resolve().name,  # "--out ." has no name of its own
        "geometry": geometry,
        "properties": properties,
        "links": links,
        "assets": assets,
    }
    if bbox is not None:
        out_item["bbox"] = bbox
    return out_item


def write_item(out: Path, record: dict, scene) -> dict | None:
    """Write OUT/item.json (atomically, durably) and return it; None, with a log line, without an acquisition time."""
    stac_item = item(out, record, scene)
    path = out / ITEM_FILE
    if stac_item is None:
        path.unlink(missing_ok=True)  # an earlier run's Item would describe other outputs
        log.info("%s: no acquisition time, so no STAC item (STAC requires a datetime)", record["scene"]["source"])
        return None
    fs, fs_path = storage.url_to_fs(str(path))
    storage.write_json(fs, fs_path, stac_item)
    return stac_item


def collection(out: Path, names: list[str]) -> dict:
    """The STAC Collection of a many-scene run in `out`: one item link per scene folder that holds an
    item.json, the extent the union of their bboxes and the span of their datetimes."""
    items = []
    for name in names:
        path = out / name / ITEM_FILE
        if path.is_file():
            items.append((name, json.loads(path.read_text())))
    boxes = [i["bbox"] for _, i in items if i.get("bbox")]
    if any(b[0] > b[2] for b in boxes):  # an item across the antimeridian: its west > east box is not a min/max
        bbox = [-180.0, min(b[1] for b in boxes), 180.0, max(b[3] for b in boxes)]
    else:
        bbox = (
            [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
            if boxes
            else [-180.0, -90.0, 180.0, 90.0]
        )
    # by time, not text: "...00Z" sorts after "...00.500000Z"
    times = sorted(
        (i["properties"]["datetime"] for _, i in items),
        key=lambda t: dt.datetime.fromisoformat(t.replace("Z", "+00:00")),
    )
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": out.resolve().name,
        "title": f"oil-slick segmentations of {len(items)} SAR scenes",
        "description": "Per scene: class probabilities and the class map as COGs, slick polygons as GeoJSON and a quick-look, made by a DAKTer student (jobs/predict.py --scenes).",
        "license": "other",
        "extent": {
            "spatial": {"bbox": [bbox]},
            "temporal": {"interval": [[times[0], times[-1]] if times else [None, None]]},
        },
        "links": [
            {"rel": "item", "href": f"./{name}/{ITEM_FILE}", "type": "application/geo+json", "title": name}
            for name, _ in items
        ],
    }


def write_collection(out: Path, names: list[str]) -> dict:
    """Write OUT/collection.json (atomically, durably) and return it; a rerun that finds it as it would
    write it leaves it untouched, as it leaves the finished scenes."""
    stac_collection = collection(out, names)
    target = out / COLLECTION_FILE
    try:
        if json.loads(target.read_text()) == stac_collection:
            return stac_collection
    except (OSError, ValueError):
        pass
    fs, path = storage.url_to_fs(str(target))
    storage.write_json(fs, path, stac_collection)
    return stac_collection
