"""One scene end to end (docs/inference.md).

``Predictor`` loads a student once and predicts scene after scene:

1. open the scene (read.py), decide the radiometric conversion and the model grid (radiometry.py);
2. read tiles of the model grid window by window on a helper thread (codes -> [-1, 1], resampled
   to the training pixel spacing when it differs), run them through the student in batches (bf16
   autocast on a GPU that supports it), softmax, and blend the overlapping tiles on a second helper
   thread (tile.py);
3. write each finished block into tiled GeoTIFFs (probabilities, class map; land from a land vector
   file if given), vectorise each asked class band by band (vectorise.py), write the COGs, the
   GeoJSON, the quick-look PNG and, last, predict.json (outputs.py).

Peak memory: a few batches of tiles and of probabilities, the blender's overlap band, one vectorising band, GDAL's block
cache; none of them grows with the number of rows, only the blender's band grows with the width.

Many scenes: scene/many.py (``predict_many``, a ``Predictor`` per Ray actor or in this process).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import math
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from dakter_scale import __version__
from dakter_scale.data import storage
from dakter_scale.data.real import normalise
from dakter_scale.errors import UserError
from dakter_scale.scene import outputs, stac
from dakter_scale.scene.radiometry import (
    Conversion,
    Scale,
    decimation,
    default_convention,
    lut_at,
    plan_conversion,
    plan_scale,
    to_codes,
)
from dakter_scale.scene.read import Scene, SceneError, open_scene
from dakter_scale.scene.tile import Blender
from dakter_scale.scene.vectorise import VectoriseOptions, feature_collection, features, find_slicks, write_geojson

log = logging.getLogger("dakter_scale")

QUICKLOOK_SIDE = 1024
# GDAL's block cache defaults to 5 % of the machine's memory and fills with every block written: capped, so that
# a scene's peak memory does not depend on the machine or grow with the scene up to that share.
GDAL_CACHE_MB = 256
# Vectorising and the quick-look read whole-width bands of rows: their height comes from a pixel budget, so a
# wide scene reads fewer rows at a time and the band's arrays (codes, labels, ids: ~25 bytes a pixel) stay the
# same size (bench/bench_predict.py: with a fixed 1,024 rows, peak memory grew by 370 MB from 8k to 20k pixels wide).
BAND_PIXELS = 1 << 22
WINDOW = "separable cosine-squared (Hann) ramp over the overlap, normalised to sum to 1 (scene/tile.py)"
# Bounds checked before any tile runs (docs/inference.md, "Caps"); the flags of the same names raise them.
# A full IW GRDH scene is 25,788 x 16,685 = 430 megapixels; a model pixel of 64 scene pixels is 640 m at 10 m.
MAX_SCENE_PIXELS = 2_000_000_000
MAX_GRID_PIXELS = 2_000_000_000
MAX_RESAMPLE_FACTOR = 64.0
# The blender keeps classes x overlap x width float32 (tile.py), a vectorising band at least 16 rows of the
# width: the grid's width is capped on its own (not a flag), so that a 1-row, 10^9-column grid is refused too.
MAX_GRID_SIDE = 1 << 18


class PredictError(UserError, ValueError):
    """A prediction that cannot run as asked; the message names the flag or the file."""


@dataclass(frozen=True)
class PredictOptions:
    tile: int = 512  # model pixels per tile side
    overlap: int = 64  # model pixels shared by neighbouring tiles (blended)
    batch_size: int = 8
    classes: tuple[str, ...] = ("oil",)  # classes vectorised into slicks.geojson
    seed_threshold: float = 0.6
    outline_threshold: float = 0.4
    min_area_m2: float = 0.0
    simplify_m: float = 0.0
    polarisation: str = "VV"
    band: int | None = None
    scene_radiometry: str = "auto"
    db_window: tuple[float, float] | None = None
    allow_radiometry_mismatch: bool = False
    pixel_spacing: float | None = None  # the training data's spacing, when the student has none
    land: str | None = None  # a vector file of land polygons (any format GDAL/OGR reads)
    land_buffer_m: float = 0.0
    require_georeferencing: bool = False
    quicklook: bool = True
    band_rows: int = 1024
    max_scene_pixels: int = MAX_SCENE_PIXELS
    max_grid_pixels: int = MAX_GRID_PIXELS
    max_resample_factor: float = MAX_RESAMPLE_FACTOR

    def to_json(self) -> dict:
        d = asdict(self)
        d["classes"], d["db_window"] = list(self.classes), list(self.db_window) if self.db_window else None
        d["land"] = storage.redact_url(self.land) if self.land else None
        return d


def student_hash(directory: str | Path) -> str:
    h = hashlib.sha256()
    with open(Path(directory) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Predictor:
    """A student loaded once; ``__call__(scene, out)`` predicts one scene into a folder."""

    def __init__(
        self,
        student: str | Path | torch.nn.Module,
        options: PredictOptions,
        device: str | None = None,
        info: dict | None = None,
        progress: bool = False,
    ):
        from dakter_scale.student.models import load_student

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(student, torch.nn.Module):  # a segmenter given directly (tests, benchmarks)
            assert info is not None, "a module needs its student info"
            self.model, self.info, self.student_dir, self.hash = student.to(self.device).eval(), info, None, None
        else:
            self.model, self.info = load_student(student, self.device)
            self.student_dir, self.hash = str(student), student_hash(student)
        self.classes = list(self.info["classes"])
        self.options = self._check(options)
        self.convention = default_convention(self.info)
        self.progress = progress
        self.autocast = self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def _check(self, o: PredictOptions) -> PredictOptions:
        where = self.student_dir or "the student"
        missing = [c for c in o.classes if c not in self.classes]
        if missing:
            raise PredictError(
                f"--classes {','.join(missing)}: not a class of {where}, whose classes are {', '.join(self.classes)} (a student from another class set?)"
            )
        for name, value, low, high in (
            ("--tile", o.tile, 32, 8192),
            ("--overlap", o.overlap, 0, o.tile - 1),
            ("--batch-size", o.batch_size, 1, 4096),
            ("--seed-threshold", o.seed_threshold, 0, 1),
            ("--outline-threshold", o.outline_threshold, 0, 1),
            ("--min-area", o.min_area_m2, 0, None),
            ("--simplify", o.simplify_m, 0, None),
            ("--land-buffer", o.land_buffer_m, 0, None),
            ("--max-scene-pixels", o.max_scene_pixels, 1, None),
            ("--max-grid-pixels", o.max_grid_pixels, 1, None),
            ("--max-resample-factor", o.max_resample_factor, 1, None),
        ):
            if not math.isfinite(value) or value < low or (high is not None and value > high):
                raise PredictError(f"{name} must be in [{low}, {high if high is not None else 'inf'}], got {value}")
        if o.outline_threshold > o.seed_threshold:
            raise PredictError(
                f"--outline-threshold {o.outline_threshold} is above --seed-threshold {o.seed_threshold}; hysteresis needs outline <= seed"
            )
        if o.pixel_spacing is not None and not (o.pixel_spacing > 0 and math.isfinite(o.pixel_spacing)):
            raise PredictError(f"--pixel-spacing must be a positive number of metres, got {o.pixel_spacing}")
        return o

    # -- one scene ---------------------------------------------------------------------------------

    def __call__(self, scene_url: str, out: str | Path, lease_ref: dict | None = None) -> dict:
        """Predict one scene into ``out``. The run holds ``out``'s lease (data/lease.py) while it writes;
        with ``lease_ref`` (a many-scene run whose driver holds the lease of the folder above) it checks
        that lease instead, before predict.json."""
        import rasterio

        check_out(scene_url, out)
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            return self._predict(scene_url, Path(out), lease_ref)

    def _predict(self, scene_url: str, out: Path, lease_ref: dict | None) -> dict:
        from dakter_scale.data.lease import Lease, check_ref

        o = self.options
        t_start = time.time()
        timings: dict[str, float] = {}
        with (
            open_scene(scene_url, polarisation=o.polarisation, band=o.band, radiometry=o.scene_radiometry) as scene,
            contextlib.ExitStack() as held,
        ):
            if o.require_georeferencing and not scene.georeferenced:
                raise SceneError(
                    f"{scene.source}: no georeferencing (no geotransform, no ground control points) but a georeferenced output was asked for (--require-georeferencing)"
                )
            conversion = plan_conversion(
                scene.radiometry,
                scene.calibration is not None,
                self.convention,
                o.db_window,
                o.allow_radiometry_mismatch,
            )
            scale = plan_geometry(scene, plan_scale(scene.pixel_spacing(), self.info, o.pixel_spacing))
            grid_h, grid_w = plan_grid(scene, scale, o)
            fy, fx = scene.height / grid_h, scene.width / grid_w  # exact scene pixels per model pixel per axis
            out.mkdir(parents=True, exist_ok=True)
            # One run writes a folder at a time: two would share .work and remove each other's files.
            lease = (
                held.enter_context(Lease(str(out), purpose=f"predict {scene.source}").acquire())
                if lease_ref is None
                else None
            )

            def fence() -> None:
                """Before each write into OUT (data/lease.py): a run that lost the folder writes nothing more."""
                if lease is not None:
                    lease.check()
                else:
                    check_ref(lease_ref)

            (out / outputs.RECORD).unlink(missing_ok=True)  # a rerun into a finished folder starts over
            (out / stac.ITEM_FILE).unlink(missing_ok=True)
            transform, gcps = self._grid_georef(scene, fy, fx)
            land_class = self.classes.index("land") if "land" in self.classes else None
            land_mask = self._land_rasteriser(scene, fy, fx, grid_w) if o.land else None
            sink = outputs.RasterSink(out, grid_h, grid_w, self.classes, scene.crs, transform, gcps)
            try:
                t0, c0 = time.time(), time.process_time()
                tiles = self._infer(scene, conversion, (grid_h, grid_w), (fy, fx), sink, land_mask, land_class)
                timings["tiles_seconds"] = round(time.time() - t0, 3)
                # All threads of this process (model, reader, writer): on a shared machine the CPU time moves less than the wall time.
                timings["tiles_cpu_seconds"] = round(time.process_time() - c0, 3)
                sink.close_for_reading()
                t0 = time.time()
                fc, drawn = self._vectorise(scene, sink, grid_h, grid_w, (fy, fx), scale, land_class)
                timings["vectorise_seconds"] = round(time.time() - t0, 3)
                t0 = time.time()
                fence()  # the rasters move from .work into the folder: only while it is still this run's
                sink.finish()
                timings["cog_seconds"] = round(time.time() - t0, 3)
            except BaseException:
                sink.abort()
                raise
            fence()
            write_geojson(out / outputs.SLICKS, fc)
            if o.quicklook:
                t0 = time.time()
                fence()
                self._quicklook(scene, conversion, out, drawn, (fy, fx))
                timings["quicklook_seconds"] = round(time.time() - t0, 3)
            timings["total_seconds"] = round(time.time() - t_start, 3)
            timings["tiles_per_second"] = (
                round(tiles["count"] / timings["tiles_seconds"], 3) if timings["tiles_seconds"] > 0 else None
            )
            record = self._record(scene, conversion, scale, (grid_h, grid_w), tiles, fc, timings)
            fence()
            stac.write_item(
                out, record, scene
            )  # item.json (when the scene has an acquisition time), before predict.json
            outputs.sync(out, record["outputs"])  # every output on disk before the record that says the scene is done
            fence()
            outputs.write_record(out, record)
        return record

    def _grid_georef(self, scene: Scene, fy: float, fx: float):
        from affine import Affine
        from rasterio.control import GroundControlPoint

        if scene.transform is not None:
            return scene.transform @ Affine.scale(fx, fy), None
        if scene.gcps:
            return None, [
                GroundControlPoint(row=g.row / fy, col=g.col / fx, x=g.x, y=g.y, z=g.z, id=g.id) for g in scene.gcps
            ]
        return None, None

    def _infer(
        self,
        scene: Scene,
        conversion: Conversion,
        grid: tuple[int, int],
        f: tuple[float, float],
        sink,
        land_mask,
        land_class,
    ) -> dict:
        o = self.options
        grid_h, grid_w = grid
        k = len(self.classes)

        def emit(y0: int, x0: int, block: np.ndarray) -> None:
            probs, valid = block[:k], block[k] >= 0.5
            class_map = probs.argmax(axis=0).astype(np.uint8)
            if land_mask is not None:
                on_land = land_mask(y0, y0 + block.shape[1], x0, x0 + block.shape[2])
                if land_class is not None:
                    class_map[on_land] = land_class
                else:  # a student without a land class (SOS: background, oil): land is certain background
                    probs = probs.copy()  # a new array: the block is the blender's canvas
                    probs[:, on_land] = 0.0
                    probs[0, on_land] = 1.0
                    class_map[on_land] = 0
            if not valid.all():
                class_map[~valid] = outputs.NODATA_CLASS
                probs = probs * valid  # a new array: the block is the blender's canvas
            sink.write(y0, x0, probs, class_map)

        # The blender's last channel is the fraction of the blended tiles that saw data at each pixel.
        blender = Blender(grid_h, grid_w, o.tile, o.overlap, k + 1, emit)
        reader = _TileReader(scene, conversion, blender, f, depth=2 * o.batch_size)
        writer = _TileWriter(blender)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=blender.count, desc=f"predict {Path(scene.source).name}", unit="tile", leave=False)
        forward = 0.0
        try:
            done = False
            while not done:
                batch = reader.take(o.batch_size)
                done = len(batch) < o.batch_size
                if not batch:
                    break
                t0 = time.perf_counter()
                probs = self.forward(torch.stack([x for _, _, x, _ in batch]))
                forward += time.perf_counter() - t0
                valid = np.stack([v for _, _, _, v in batch])[:, None].astype(np.float32)
                writer.put([(i, j) for i, j, _, _ in batch], np.concatenate([probs, valid], axis=1))
                if bar is not None:
                    bar.update(len(batch))
            writer.close()
        finally:
            reader.stop()
            writer.stop()
            if bar is not None:
                bar.close()
        return {
            "count": blender.count,
            "rows": len(blender.ys),
            "cols": len(blender.xs),
            "tile": [blender.th, blender.tw],
            "forward_seconds": round(forward, 3),
            "read_seconds": round(reader.seconds, 3),
            "blend_write_seconds": round(writer.seconds, 3),
            "blend_carry_peak_bytes": writer.peak_carry,
        }

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> np.ndarray:
        """x (B, 1, h, w) in [-1, 1] -> probabilities (B, K, h, w) float32 numpy; reflect-padded to a
        multiple of 32 (the encoders' total stride) and cropped back."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        x = x.to(self.device, non_blocking=True)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(x)
        return torch.softmax(logits[..., :h, :w].float(), dim=1).cpu().numpy()

    def _land_rasteriser(self, scene: Scene, fy: float, fx: float, grid_w: int):
        from dakter_scale.scene.land import land_rasteriser

        return land_rasteriser(self.options.land, self.options.land_buffer_m, scene, fy, fx)

    def _vectorise(
        self, scene: Scene, sink, grid_h: int, grid_w: int, f: tuple[float, float], scale: Scale, land_class: int | None
    ):
        o = self.options
        vopts = VectoriseOptions(
            o.seed_threshold, o.outline_threshold, o.min_area_m2, o.simplify_m, band_rows(o.band_rows, grid_w)
        )
        if scale.axes is not None:  # scene pixels not square: the model pixel's sides from theirs
            dy, dx = scene.axis_spacing()
            model_spacing = math.sqrt(dy * f[0] * dx * f[1])
        else:
            spacing = scene.pixel_spacing()
            model_spacing = spacing * math.sqrt(f[0] * f[1]) if spacing else None  # a square of the model pixel's area
        # --min-area and --simplify are metres, or scene pixels when the scene has no spacing (jobs/predict.py's help):
        # a model pixel is fy x fx scene pixels, so a resampled scene's slicks are measured as area_pixels is.
        pixel_area = model_spacing**2 if model_spacing else f[0] * f[1]
        simplify_px = o.simplify_m / (model_spacing if model_spacing else math.sqrt(f[0] * f[1]))
        to_lonlat = scene.pixel_to_lonlat if scene.georeferenced else None
        extra = {"scene_id": scene.scene_id, "acquisition_time": scene.acquisition_time}
        feats, drawn = [], []
        for name in o.classes:
            c = self.classes.index(name)

            def read_band(r0: int, r1: int, c=c):
                classes = sink.read_classes(r0, r1)
                # A pixel the class map calls land (the model's land class, or the land file) never holds a slick.
                valid = classes != land_class if land_class is not None else np.ones(classes.shape, dtype=bool)
                return sink.read_band(c + 1, r0, r1), valid

            slicks = find_slicks(read_band, grid_h, grid_w, vopts, pixel_area)
            feats += features(slicks, name, to_lonlat=to_lonlat, scale=f, simplify_px=simplify_px, extra=extra)
            drawn += [(name, s.geometry) for s in slicks]
        for i, feat in enumerate(feats):
            feat["id"] = i
        fc = feature_collection(
            feats,
            scene.georeferenced,
            {"scene": scene.source, "scene_id": scene.scene_id, "acquisition_time": scene.acquisition_time},
        )
        return fc, drawn

    def _quicklook(self, scene: Scene, conversion: Conversion, out: Path, drawn: list, f: tuple[float, float]) -> None:
        """The scene's 8-bit codes decimated to QUICKLOOK_SIDE on the long side (read decimated by the reader,
        band by band, so memory follows the quick-look, not the scene), with the slicks (model-grid pixels) drawn on it."""
        step = max(1, math.ceil(max(scene.height, scene.width) / QUICKLOOK_SIDE))
        out_h, out_w = -(-scene.height // step), -(-scene.width // step)
        sy, sx = scene.height / out_h, scene.width / out_w  # scene pixels per quick-look pixel
        image = np.zeros((out_h, out_w), dtype=np.uint8)
        cols = (np.arange(out_w) + 0.5) * sx - 0.5  # quick-look pixel centres in scene pixels (the LUT's positions)
        resampling = decimation(scene.radiometry)
        band = 128
        for q0 in range(0, out_h, band):
            q1 = min(out_h, q0 + band)
            r0, r1 = q0 * sy, min(float(scene.height), q1 * sy)
            raw = (
                scene.read(r0, r1, 0, scene.width, out_shape=(q1 - q0, out_w), resampling=resampling)
                if step > 1
                else scene.read(q0, q1, 0, scene.width)
            )
            image[q0:q1] = to_codes(raw, conversion, _lut(scene, (np.arange(q0, q1) + 0.5) * sy - 0.5, cols))
        outputs.quicklook(out / outputs.QUICKLOOK, image, drawn, (sy / f[0], sx / f[1]))

    def _record(
        self, scene: Scene, conversion: Conversion, scale: Scale, grid, tiles: dict, fc: dict, timings: dict
    ) -> dict:
        o = self.options
        return {
            "format": 1,
            "code_version": __version__,
            "student": {
                "folder": self.student_dir,
                "sha256": self.hash,
                "arch": self.info.get("arch"),
                "encoder": self.info.get("encoder"),
                "classes": self.classes,
                "resolution": self.info.get("resolution"),
                "crop": self.info.get("crop"),
                "radiometry": self.convention,
                "pixel_spacing_m": self.info.get("pixel_spacing_m"),
            },
            "scene": {
                "source": scene.source,
                "kind": scene.kind,
                "scene_id": scene.scene_id,
                "acquisition_time": scene.acquisition_time,
                "time_source": scene.time_source,
                "polarisation": scene.polarisation,
                "height": scene.height,
                "width": scene.width,
                "dtype": scene.dtype,
                "georeferenced": scene.georeferenced,
                "georeferencing": "geotransform" if scene.transform is not None else "gcps" if scene.gcps else None,
                "crs": scene.crs.to_string() if scene.crs is not None else None,
                "calibrated": scene.calibration is not None,
                "nodata": scene.nodata,
            },
            "conventions": {
                "radiometry": conversion.to_json(),
                "scale": scale.to_json(),
                "grid": {"height": grid[0], "width": grid[1]},
                "coordinates": "EPSG:4326 longitude/latitude (RFC 7946)"
                if scene.georeferenced
                else "scene pixels (no georeferencing)",
                "area": "geodesic on the WGS84 ellipsoid (pyproj.Geod), m^2" if scene.georeferenced else "pixels",
                "probability_codes": "uint8 = round(255 p)",
                "no_data": f"model pixels whose scene value is NaN or the no-data value: probabilities 0, class {outputs.NODATA_CLASS}",
            },
            "tiling": {"tile": o.tile, "overlap": o.overlap, "batch_size": o.batch_size, "window": WINDOW, **tiles},
            "thresholds": {
                "seed": o.seed_threshold,
                "outline": o.outline_threshold,
                "min_area_m2": o.min_area_m2,
                "simplify_m": o.simplify_m,
                "classes": list(o.classes),
            },
            "options": o.to_json(),
            "slicks": len(fc["features"]),
            "outputs": [outputs.PROBABILITIES, outputs.CLASSES_FILE, outputs.SLICKS]
            + ([outputs.QUICKLOOK] if o.quicklook else []),
            "device": str(self.device) + (" bf16" if self.autocast else ""),
            "timings": timings,
        }


def band_rows(most: int, width: int) -> int:
    """Rows per band: at most ``most``, and at most BAND_PIXELS pixels (never fewer than 16 rows)."""
    return max(16, min(most, BAND_PIXELS // max(1, width)))


GROUND_MISMATCH = 0.1  # pixels 10 % off square, or off their nominal size, on the ground


def plan_geometry(scene: Scene, scale: Scale) -> Scale:
    """The scale, fitted to pixels that are not what the grid's spacing says.

    Pixels that are not square on the ground (degree pixels away from the equator, a grid of unequal
    steps) are resampled along each axis to the model's square pixels, from their size as the scale
    reads it (Scene.axis_spacing: annotated, a projected grid's nominal steps, else on the ground at the
    scene centre; a note); without a training spacing to aim at, the student sees the scene stretched
    (a warning). A projection whose nominal metres are not ground metres (Web Mercator, 2x at 60
    degrees) is a warning: the scale follows the nominal size. Warnings are logged; every note goes to
    predict.json's scale notes."""
    if not scene.georeferenced:
        return scale
    dy, dx = scene.ground_spacing()
    sy, sx = scene.axis_spacing()  # the convention the scale follows: annotated, nominal, else on the ground
    notes, warnings = [], []
    if max(sy, sx) > (1 + GROUND_MISMATCH) * min(sy, sx):
        shape = f"pixels are {sy:.3g} x {sx:.3g} m{' on the ground' if (sy, sx) == (dy, dx) else ''} (rows x columns), not square"
        if scale.model_spacing_m:
            model = scale.model_spacing_m
            # the note that scene and training spacing agree spoke of their mean; the axes differ
            kept = tuple(n for n in scale.notes if not n.startswith("scene and training spacing within"))
            notes.append(f"{shape}: resampled along each axis to square {model:.3g} m model pixels")
            scale = dataclasses.replace(scale, notes=kept, axes=(model / sy, model / sx))
        else:
            warnings.append(
                f"{shape}: the student sees the scene stretched (the training spacing is unknown; give "
                "--pixel-spacing, or reproject to square metric pixels: gdalwarp -t_srs EPSG:326NN -tr S S)"
            )
    nominal = scene.pixel_spacing()
    if scene.crs.is_projected and scene.transform is not None and abs(nominal / ((dy + dx) / 2) - 1) > GROUND_MISMATCH:
        warnings.append(
            f"the CRS's nominal {nominal:.3g} m pixels are {(dy + dx) / 2:.3g} m on the ground (its scale factor "
            "here): scale and --min-area follow the nominal size; reproject to a local metric CRS (UTM)"
        )
    for note in warnings:
        log.warning("%s: %s", scene.source, note)
    for note in notes:
        log.info("%s: %s", scene.source, note)
    return dataclasses.replace(scale, notes=scale.notes + tuple(notes + warnings))


def plan_grid(scene: Scene, scale: Scale, o: PredictOptions) -> tuple[int, int]:
    """The model grid's (rows, cols), after the caps that keep a scene's cost bounded before any tile
    runs: its pixels, the grid's pixels and side, and the resampling factor; each a PredictError naming
    the scene and the flag that raises the cap."""
    megapixels = scene.height * scene.width / 1e6
    if scene.height * scene.width > o.max_scene_pixels:
        raise PredictError(
            f"{scene.source}: {scene.height} x {scene.width} pixels ({megapixels:,.0f} megapixels), more than --max-scene-pixels {o.max_scene_pixels}"
        )
    for factor in scale.factors:
        if not (math.isfinite(factor) and factor > 0) or max(factor, 1 / factor) > o.max_resample_factor:
            spacings = (
                f" (scene pixels {scale.scene_spacing_m:g} m, model pixels {scale.model_spacing_m:g} m)"
                if scale.scene_spacing_m and scale.model_spacing_m
                else ""
            )
            raise PredictError(
                f"{scene.source}: the model grid needs {factor:g} scene pixels per model pixel{spacings}, beyond --max-resample-factor {o.max_resample_factor:g} either way"
            )
    fy, fx = scale.factors
    grid_h, grid_w = max(1, round(scene.height / fy)), max(1, round(scene.width / fx))
    if grid_h * grid_w > o.max_grid_pixels:
        factors = f"{fy:g}" if fy == fx else f"{fy:g} x {fx:g}"
        raise PredictError(
            f"{scene.source}: a model grid of {grid_h} x {grid_w} pixels (factor {factors}), more than --max-grid-pixels {o.max_grid_pixels}"
        )
    if max(grid_h, grid_w) > MAX_GRID_SIDE:
        raise PredictError(
            f"{scene.source}: a model grid of {grid_h} x {grid_w} pixels; a side of more than {MAX_GRID_SIDE} is not tiled (split the scene)"
        )
    return grid_h, grid_w


def check_out(scene_url: str, out: str | Path) -> None:
    """--out must be a folder (or nothing yet) that neither is, holds nor lies inside the scene: outputs never touch inputs."""
    shown = storage.redact_url(str(scene_url))
    if storage.overlaps(str(scene_url), str(out)):
        raise PredictError(
            f"--out {out} is, contains or lies inside the scene {shown}: give the outputs a folder of their own"
        )
    if Path(out).exists() and not Path(out).is_dir():
        raise PredictError(f"--out {out}: exists and is not a folder")


def _lut(scene: Scene, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    cal = scene.calibration
    return (
        None
        if cal is None
        else lut_at(cal.lines, cal.pixels, cal.sigma_nought, rows.astype(np.float64), cols.astype(np.float64))
    )


def _helper_thread(run: Callable[[], None], name: str) -> threading.Thread:
    """A started daemon thread running `run` in a copy of this context: rasterio finds the fsspec file
    objects of URL scenes through a context variable."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(run,), name=name, daemon=True)
    thread.start()
    return thread


class _TileReader:
    """Reads and converts tiles on a helper thread, in the blender's order, a bounded queue ahead of
    the model (reading, calibration and resampling overlap the forward passes)."""

    def __init__(self, scene: Scene, conversion: Conversion, blender: Blender, f: tuple[float, float], depth: int):
        self.scene, self.conversion, self.blender, self.f = scene, conversion, blender, f
        self.resampling = decimation(scene.radiometry)
        self.queue: queue.Queue = queue.Queue(maxsize=max(2, depth))
        self.seconds = 0.0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = _helper_thread(self._run, "tile-reader")

    def tile(self, y0: int, x0: int) -> tuple[torch.Tensor, np.ndarray]:
        """Model-grid tile at (y0, x0): (1, th, tw) float32 in [-1, 1], and (th, tw) bool: which pixels
        hold data (Scene.missing; a decimated pixel holds none where its whole window had none, or where
        GDAL's average carried a NaN through). Off the scene's own grid the reader
        resamples the tile's exact window to the tile's shape (GDAL decimates from the file, from its
        overviews where it has them): memory and work follow the tile, not the window, at any factor."""
        b, s = self.blender, self.scene
        fy, fx = self.f
        if fy == fx == 1.0:
            raw = s.read(y0, y0 + b.th, x0, x0 + b.tw)
        else:
            coarser = fy >= 1.0 and fx >= 1.0
            raw = s.read(
                y0 * fy,
                min(float(s.height), (y0 + b.th) * fy),
                x0 * fx,
                min(float(s.width), (x0 + b.tw) * fx),
                out_shape=(b.th, b.tw),
                resampling=self.resampling if coarser else "bilinear",
            )
        # The LUT at each model pixel's centre, in scene pixel positions.
        rows, cols = (y0 + np.arange(b.th) + 0.5) * fy - 0.5, (x0 + np.arange(b.tw) + 0.5) * fx - 0.5
        codes = to_codes(raw, self.conversion, _lut(s, rows, cols))
        return normalise(np.ascontiguousarray(codes))[None], ~s.missing(raw)

    def _run(self) -> None:
        try:
            for i, j, y0, x0 in self.blender.tiles():
                t0 = time.perf_counter()
                item = (i, j, *self.tile(y0, x0))
                self.seconds += time.perf_counter() - t0
                while not self.stopping.is_set():
                    try:
                        self.queue.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self.stopping.is_set():
                    return
        except BaseException as e:  # handed to the consumer, which raises it with the scene's name
            self.error = e
        finally:
            self.queue.put(None)

    def take(self, n: int) -> list:
        items = []
        while len(items) < n:
            item = self.queue.get()
            if item is None:
                if self.error is not None:
                    raise self.error
                break
            items.append(item)
        return items

    def stop(self) -> None:
        self.stopping.set()
        while self.thread.is_alive():
            try:
                self.queue.get(timeout=0.1)
            except queue.Empty:
                pass


class _TileWriter:
    """Blends each batch's probabilities and writes the finished blocks on a helper thread, while the
    model runs the next batch. On the main thread this took 3–4 % of the tile stage, and the pipeline's
    efficiency against a bare forward loop was 0.918 against 0.95 with this thread (docs/BENCHMARKS.md). The queue holds one batch: at most two batches of
    probabilities wait besides the one being computed, whatever the scene's size."""

    def __init__(self, blender: Blender):
        self.blender = blender
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.seconds = 0.0
        self.peak_carry = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = _helper_thread(self._run, "tile-writer")

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is not None or self.stopping.is_set():
                continue  # drained, so that put() and stop() never wait on a writer that has given up
            t0 = time.perf_counter()
            try:
                for (i, j), p in zip(*item):
                    self.blender.add(i, j, p)
                self.peak_carry = max(self.peak_carry, self.blender.carried_bytes)
            except BaseException as e:  # handed to the main thread, which raises it with the scene's name
                self.error = e
            self.seconds += time.perf_counter() - t0

    def put(self, keys: list[tuple[int, int]], probs: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((keys, probs))

    def close(self) -> None:
        """Waits until every batch is blended and written; raises the writer's error."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self.thread.is_alive():
            self.stopping.set()
            self.queue.put(None)
            self.thread.join()
