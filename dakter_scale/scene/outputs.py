"""What a prediction writes in its output folder, and how.

- ``probabilities.tif``: one uint8 band per class (code = round(255 p)), a Cloud-Optimised GeoTIFF
  (GDAL's COG driver: 512-pixel internal tiles, deflate, overviews by averaging).
- ``classes.tif``: the class map (argmax; land from a land vector file where given), a COG with the
  OSD colour table and nearest-neighbour overviews.
- ``slicks.geojson`` (vectorise.py), ``quicklook.png``, and ``predict.json`` written last, after every
  other output is fsynced (``sync``): a scene is done when its record exists.

Blocks arrive from the blender in any order and are written as windows into tiled GeoTIFFs in a
temporary folder inside the output (bounded memory: GDAL's block cache); the COG driver then copies
them with overviews, streaming as well.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from dakter_scale.data import storage
from dakter_scale.data.osd import OSD_COLOURS

PROBABILITIES, CLASSES_FILE, SLICKS, QUICKLOOK, RECORD = (
    "probabilities.tif",
    "classes.tif",
    "slicks.geojson",
    "quicklook.png",
    "predict.json",
)
WORK = ".work"
NODATA_CLASS = 255  # classes.tif where the scene holds no data (its declared no-data value)


def georef_kwargs(crs, transform, gcps) -> dict:
    """rasterio profile entries placing the model grid (transform, or GCPs scaled to it)."""
    if transform is not None:
        return {"crs": crs, "transform": transform}
    return {}


class RasterSink:
    """Tiled GeoTIFFs being filled window by window, turned into COGs by ``finish``."""

    def __init__(self, out: Path, height: int, width: int, classes: list[str], crs=None, transform=None, gcps=None):
        import rasterio

        self.out, self.height, self.width, self.classes = out, height, width, classes
        self.work = out / WORK
        self.work.mkdir(parents=True, exist_ok=True)
        profile = dict(
            driver="GTiff",
            height=height,
            width=width,
            dtype="uint8",
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
            BIGTIFF="IF_SAFER",
        )
        profile.update(georef_kwargs(crs, transform, gcps))
        try:
            self.prob = rasterio.open(self.work / PROBABILITIES, "w", count=len(classes), **profile)
            self.cls = rasterio.open(self.work / CLASSES_FILE, "w", count=1, nodata=NODATA_CLASS, **profile)
            if transform is None and gcps:
                self.prob.gcps = (gcps, crs)
                self.cls.gcps = (gcps, crs)
            for i, name in enumerate(classes, 1):
                self.prob.set_band_description(i, f"p({name}) x 255")
            self.cls.set_band_description(
                1, "class index: " + ", ".join(f"{i} {c}" for i, c in enumerate(classes)) + f"; {NODATA_CLASS} no data"
            )
            colours = {
                i: (*OSD_COLOURS[i], 255) if i < len(OSD_COLOURS) else (255, 255, 255, 255) for i in range(len(classes))
            }
            self.cls.write_colormap(1, colours | {NODATA_CLASS: (0, 0, 0, 0)})
        except BaseException:
            self.abort()  # the caller never gets a sink to abort: the first raster would stay in .work
            raise

    def write(self, y0: int, x0: int, probs: np.ndarray, class_map: np.ndarray) -> None:
        from rasterio.windows import Window

        h, w = probs.shape[1:]
        window = Window(x0, y0, w, h)
        codes = probs * 255.0  # rounded and clipped in place: one temporary array per block, not three
        np.rint(codes, out=codes)
        np.clip(codes, 0, 255, out=codes)
        self.prob.write(codes.astype(np.uint8), window=window)
        self.cls.write(class_map[None].astype(np.uint8), window=window)

    def read_band(self, band: int, r0: int, r1: int) -> np.ndarray:
        """Rows [r0, r1) of a probability band from the (closed and reopened) work file."""
        from rasterio.windows import Window

        return self._reader_prob.read(band, window=Window(0, r0, self.width, r1 - r0))

    def read_classes(self, r0: int, r1: int) -> np.ndarray:
        from rasterio.windows import Window

        return self._reader_cls.read(1, window=Window(0, r0, self.width, r1 - r0))

    def close_for_reading(self) -> None:
        import rasterio

        self.prob.close()
        self.cls.close()
        self._reader_prob = rasterio.open(self.work / PROBABILITIES)
        self._reader_cls = rasterio.open(self.work / CLASSES_FILE)

    def finish(self) -> None:
        """COGs in the output folder; the work files are removed."""
        from rasterio.shutil import copy

        self._reader_prob.close()
        self._reader_cls.close()
        # probabilities average into their overviews; class ids must not (a mean of ids is no class)
        for name, overviews in ((PROBABILITIES, "AVERAGE"), (CLASSES_FILE, "NEAREST")):
            copy(
                self.work / name,
                self.out / name,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=512,
                OVERVIEW_RESAMPLING=overviews,
                BIGTIFF="IF_SAFER",
            )
        shutil.rmtree(self.work, ignore_errors=True)

    def abort(self) -> None:
        for handle in ("prob", "cls", "_reader_prob", "_reader_cls"):
            try:
                getattr(self, handle).close()
            except Exception:  # not opened yet, or already closed
                pass
        shutil.rmtree(self.work, ignore_errors=True)


def quicklook(path: Path, image: np.ndarray, polygons: list, scale: tuple[float, float]) -> None:
    """A grayscale rendering of the scene (8-bit codes, decimated) with slick outlines drawn in cyan
    (oil) or red (other classes). ``polygons``: (class name, shapely geometry in model-grid pixels);
    ``scale``: model pixels per quick-look pixel (rows, cols)."""
    from PIL import Image, ImageDraw

    sy, sx = scale
    rgb = Image.fromarray(np.repeat(image[:, :, None], 3, axis=2))
    draw = ImageDraw.Draw(rgb)
    for name, geometry in polygons:
        colour = (0, 255, 255) if name == "oil" else (255, 64, 64)
        parts = geometry.geoms if hasattr(geometry, "geoms") else [geometry]
        for part in parts:
            for ring in [part.exterior, *part.interiors]:
                xy = [(x / sx, y / sy) for x, y in ring.coords]
                if len(xy) >= 2:
                    draw.line(xy, fill=colour, width=2)
    rgb.save(path)


def sync(out: Path, names: list[str]) -> None:
    """Each named output's bytes forced to the disk, then the folder's entries: called before
    ``write_record``, so that after a power loss a predict.json never stands beside a truncated COG."""
    for name in names:
        with open(out / name, "rb") as f:
            storage.fsync(f)
    storage.fsync_folder(str(out))


def write_record(out: Path, record: dict) -> None:
    """predict.json, atomically (temporary file, fsync, rename, folder fsync): a scene is done when it exists."""
    tmp = out / (RECORD + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / RECORD)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a failed rename leaves no half-written record behind
        raise
    storage.fsync_folder(str(out))
