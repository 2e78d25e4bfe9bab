"""Opening a scene: a windowed reader of one SAR band with its georeferencing and metadata.

Three kinds, told apart by the path (any fsspec URL; local paths too):

- **GeoTIFF / COG** (``.tif``, ``.tiff``): one band (``band`` picks one of several), in any CRS,
  georeferenced by a geotransform or by ground control points. Data types: uint8 (8-bit dB-scaled
  display codes), float32/float64 (linear sigma-nought, or dB with ``radiometry="sigma0_db"``), uint16
  (digital numbers: only with a calibration, i.e. from a SAFE product).
- **Sentinel-1 GRD in the SAFE layout** (a ``*.SAFE`` folder, or a ``.zip`` holding one): the
  measurement TIFF of the chosen polarisation (uint16 digital numbers), georeferenced by the
  annotation's geolocation grid (as GCPs in EPSG:4326, each at its pixel's centre), calibrated with the calibration file's
  sigma-nought LUT (``radiometry.CalibrationLUT``). Product id, acquisition start time and the
  manifest's footprint are kept.
- **Plain image** (PNG / JPEG, OSD-style 8-bit): no georeferencing; outputs are in pixel units.

Every scene is opened as what its name says and nothing else (docs/inference.md, "Scenes from strangers"):
TIFFs through GDAL's GTiff driver alone (a VRT or any other format behind a ``.tif`` name is refused,
and ``.vrt`` scenes are refused outright: a VRT names other files, any path or ``/vsis3/`` with this
node's credentials, and GDAL 3.10 reads them), with GDAL's sibling-file scan off while the scene is
open (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: an ``.ovr`` beside a scene would be opened by any
driver, a VRT included, and read for every decimated window); images through Pillow's PNG and JPEG
decoders alone (data/real.py, with a byte and a pixel cap).

The SAFE XML is parsed by expat with handlers that raise at a document type declaration, an entity
declaration or an external entity reference, so a DTD is refused by the parser itself in any encoding
(UTF-16 included) before anything is expanded; each file is capped at ``XML_MAX_BYTES`` and
``XML_MAX_ELEMENTS``. xarray-sentinel was tried and not used: it validates every file against the full
ESA XSD schemas, so a product written by a test (or trimmed by a processing chain) must carry every field
of the schema, and it reads the annotation with no refusal of DTDs; four XML elements are all this reader
needs. Zip members are looked up by name (never extracted to disk), the archive's member count and
central directory are capped from its end record before Python lists it, names with ``..`` or an
absolute path are refused, and XML members over the cap are refused before they are inflated.

Georeferencing and spacing are checked at open: geotransform coefficients and ground control points
finite, GCPs not collinear or coincident (in pixels and on the ground), pixel spacings finite and within
``SPACING_RANGE_M``; each failure a SceneError naming the field and the file.
"""

from __future__ import annotations

import math
import posixpath
import re
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pyexpat import XML_PARAM_ENTITY_PARSING_NEVER, ExpatError, ParserCreate
from typing import Any

import numpy as np

from dakter_scale.data import storage
from dakter_scale.errors import UserError

# Sentinel-1 GRD products carry annotations of a few MB, calibration vectors about a second of azimuth
# apart (a few dozen per slice) and a few dozen files (not measured here on a real product: no download).
# The caps leave room far above those and bound what parsing can cost (issue 29: 16 MB of "<a/>" built
# +379 MB of elements, 80,000 calibration vectors +650 MB).
XML_MAX_BYTES = 16 << 20
XML_MAX_ELEMENTS = 250_000
SAFE_MAX_MEMBERS = 1_000  # files in a SAFE folder, members of a SAFE zip
ZIP_MAX_DIRECTORY_BYTES = SAFE_MAX_MEMBERS * 1024  # a zip's central directory: 1 kB an entry (46 bytes and its names)
CALIBRATION_MAX_VECTORS = 2_000
# A thin-plate spline over n GCPs solves an n x n system (O(n^3) time, O(n^2) memory); an IW GRD's
# geolocation grid has about 200 points.
GCP_MAX_POINTS = 5_000
TIFF_MAX_BLOCK_BYTES = 64 << 20  # a TIFF tile or strip, inflated: GDAL decodes whole blocks
SPACING_RANGE_M = (0.01, 10_000.0)  # a pixel spacing outside this is no SAR scene's
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
TIFF_EXTS = (".tif", ".tiff")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF and BigTIFF, both byte orders
# Held while a scene is open: GDAL looks for no sibling file (.ovr, .aux.xml, .msk), which any driver would open.
GDAL_SCENE_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
RESAMPLINGS = ("average", "rms", "bilinear")
POLARISATIONS = ("VV", "VH", "HH", "HV")


class SceneError(UserError, ValueError):
    """A scene that cannot be read as asked; the message names the file (and the flag, if one decides)."""


@dataclass
class Calibration:
    """The sigma-nought LUT of a SAFE product: A(line, pixel) on a grid; sigma0 = DN^2 / A^2."""

    lines: np.ndarray  # (L,) increasing
    pixels: np.ndarray  # (P,) increasing, the same for every vector
    sigma_nought: np.ndarray  # (L, P)


@dataclass
class Scene:
    """One band of a scene and how to place it on the Earth. ``read`` is windowed: memory grows with
    the window, never with the scene (plain images are the exception: decoded whole, as they are small)."""

    source: str  # redacted URL or path, for messages and records
    kind: str  # geotiff | safe | image
    height: int
    width: int
    dtype: str
    radiometry: str  # what the pixels are: db8 | sigma0 | sigma0_db | dn
    crs: Any = None  # rasterio CRS of the transform or of the GCPs; None: pixel coordinates only
    transform: Any = None  # affine.Affine (pixel -> CRS) or None
    gcps: list | None = None  # rasterio GroundControlPoint list (used when there is no transform)
    calibration: Calibration | None = None
    scene_id: str | None = None
    acquisition_time: str | None = None
    # where the time came from: ACQUISITION_TIME, the SAFE's startTime, or TIFFTAG_DATETIME, which the TIFF
    # spec defines as when the file was written (a re-exported scene carries its processing time there)
    time_source: str | None = None
    footprint: list[tuple[float, float]] | None = None  # (lon, lat) ring from the product, if it has one
    polarisation: str | None = None
    native_spacing_m: float | None = None  # as annotated (SAFE); otherwise measured from the georeferencing
    # (down a column, along a row) as annotated (SAFE: azimuth, range); None: measured on the ground
    annotated_spacing_m: tuple[float, float] | None = None
    nodata: float | None = None  # the band's declared no-data value (a GRD's 0 DN); NaN and inf are no data in any band
    _reader: Any = field(default=None, repr=False)
    _closers: list = field(default_factory=list, repr=False)
    _gcp: Any = field(default=None, repr=False)  # the GCP transformer, built once (a spline solve) and kept

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and (self.transform is not None or bool(self.gcps))

    def read(
        self,
        row0: float,
        row1: float,
        col0: float,
        col1: float,
        out_shape: tuple[int, int] | None = None,
        resampling: str = "average",
    ) -> np.ndarray:
        """Pixels [row0, row1) x [col0, col1) in the native data type; a read error names the file.

        With ``out_shape`` (rows, cols) the window (fractional bounds allowed) is resampled to that shape
        by the reader itself (GDAL: ``average``, ``rms`` or ``bilinear``, from the file's overviews where
        it has them), so memory follows ``out_shape``, not the window."""
        assert 0 <= row0 < row1 <= self.height and 0 <= col0 < col1 <= self.width, (row0, row1, col0, col1)
        assert out_shape is not None or all(float(v).is_integer() for v in (row0, row1, col0, col1)), (
            row0,
            row1,
            col0,
            col1,
        )
        assert resampling in RESAMPLINGS, resampling
        try:
            if out_shape is None:
                return self._reader(int(row0), int(row1), int(col0), int(col1))
            return self._reader(row0, row1, col0, col1, out_shape=tuple(out_shape), resampling=resampling)
        except SceneError:
            raise
        except Exception as e:  # rasterio / GDAL / fsspec: a truncated or corrupt file shows up here
            raise SceneError(
                f"{self.source}: unreadable at rows {row0}-{row1}, columns {col0}-{col1} (corrupt or truncated?): {_first_line(e)}"
            ) from None

    def missing(self, raw: np.ndarray) -> np.ndarray:
        """Which pixels of ``raw`` (as ``read`` returns them, decimated or not) hold no measurement: NaN, an
        infinity (a sigma0_db border of -inf, which would otherwise be the darkest code: oil) or the no-data
        value. A bool array of raw's shape."""
        missing = ~np.isfinite(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, dtype=bool)
        if self.nodata is not None:
            missing |= raw == self.nodata
        return missing

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception:  # closing a handle that already failed
                pass
        self._closers.clear()
        self._gcp = None  # georeferencing after close builds it again

    def __enter__(self) -> "Scene":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- georeferencing --------------------------------------------------------------------------

    def pixel_to_crs(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-edge coordinates (col, row; (0, 0) is the top-left corner of the first pixel) -> x, y in ``crs``."""
        cols, rows = np.asarray(cols, dtype=np.float64), np.asarray(rows, dtype=np.float64)
        if self.transform is not None:
            t = self.transform
            return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f
        if not self.gcps:
            raise SceneError(f"{self.source}: no georeferencing (neither a geotransform nor ground control points)")
        xs, ys = self.gcp_transformer().xy(rows.ravel(), cols.ravel(), offset="ul")
        shape = cols.shape
        return np.asarray(xs, dtype=np.float64).reshape(shape), np.asarray(ys, dtype=np.float64).reshape(shape)

    def gcp_transformer(self):
        """The scene's GCP transformer (gcp_transformer), built on first use and closed with the scene:
        a spline over a few thousand points takes seconds to solve."""
        if self._gcp is None:
            self._gcp = gcp_transformer(self.gcps)
            self._closers.append(self._gcp.close)
        return self._gcp

    def pixel_to_lonlat(self, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.pixel_to_crs(cols, rows)
        return to_lonlat(self.crs, x, y)

    def pixel_spacing(self) -> float | None:
        """Metres per pixel, the mean of the two axes (axis_spacing); None without georeferencing."""
        if self.native_spacing_m:
            return self.native_spacing_m
        if not self.georeferenced:
            return None
        dy, dx = self.axis_spacing()
        return (dy + dx) / 2

    def axis_spacing(self) -> tuple[float, float]:
        """(dy, dx): metres per pixel down a column and along a row: as annotated (SAFE: azimuth, range);
        a projected grid's nominal steps (what processing chains and training data quote, not the
        ellipsoidal distance, which differs by the projection's scale factor: 0.9996 on a UTM meridian);
        else measured on the WGS84 ellipsoid at the scene centre (ground_spacing)."""
        if self.annotated_spacing_m:
            return self.annotated_spacing_m
        if self.transform is not None and self.crs.is_projected:
            t, unit = self.transform, self.crs.linear_units_factor[1]
            return float(math.hypot(t.b, t.e) * unit), float(math.hypot(t.a, t.d) * unit)
        return self.ground_spacing()

    def ground_spacing(self) -> tuple[float, float]:
        """(dy, dx): ground metres along a column and along a row at the scene centre, on the WGS84
        ellipsoid (georeferenced scenes). Where they differ (degree pixels away from the equator) or
        differ from the grid's nominal spacing (Web Mercator's scale factor), the student sees the scene
        stretched or at another scale."""
        from pyproj import Geod

        cx, cy = self.width / 2, self.height / 2
        lon, lat = self.pixel_to_lonlat(np.array([cx, cx + 1, cx]), np.array([cy, cy, cy + 1]))
        geod = Geod(ellps="WGS84")
        _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
        _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
        return float(abs(dy)), float(abs(dx))


def _first_line(e: BaseException) -> str:
    """The error's type and first line, credentials redacted (storage.error_line): fsspec errors name the URL."""
    text = storage.error_line(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def gcp_transformer(gcps: list):
    """GDAL's GCP transformer as a thin-plate spline: it passes through every point of a geolocation grid.
    GDAL's default least-squares polynomial cannot follow an IW grid's curvature in longitude and
    latitude: against a synthetic IW footprint it was off by a median 30 m at 70 N and 119 m at 80 N, the
    spline by 0.4 m (bench/gcp_accuracy.py; docs/BENCHMARKS.md). Points that contradict each other (two
    at one pixel, a metre apart on the ground) make the spline singular (NaN everywhere), where the
    polynomial fits through them: such a set gets the polynomial. The caller closes the transformer."""
    from rasterio.transform import GCPTransformer

    if len(gcps) >= 3:
        spline = GCPTransformer(gcps, tps=True)
        xs, ys = spline.xy([g.row for g in gcps], [g.col for g in gcps], offset="ul")
        if np.isfinite(np.asarray(xs, dtype=np.float64)).all() and np.isfinite(np.asarray(ys, dtype=np.float64)).all():
            return spline
        spline.close()
    return GCPTransformer(gcps)


def to_lonlat(crs: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CRS coordinates -> (lon, lat) in EPSG:4326, axis order x = longitude always."""
    from pyproj import CRS, Transformer

    src = CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    if src.equals(CRS.from_epsg(4326)):
        return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    t = Transformer.from_crs(src, CRS.from_epsg(4326), always_xy=True)
    lon, lat = t.transform(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    return np.asarray(lon), np.asarray(lat)


# -- opening ----------------------------------------------------------------------------------------


def open_scene(url: str, *, polarisation: str = "VV", band: int | None = None, radiometry: str = "auto") -> Scene:
    """A scene at a local path or fsspec URL (module docstring). ``radiometry`` says what the pixels
    are when the file cannot say: ``auto`` (uint8 -> db8, float -> sigma0, SAFE -> dn), or one of
    db8, sigma0, sigma0_db. Raises SceneError naming the file for anything it cannot read."""
    if polarisation.upper() not in POLARISATIONS:
        raise SceneError(f"--polarisation must be one of {', '.join(POLARISATIONS)}, got {polarisation!r}")
    shown = storage.redact_url(url)
    fs, path = storage.url_to_fs(url)
    stripped = path.rstrip("/")
    lower = stripped.lower()
    try:
        is_dir = fs.isdir(stripped)
        exists = is_dir or fs.exists(stripped)
    except Exception as e:
        raise SceneError(f"{shown}: cannot be reached: {_first_line(e)}") from None
    if not exists:
        raise SceneError(f"{shown}: no such scene")
    if is_dir and not fs.exists(posixpath.join(stripped, "manifest.safe")):
        fs.invalidate_cache(stripped)  # isdir listed it (see _open_safe)
        raise SceneError(f"{shown}: a folder but no SAFE product (no manifest.safe)")
    if is_dir or lower.endswith(".zip"):
        # A SAFE's one band is its polarisation, calibrated from its digital numbers: these flags would be
        # ignored. (--band defaults to None and --scene-radiometry to auto: any other value was given.)
        if band is not None:
            raise SceneError(f"{shown}: --band is for GeoTIFFs; a SAFE product's band is chosen with --polarisation")
        if radiometry != "auto":
            raise SceneError(
                f"{shown}: --scene-radiometry {radiometry} is for GeoTIFFs; a SAFE product holds digital numbers, calibrated by its LUT"
            )
    if is_dir:
        return _open_safe(fs, stripped, shown, polarisation.upper())
    if lower.endswith(".zip"):
        return _open_safe_zip(fs, stripped, shown, polarisation.upper())
    if lower.endswith(TIFF_EXTS):
        return _open_geotiff(fs, stripped, shown, band, radiometry)
    if lower.endswith(IMAGE_EXTS):
        if band is not None:  # an image is read as one gray band: the flag would be ignored
            raise SceneError(f"{shown}: --band is for GeoTIFFs; a PNG or JPEG scene is read as one gray band")
        return _open_image(fs, stripped, shown, radiometry)
    if lower.endswith(".vrt"):
        raise SceneError(
            f"{shown}: VRT scenes are refused: a VRT names other files (any path, or /vsis3/ with this machine's credentials) that GDAL would read; "
            "translate it to a GeoTIFF/COG first (gdal_translate -of COG)"
        )
    raise SceneError(
        f"{shown}: unknown scene type; expected a GeoTIFF ({', '.join(TIFF_EXTS)}), a SAFE folder or .zip, or a {'/'.join(IMAGE_EXTS)} image"
    )


RADIOMETRY_BY_DTYPE = {"uint8": "db8", "float32": "sigma0", "float64": "sigma0"}
SCENE_RADIOMETRIES = ("auto", "db8", "sigma0", "sigma0_db")


def _open_geotiff(fs, path: str, shown: str, band: int | None, radiometry: str) -> Scene:

    if radiometry not in SCENE_RADIOMETRIES:
        raise SceneError(f"--scene-radiometry must be one of {', '.join(SCENE_RADIOMETRIES)}, got {radiometry!r}")
    env = _scene_env()
    ds = None
    try:
        ds = _open_tiff(fs, path, shown)
        scene = _geotiff_scene(ds, shown, band, radiometry)
    except BaseException:
        if ds is not None:
            ds.close()  # a refused file's handle, held until collected otherwise
        env.__exit__(None, None, None)
        raise
    scene._closers.insert(0, lambda: env.__exit__(None, None, None))
    return scene


def _scene_env():
    """GDAL_SCENE_OPTIONS in force from now until the returned Env is exited (the scene's last closer).
    GDAL's configuration is process-wide, so the tile reader's thread sees it too."""
    import rasterio

    env = rasterio.Env(**GDAL_SCENE_OPTIONS)
    env.__enter__()
    return env


def _open_tiff(fs, path: str, shown: str):
    """A TIFF through GDAL's GTiff driver alone, after its first bytes say TIFF: GDAL picks a driver from
    the content, so a VRT (XML naming other files) saved as ``.tif`` would otherwise be read as one."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with fs.open(path, "rb") as f:
            head = f.read(4)
    except Exception as e:
        raise SceneError(f"{shown}: unreadable: {_first_line(e)}") from None
    if head not in TIFF_MAGIC:
        raise SceneError(
            f"{shown}: not a TIFF file (it starts with {head!r}); only GeoTIFF/COG is read as a .tif (GDAL's GTiff driver alone)"
        )

    def gtiff(**options):
        return (
            rasterio.open(path, driver="GTiff", opener=fs, **options)
            if not storage.is_local(fs)
            else rasterio.open(path, driver="GTiff", **options)
        )

    try:
        ds = gtiff()
    except (RasterioError, OSError, ValueError) as e:
        raise SceneError(f"{shown}: not a readable GeoTIFF (corrupt or truncated?): {_first_line(e)}") from None
    # Every window read inflates the whole blocks it touches: a file of a few MB holding one deflated
    # 8000 x 8000 strip costs 256 MB a tile read, however small the tile (a decompression bomb). A
    # decimated read does the same in an internal overview, whose blocks are its own (GDAL writes them
    # up to 4096 x 4096: 128 MiB of float64).
    try:
        _check_blocks(ds, shown, "")
        for level in range(max((len(ds.overviews(b)) for b in ds.indexes), default=0)):
            with gtiff(overview_level=level) as overview:
                _check_blocks(overview, shown, f" in overview {level + 1}")
    except SceneError:
        ds.close()
        raise
    except (RasterioError, OSError, ValueError) as e:
        ds.close()
        raise SceneError(f"{shown}: not a readable GeoTIFF (corrupt or truncated?): {_first_line(e)}") from None
    return ds


def _check_blocks(ds, shown: str, where: str) -> None:
    """Every block of ``ds`` (the file, or one of its overviews: ``where``) at most TIFF_MAX_BLOCK_BYTES inflated."""
    for (bh, bw), dtype in zip(ds.block_shapes, ds.dtypes):
        if bh * bw * np.dtype(dtype).itemsize > TIFF_MAX_BLOCK_BYTES:
            raise SceneError(
                f"{shown}: a {bh} x {bw} {dtype} block{where}, more than {TIFF_MAX_BLOCK_BYTES >> 20} MiB inflated per read; "
                "re-tile it (gdal_translate -co TILED=YES or -of COG) and give that file"
            )


def _geotiff_scene(ds, shown: str, band: int | None, radiometry: str) -> Scene:
    if band is None:
        if ds.count != 1:
            # One SAR band is what a student takes; several bands (RGB renderings, VV+VH stacks) need a choice.
            raise SceneError(f"{shown}: {ds.count} bands; the student takes one SAR band: choose it with --band N")
        band = 1
    if not 1 <= band <= ds.count:
        raise SceneError(f"{shown}: --band {band} but the file has {ds.count} band(s)")
    dtype = ds.dtypes[band - 1]
    if radiometry == "auto":
        if dtype == "uint16":
            raise SceneError(
                f"{shown}: uint16 digital numbers without a calibration: give the SAFE product, or a sigma0 GeoTIFF (float32)"
            )
        if dtype not in RADIOMETRY_BY_DTYPE:
            raise SceneError(
                f"{shown}: data type {dtype} is not a SAR band the student can take (uint8 dB codes, or float32 sigma0)"
            )
        radiometry = RADIOMETRY_BY_DTYPE[dtype]
    elif radiometry == "db8" and dtype != "uint8":
        raise SceneError(f"{shown}: --scene-radiometry db8 needs uint8 pixels, the file holds {dtype}")
    elif radiometry in ("sigma0", "sigma0_db") and not dtype.startswith("float"):
        raise SceneError(f"{shown}: --scene-radiometry {radiometry} needs float pixels, the file holds {dtype}")
    transform = None if ds.transform.is_identity else ds.transform
    if transform is not None:
        coefficients = (transform.a, transform.b, transform.c, transform.d, transform.e, transform.f)
        if not all(math.isfinite(v) for v in coefficients):
            raise SceneError(f"{shown}: geotransform holds a non-finite value {coefficients}")
        if abs(transform.a * transform.e - transform.b * transform.d) == 0:
            raise SceneError(f"{shown}: geotransform is degenerate (its pixels have no area): {coefficients}")
    gcps, gcp_crs = ds.gcps if ds.gcps else ([], None)
    if transform is None and gcps:
        check_gcps(gcps, shown, "ground control points", geographic=gcp_crs is not None and gcp_crs.is_geographic)
    crs = ds.crs if transform is not None else gcp_crs
    nodata = ds.nodatavals[band - 1]
    if (nodata is None or math.isnan(nodata)) and radiometry == "sigma0":
        # linear sigma-nought is positive wherever something was measured: an exact 0 is a zero-filled
        # border (terrain-corrected products), which in dB would be the darkest pixel, read as oil
        nodata = 0.0
    tags = ds.tags()
    scene = Scene(
        source=shown,
        kind="geotiff",
        height=ds.height,
        width=ds.width,
        dtype=dtype,
        radiometry=radiometry,
        crs=crs,
        transform=transform,
        gcps=list(gcps) or None,
        scene_id=tags.get("SCENE_ID"),
        acquisition_time=tags.get("ACQUISITION_TIME") or tags.get("TIFFTAG_DATETIME"),
        time_source="ACQUISITION_TIME"
        if tags.get("ACQUISITION_TIME")
        else "TIFFTAG_DATETIME (when the file was written)"
        if tags.get("TIFFTAG_DATETIME")
        else None,
        nodata=None if nodata is None or math.isnan(nodata) else float(nodata),  # NaN is missing anyway
    )
    if scene.georeferenced:
        try:
            scene.native_spacing_m = _measured_spacing(scene, shown, "the georeferencing")
            check_placement(scene)
        except BaseException:
            scene.close()  # the GCP transformer, if one was built (the caller closes ds)
            raise
    scene._reader = _band_reader(ds, band)
    scene._closers.append(ds.close)
    return scene


def _band_reader(ds, band: int):
    """Window reads of one band, resampled by GDAL when asked (Scene.read)."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    def read(
        r0: float,
        r1: float,
        c0: float,
        c1: float,
        out_shape: tuple[int, int] | None = None,
        resampling: str = "average",
    ) -> np.ndarray:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        if out_shape is None:
            return ds.read(band, window=window)
        return ds.read(band, window=window, out_shape=out_shape, resampling=Resampling[resampling])

    return read


def _measured_spacing(scene: Scene, source: str, what: str) -> float | None:
    """The pixel spacing measured from the scene's georeferencing (``what``), checked by check_spacing."""
    try:
        spacing = scene.pixel_spacing()
    except Exception as e:  # GDAL's GCP transformer or pyproj on coordinates they cannot use
        raise SceneError(f"{source}: no pixel spacing can be measured from {what}: {_first_line(e)}") from None
    return check_spacing(spacing, f"pixel spacing (from {what})", source)


def check_spacing(value: float | None, what: str, source: str) -> float | None:
    """A pixel spacing in metres that is finite and within SPACING_RANGE_M, or a SceneError naming it."""
    if value is None:
        return None
    low, high = SPACING_RANGE_M
    if not math.isfinite(value) or not low <= value <= high:
        raise SceneError(f"{source}: {what} is {value!r} m; a SAR scene's lies in [{low:g}, {high:g}] m")
    return float(value)


def check_gcps(gcps: list, source: str, what: str, geographic: bool = False) -> None:
    """Ground control points that can place a scene: at least 3 and at most GCP_MAX_POINTS, every coordinate
    finite, on the Earth when ``geographic`` (x longitude, y latitude), neither the pixel positions nor the
    ground positions all on one line (GDAL's fit would be singular or wild)."""
    if len(gcps) < 3:
        raise SceneError(f"{source}: {what}: {len(gcps)} point(s); at least 3 are needed to georeference")
    if len(gcps) > GCP_MAX_POINTS:
        raise SceneError(
            f"{source}: {what}: {len(gcps)} points, more than the {GCP_MAX_POINTS} allowed (a GRD's geolocation grid has a few hundred)"
        )
    values = np.array([(g.col, g.row, g.x, g.y, g.z or 0.0) for g in gcps], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        bad = int(np.argwhere(~np.isfinite(values))[0, 0])
        raise SceneError(f"{source}: {what}: point {bad} holds a non-finite coordinate")
    if geographic:
        bad = next((i for i, g in enumerate(gcps) if not (-180 <= g.x <= 180 and -90 <= g.y <= 90)), None)
        if bad is not None:
            raise SceneError(
                f"{source}: {what}: point {bad} at longitude {gcps[bad].x}, latitude {gcps[bad].y} is off the Earth"
            )
    for cols, name in (((0, 1), "pixel positions"), ((2, 3), "ground positions")):
        xy = values[:, cols] - values[:, cols].mean(axis=0)
        singular = np.linalg.svd(xy, compute_uv=False)
        if singular[0] == 0 or singular[-1] / singular[0] < 1e-9:
            raise SceneError(
                f"{source}: {what}: the {name} are degenerate (coincident or on one line); no georeferencing can be fitted"
            )


def _open_image(fs, path: str, shown: str, radiometry: str) -> Scene:
    from dakter_scale.data.real import DataError, read_gray

    if radiometry not in ("auto", "db8"):
        raise SceneError(f"{shown}: a plain image holds 8-bit codes; --scene-radiometry {radiometry} does not apply")
    try:
        image = read_gray(fs, path)
    except DataError as e:
        raise SceneError(str(e)) from None
    scene = Scene(
        source=shown, kind="image", height=image.shape[0], width=image.shape[1], dtype="uint8", radiometry="db8"
    )

    def read(
        r0: float,
        r1: float,
        c0: float,
        c1: float,
        out_shape: tuple[int, int] | None = None,
        resampling: str = "average",
    ) -> np.ndarray:
        if out_shape is None:
            return image[r0:r1, c0:c1]
        from PIL import Image

        # Pillow's BOX filter is the area average (GDAL's "average"); an 8-bit image has no intensity to average (rms).
        method = Image.Resampling.BILINEAR if resampling == "bilinear" else Image.Resampling.BOX
        return np.asarray(Image.fromarray(image).resize((out_shape[1], out_shape[0]), method, box=(c0, r0, c1, r1)))

    scene._reader = read
    return scene


# -- Sentinel-1 SAFE ----------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised from inside expat's handlers: parsing stops there."""


def parse_xml(data: bytes, name: str) -> ET.Element:
    """XML of at most XML_MAX_BYTES and XML_MAX_ELEMENTS, with no document type declaration.

    The refusal is made by the parser (expat's declaration handlers raise), not by a byte search: it
    holds in every encoding expat reads (UTF-16 too), and nothing declared in a DTD is ever expanded."""
    if len(data) > XML_MAX_BYTES:
        raise SceneError(f"{name}: {len(data)} bytes, more than any SAFE XML file ({XML_MAX_BYTES} allowed)")
    builder = ET.TreeBuilder()
    parser = ParserCreate(namespace_separator="}")
    parser.SetParamEntityParsing(XML_PARAM_ENTITY_PARSING_NEVER)
    elements = 0

    def refuse(*_) -> None:
        raise _Refused("XML with a document type declaration or entities is refused")

    def start(tag: str, attrs: dict) -> None:
        nonlocal elements
        elements += 1
        if elements > XML_MAX_ELEMENTS:
            raise _Refused(f"more than {XML_MAX_ELEMENTS} XML elements, more than any SAFE XML file")
        builder.start("{" + tag if "}" in tag else tag, attrs)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: builder.end("{" + tag if "}" in tag else tag)
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except _Refused as e:
        raise SceneError(f"{name}: {e}") from None
    except (ExpatError, ValueError) as e:
        raise SceneError(f"{name}: not well-formed XML ({e})") from None
    return builder.close()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, *path: str) -> ET.Element | None:
    """The first element along a path of local names (namespaces ignored, as SAFE files mix them)."""
    node: ET.Element | None = root
    for name in path:
        node = next((c for c in node if _local(c.tag) == name), None) if node is not None else None
    return node


def _text(root: ET.Element, *path: str, source: str) -> str:
    node = _find(root, *path)
    if node is None or node.text is None:
        raise SceneError(f"{source}: no {'/'.join(path)}")
    return node.text.strip()


def _numbers(text: str, source: str, what: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError:
        raise SceneError(f"{source}: {what} holds something other than numbers") from None


class _SafeFiles:
    """Read-only access to a SAFE product's members, in a folder or inside a zip."""

    def __init__(self, fs, root: str, shown: str, names: list[str]):
        self.fs, self.root, self.shown, self.names = fs, root, shown, names

    def read(self, rel: str, limit: int = XML_MAX_BYTES) -> bytes:
        path = posixpath.join(self.root, rel)
        try:
            size = self.fs.size(path)
            if size is not None and size > limit:
                raise SceneError(f"{self.shown}: {rel} is {size} bytes, more than the {limit} allowed")
            with self.fs.open(path, "rb") as f:
                data = f.read(limit + 1)
        except SceneError:
            raise
        except Exception as e:
            raise SceneError(f"{self.shown}: {rel} unreadable: {_first_line(e)}") from None
        if len(data) > limit:
            raise SceneError(f"{self.shown}: {rel} is more than the {limit} bytes allowed")
        return data


def _open_safe(fs, path: str, shown: str, polarisation: str) -> Scene:
    names, listed = [], []

    def forget_listings() -> None:
        # Object-store file systems (s3fs, gcsfs) keep every listing on their one instance per process
        # for good: four folders per SAFE scene of a long run. invalidate_cache drops a folder and its
        # parents, not its subfolders, so each listed folder is dropped.
        for folder in listed:
            fs.invalidate_cache(folder)

    try:
        # walked, not found, so the cap stops the listing: fs.find lists the whole tree before returning.
        # annotation/calibration/*.xml is the deepest member read.
        for folder, _, files in fs.walk(path, maxdepth=3, detail=True):
            listed.append(folder)
            names += [posixpath.relpath(info["name"], path) for info in files.values()]
            if len(names) > SAFE_MAX_MEMBERS:
                raise SceneError(
                    f"{shown}: more than {SAFE_MAX_MEMBERS} files in the SAFE folder; a GRD product has a few dozen"
                )
        scene = _safe_scene(_SafeFiles(fs, path, shown, sorted(names)), polarisation)
    except BaseException:
        forget_listings()
        raise
    scene._closers.append(forget_listings)  # kept while the scene is open: its members' sizes come from them
    return scene


def _zip_directory(handle, shown: str) -> None:
    """The member count and central-directory size from the zip's end record (zip64 too), checked
    before zipfile reads the directory: listing 200,000 members cost +125 MB and 3 s."""
    handle.seek(0, 2)
    size = handle.tell()
    tail_size = min(size, 22 + 0xFFFF)  # the end record and the longest comment
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return  # no end record: zipfile says the archive is not one
    members, directory = struct.unpack("<HI", tail[at + 10 : at + 16])
    if (members == 0xFFFF or directory == 0xFFFFFFFF) and at >= 20 and tail[at - 20 : at - 16] == b"PK\x06\x07":
        (offset,) = struct.unpack("<Q", tail[at - 12 : at - 4])
        if offset < size:
            handle.seek(offset)
            record = handle.read(56)
            if len(record) == 56 and record[:4] == b"PK\x06\x06":
                members, directory = struct.unpack("<QQ", record[32:48])
    handle.seek(0)
    if members > SAFE_MAX_MEMBERS:
        raise SceneError(
            f"{shown}: the zip declares {members} members, more than the {SAFE_MAX_MEMBERS} allowed (a GRD product has a few dozen)"
        )
    if directory > ZIP_MAX_DIRECTORY_BYTES:
        raise SceneError(
            f"{shown}: the zip's central directory is {directory} bytes, more than the {ZIP_MAX_DIRECTORY_BYTES} allowed"
        )


def _open_safe_zip(fs, path: str, shown: str, polarisation: str) -> Scene:
    try:
        handle = fs.open(path, "rb")
    except OSError as e:
        raise SceneError(f"{shown}: unreadable: {_first_line(e)}") from None
    try:
        scene = _safe_zip_scene(handle, shown, polarisation)
    except BaseException:
        handle.close()
        raise
    scene._closers.insert(0, handle.close)
    return scene


def _safe_zip_scene(handle, shown: str, polarisation: str) -> Scene:
    import zipfile

    import fsspec

    try:
        _zip_directory(handle, shown)
        archive = zipfile.ZipFile(handle)
    except SceneError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, struct.error) as e:
        raise SceneError(f"{shown}: not a readable zip archive (corrupt or truncated?): {_first_line(e)}") from None
    infos = archive.infolist()
    if len(infos) > SAFE_MAX_MEMBERS:  # an end record that undercounts its directory
        raise SceneError(f"{shown}: the zip holds {len(infos)} members, more than the {SAFE_MAX_MEMBERS} allowed")
    tops = set()
    for info in infos:
        name = info.filename
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in name.replace("\\", "/").split("/"):
            raise SceneError(f"{shown}: member {name!r} has an absolute or parent path; refused")
        tops.add(name.split("/", 1)[0])
        if name.lower().endswith((".xml", ".safe")) and info.file_size > XML_MAX_BYTES:
            raise SceneError(
                f"{shown}: member {name} declares {info.file_size} bytes, more than the {XML_MAX_BYTES} allowed for XML"
            )
    safe_tops = [t for t in tops if t.upper().endswith(".SAFE")]
    if len(safe_tops) != 1:
        raise SceneError(f"{shown}: expected one *.SAFE folder in the zip, found {sorted(tops)[:5]}")
    top = safe_tops[0]
    names = [i.filename[len(top) + 1 :] for i in infos if i.filename.startswith(top + "/") and not i.is_dir()]
    if "manifest.safe" not in names:
        raise SceneError(f"{shown}: {top} has no manifest.safe")
    archive.close()
    handle.seek(0)
    zfs = fsspec.filesystem("zip", fo=handle)
    return _safe_scene(_SafeFiles(zfs, top, shown, names), polarisation)


def _safe_member(
    files: _SafeFiles,
    polarisation: str,
    folder: str,
    ext: str | tuple[str, ...],
    prefix: str = "",
    optional: bool = False,
) -> str | None:
    """The one file of `polarisation` in a SAFE folder (measurement/, annotation/, annotation/calibration/:
    ``prefix`` tells calibration-*.xml from noise-*.xml), or a SceneError naming the polarisations the
    product holds (None if ``optional``), or the several files found."""
    token = f"-{polarisation.lower()}-"
    hits = [
        n
        for n in files.names
        if posixpath.dirname(n) == folder
        and token in posixpath.basename(n).lower()
        and posixpath.basename(n).lower().startswith(prefix)
        and n.lower().endswith(ext)
    ]
    if not hits and optional:
        return None
    if not hits:
        have = sorted(
            {
                p.upper()
                for n in files.names
                if posixpath.dirname(n) == "measurement"
                for p in POLARISATIONS
                if f"-{p.lower()}-" in n.lower()
            }
        )
        raise SceneError(
            f"{files.shown}: no {polarisation} polarisation ({folder}/*{token}*{ext}); the product holds {', '.join(have) or 'none'} (--polarisation)"
        )
    if len(hits) > 1:
        raise SceneError(
            f"{files.shown}: several {polarisation} files in {folder} ({', '.join(sorted(hits)[:3])}); one GRD swath expected"
        )
    return hits[0]


# A geolocation grid point names an image sample: ESA's product specification (S1-RS-MDA-52-7441, the
# annotation's geolocationGridPoint) gives ``line``/``pixel`` as the integer "reference image MDS line / sample to
# which this geolocation grid point applies", with that sample's zero-Doppler azimuth time and slant-range time; a
# real GRD's grid runs from sample 0 to numberOfSamples - 1 (and line 0 to numberOfLines - 1), first to last pixel;
# ESA's SNAP (s1tbx Sentinel1Level1Directory.addTiePointGrids) puts the first point at (0.5, 0.5), the first
# pixel's centre. GDAL's GCPs, which rasterio's GCP transformer reads, are in pixel-corner coordinates (the first
# pixel's centre is (0.5, 0.5)), so a sample index i is at i + 0.5. GDAL's SAFE driver (frmts/safe/safedataset.cpp)
# copies line/pixel unshifted, half a pixel (about 5 m on a 10 m GRD) up and left of this reader; see
# docs/inference.md, "Limits", for the evidence on each side.
GRID_POINT_AT_PIXEL_CENTRE = 0.5


def _grid_gcps(annotation, src: str) -> list:
    """An annotation's geolocation grid as ground control points in pixel-corner coordinates (line/pixel are
    sample indices, pixel centres: + 0.5, above), checked (numbers, then check_gcps), or a SceneError naming
    the point."""
    from rasterio.control import GroundControlPoint

    points = [
        p
        for p in (_find(annotation, "geolocationGrid", "geolocationGridPointList") or [])
        if _local(p.tag) == "geolocationGridPoint"
    ]
    gcps = []
    for i, p in enumerate(points):
        try:
            gcps.append(
                GroundControlPoint(
                    row=float(_text(p, "line", source=src)) + GRID_POINT_AT_PIXEL_CENTRE,
                    col=float(_text(p, "pixel", source=src)) + GRID_POINT_AT_PIXEL_CENTRE,
                    x=float(_text(p, "longitude", source=src)),
                    y=float(_text(p, "latitude", source=src)),
                    z=float(_text(p, "height", source=src)),
                    id=str(i),
                )
            )
        except ValueError:
            raise SceneError(f"{src}: geolocation grid point {i} holds something other than numbers") from None
    check_gcps(gcps, src, "geolocationGrid", geographic=True)
    return gcps


def _safe_scene(files: _SafeFiles, polarisation: str) -> Scene:
    from rasterio.crs import CRS

    shown = files.shown
    manifest = parse_xml(files.read("manifest.safe"), f"{shown}/manifest.safe")
    measurement = _safe_member(files, polarisation, "measurement", (".tiff", ".tif"))
    annotation_name = _safe_member(files, polarisation, "annotation", ".xml")
    annotation = parse_xml(files.read(annotation_name), f"{shown}/{annotation_name}")
    src = f"{shown}/{annotation_name}"
    product_type = _find(annotation, "adsHeader", "productType")
    if product_type is not None and (product_type.text or "").strip() != "GRD":
        raise SceneError(f"{src}: product type {(product_type.text or '').strip()}; only GRD products are read")

    gcps = _grid_gcps(annotation, src)
    info = _find(annotation, "imageAnnotation", "imageInformation")
    spacing = annotated = None
    if info is not None:
        spacings = []
        for name in ("rangePixelSpacing", "azimuthPixelSpacing"):
            node = _find(info, name)
            if node is None or not (node.text or "").strip():
                break  # not annotated: measured from the grid instead
            try:
                value = float(node.text)
            except ValueError:
                raise SceneError(
                    f"{src}: imageInformation/{name} is {node.text.strip()[:40]!r}, not a number"
                ) from None
            spacings.append(check_spacing(value, f"imageInformation/{name}", src))
        spacing = sum(spacings) / 2 if len(spacings) == 2 else None
        annotated = (spacings[1], spacings[0]) if len(spacings) == 2 else None  # (azimuth, range)

    calibration = None
    cal_name = _safe_member(files, polarisation, "annotation/calibration", ".xml", prefix="calibration", optional=True)
    if cal_name is not None:
        calibration = _read_calibration(parse_xml(files.read(cal_name), f"{shown}/{cal_name}"), f"{shown}/{cal_name}")

    env = _scene_env()
    try:
        ds = _open_tiff(files.fs, posixpath.join(files.root, measurement), f"{shown}/{measurement}")
    except BaseException:
        env.__exit__(None, None, None)
        raise
    if ds.count != 1 or ds.dtypes[0] != "uint16":
        ds.close()
        env.__exit__(None, None, None)
        raise SceneError(
            f"{shown}/{measurement}: {ds.count} band(s) of {ds.dtypes[0]}; a GRD measurement is one band of uint16 digital numbers"
        )

    product = posixpath.basename(files.root.rstrip("/"))
    scene = Scene(
        source=shown,
        kind="safe",
        height=ds.height,
        width=ds.width,
        dtype="uint16",
        radiometry="dn",
        crs=CRS.from_epsg(4326),
        transform=None,
        gcps=gcps,
        calibration=calibration,
        scene_id=product[:-5] if product.upper().endswith(".SAFE") else product,
        acquisition_time=_optional_text(annotation, "adsHeader", "startTime"),
        time_source="annotation adsHeader/startTime",
        footprint=_manifest_footprint(manifest),
        polarisation=polarisation,
        native_spacing_m=spacing,
        annotated_spacing_m=annotated,
        nodata=0.0,  # a GRD's border outside the swath: DN 0 (it calibrates to no sigma-nought)
    )
    scene._reader = _band_reader(ds, 1)
    scene._closers += [lambda: env.__exit__(None, None, None), ds.close]
    try:
        if spacing is None:
            scene.native_spacing_m = _measured_spacing(scene, src, "the geolocation grid")
        check_placement(scene)
    except BaseException:
        scene.close()
        raise
    return scene


def _optional_text(root: ET.Element, *path: str) -> str | None:
    node = _find(root, *path)
    return node.text.strip() if node is not None and node.text else None


def _read_calibration(root: ET.Element, src: str) -> Calibration:
    vectors = [v for v in (_find(root, "calibrationVectorList") or []) if _local(v.tag) == "calibrationVector"]
    if not vectors:
        raise SceneError(f"{src}: no calibrationVectorList/calibrationVector")
    if len(vectors) > CALIBRATION_MAX_VECTORS:
        raise SceneError(
            f"{src}: {len(vectors)} calibration vectors, more than the {CALIBRATION_MAX_VECTORS} allowed (a GRD slice has a few dozen)"
        )
    lines, pixels, values = [], None, []
    for v in vectors:
        try:
            lines.append(float(_text(v, "line", source=src)))
        except ValueError:
            raise SceneError(f"{src}: calibrationVector/line holds something other than a number") from None
        px = _numbers(_text(v, "pixel", source=src), src, "pixel")
        sigma = _numbers(_text(v, "sigmaNought", source=src), src, "sigmaNought")
        if len(px) != len(sigma) or len(px) < 2:
            raise SceneError(f"{src}: a calibration vector with {len(px)} pixels and {len(sigma)} sigmaNought values")
        if pixels is None:
            pixels = px
        elif len(px) != len(pixels) or not np.allclose(px, pixels):
            raise SceneError(f"{src}: calibration vectors on different pixel grids are not supported")
        values.append(sigma)
    lines_a = np.asarray(lines)
    if not (np.all(np.isfinite(lines_a)) and np.all(np.isfinite(pixels))):
        raise SceneError(f"{src}: calibration lines and pixels must be finite numbers")
    if np.any(np.diff(lines_a) <= 0) or np.any(np.diff(pixels) <= 0):
        raise SceneError(f"{src}: calibration lines and pixels must increase")
    sigma = np.stack(values)
    if not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
        raise SceneError(f"{src}: sigmaNought values must be positive numbers")
    return Calibration(lines_a, pixels, sigma)


def _manifest_footprint(manifest: ET.Element) -> list[tuple[float, float]] | None:
    """The product footprint, ``lat,lon lat,lon ...`` in the manifest's gml:coordinates, as (lon, lat); None
    (the outline of the pixels is used instead) when it is not there or not on the Earth: a NaN or a
    latitude of 95 would reach item.json, or fail in shapely after the whole scene has run."""
    for node in manifest.iter():
        if _local(node.tag) == "coordinates" and node.text:
            try:
                pairs = [tuple(float(v) for v in item.split(",")) for item in node.text.split()]
            except ValueError:
                return None
            if (
                len(pairs) >= 3
                and all(len(p) == 2 for p in pairs)
                and all(-90 <= lat <= 90 and -180 <= lon <= 180 for lat, lon in pairs)
            ):
                return [(lon, lat) for lat, lon in pairs]
    return None


def check_placement(scene: Scene) -> None:
    """A georeferenced scene whose outline (footprint_lonlat) is on the Earth: finite, latitudes within
    +-90 and longitudes within +-360 (past 180 is still a place: a grid across the antimeridian in
    continuous longitudes, which stac._geometry wraps), else a SceneError naming the file. A projected
    grid placed outside its projection maps to inf or NaN, which every later comparison lets through and
    write_geojson writes as Infinity."""
    try:
        ring = np.asarray(footprint_lonlat(scene), dtype=np.float64)
    except SceneError:
        raise
    except Exception as e:  # GDAL's GCP transformer or pyproj on coordinates they cannot use
        raise SceneError(f"{scene.source}: its outline cannot be placed on the Earth: {_first_line(e)}") from None
    lon, lat = ring[:, 0], ring[:, 1]
    # a millionth of a degree of slack: a grid ending at 90 S can compute its last edge as -90.00000000000003
    off = ~(np.isfinite(ring).all(axis=1) & (np.abs(lat) <= 90 + 1e-6) & (np.abs(lon) <= 360))
    if off.any():
        i = int(np.argmax(off))
        raise SceneError(
            f"{scene.source}: its georeferencing places pixels off the Earth (an outline point at longitude {lon[i]}, "
            f"latitude {lat[i]}); check its CRS and geotransform or GCPs"
        )


def footprint_lonlat(scene: Scene, samples: int = 16) -> list[tuple[float, float]]:
    """The outline of the scene's pixels in (lon, lat), ``samples`` points per edge, closed."""
    if not scene.georeferenced:
        raise SceneError(f"{scene.source}: no georeferencing, so no footprint")
    t = np.linspace(0.0, 1.0, samples, endpoint=False)
    w, h = scene.width, scene.height
    cols = np.concatenate([t * w, np.full(samples, w), (1 - t) * w, np.zeros(samples)])
    rows = np.concatenate([np.zeros(samples), t * h, np.full(samples, h), (1 - t) * h])
    lon, lat = scene.pixel_to_lonlat(cols, rows)
    ring = list(zip(lon.tolist(), lat.tolist()))
    return ring + [ring[0]]
