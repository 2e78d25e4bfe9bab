"""Real scene files for the scene-inference tests: GeoTIFFs (geotransform or GCPs), PNGs and a Sentinel-1
SAFE-layout GRD product, all written here with rasterio / Pillow / the standard library, plus a
deterministic segmenter (dark pixels are oil) to test geometry independently of model quality."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dakter_scale.data.osd import CLASSES, DB_MAX, DB_MIN, uint8_to_linear

SEA_CODE, OIL_CODE = 170, 60  # 8-bit codes in the simulator's window: about -8 dB and -26 dB
ORIGIN = (500000.0, 5000000.0)  # UTM 31N, metres (lon ~3 E, lat ~45 N)
UTM = "EPSG:32631"

# Ellipses (centre row, centre col, semi-axis rows, semi-axis cols) in pixels.
SLICKS = [(150.0, 200.0, 30.0, 70.0), (420.0, 560.0, 45.0, 25.0), (300.0, 650.0, 12.0, 40.0)]


def draw_codes(height: int = 600, width: int = 800, slicks=SLICKS, seed: int = 0) -> np.ndarray:
    """8-bit codes: sea with mild speckle-like noise, elliptical slicks at OIL_CODE."""
    rng = np.random.default_rng(seed)
    codes = np.clip(SEA_CODE + rng.normal(0, 6, (height, width)), 0, 255).astype(np.uint8)
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    for cy, cx, ay, ax in slicks:
        inside = ((rows - cy) / ay) ** 2 + ((cols - cx) / ax) ** 2 <= 1.0
        codes[inside] = np.clip(OIL_CODE + rng.normal(0, 6, inside.sum()), 0, 255).astype(np.uint8)
    return codes


def write_geotiff(
    path: Path, data: np.ndarray, spacing: float = 10.0, gcps: bool = False, crs: str = UTM, tags: dict | None = None
) -> Path:
    """A tiled one-band GeoTIFF at ORIGIN with square `spacing` pixels in `crs`, or placed by a 5 x 5 grid
    of GCPs made from that transform (gcps=True; the CRS is then the GCPs')."""
    from rasterio.control import GroundControlPoint
    from rasterio.transform import from_origin

    transform = from_origin(ORIGIN[0], ORIGIN[1], spacing, spacing)
    tiling = dict(tiled=True, blockxsize=256, blockysize=256, tags=tags)
    if not gcps:
        return Path(write_raster(path, data, crs, transform, **tiling))
    points = []
    for i, r in enumerate(np.linspace(0, data.shape[0], 5)):
        for j, c in enumerate(np.linspace(0, data.shape[1], 5)):
            x, y = transform * (c, r)
            points.append(GroundControlPoint(row=r, col=c, x=x, y=y, z=0.0, id=f"{i}-{j}"))
    return Path(write_raster(path, data, gcps=points, gcp_crs=crs, **tiling))


def sigma0_of(codes: np.ndarray) -> np.ndarray:
    """Linear sigma0 (float32) whose dB value falls on each code's centre: converts back to the codes."""
    return uint8_to_linear(codes).astype(np.float32)


class DarkIsOil(torch.nn.Module):
    """Per-pixel thresholding: p(oil) = sigmoid(k (t - x)) for x in [-1, 1], the rest sea. No spatial
    context, so tiled and whole-image outputs are identical and geometry is tested alone."""

    def __init__(self, classes=CLASSES, threshold_code: float = 115.0, sharpness: float = 40.0):
        super().__init__()
        self.k, self.t, self.n = sharpness, threshold_code / 127.5 - 1.0, len(classes)
        self.oil = list(classes).index("oil")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((x.shape[0], self.n, *x.shape[-2:]), -20.0, dtype=x.dtype, device=x.device)
        logits[:, 0] = 0.0
        logits[:, self.oil] = self.k * (self.t - x[:, 0])
        return logits


class SmoothSegmenter(torch.nn.Module):
    """A seeded random conv net (receptive field 9 px): spatial context, so tiles see their edges."""

    def __init__(self, classes=CLASSES, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(8, 8, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(8, len(classes), 3, padding=1),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        return self.net(x) * 3.0


def info(pixel_spacing: float | None = 10.0, classes=CLASSES) -> dict:
    return {
        "arch": "test",
        "encoder": "none",
        "classes": list(classes),
        "resolution": 64,
        "crop": 0,
        "real": "synthetic:8",
        "radiometry": {"kind": "sigma0_db8", "db_min": DB_MIN, "db_max": DB_MAX},
        "pixel_spacing_m": pixel_spacing,
    }


# -- Sentinel-1 SAFE -----------------------------------------------------------------------------------

PRODUCT = "S1A_IW_GRDH_1SDV_20260101T054512_20260101T054537_062000_07C0DE_ABCD"
START = "2026-01-01T05:45:12.123456"


def grd_corners(height: int, width: int) -> dict:
    """(lon, lat) of the four image corners: a skewed quadrilateral like a descending pass."""
    return {
        (0, 0): (3.00, 45.30),
        (0, width): (3.40, 45.35),
        (height, 0): (2.95, 45.00),
        (height, width): (3.35, 45.05),
    }


def corner_lonlat(row: float, col: float, height: int, width: int) -> tuple[float, float]:
    """Bilinear between the corners at pixel-corner coordinates (row, col) ((0, 0) the first pixel's top-left
    corner): the 'truth' the geolocation grid samples."""
    c = grd_corners(height, width)
    u, v = col / width, row / height
    lon = (
        (1 - u) * (1 - v) * c[(0, 0)][0]
        + u * (1 - v) * c[(0, width)][0]
        + (1 - u) * v * c[(height, 0)][0]
        + u * v * c[(height, width)][0]
    )
    lat = (
        (1 - u) * (1 - v) * c[(0, 0)][1]
        + u * (1 - v) * c[(0, width)][1]
        + (1 - u) * v * c[(height, 0)][1]
        + u * v * c[(height, width)][1]
    )
    return lon, lat


def track_lonlat(lat0: float, heading: float, rows, cols, lines: int, samples: int, spacing: float):
    """(lon, lat) of pixel (row, col) of a GRD-like footprint centred at (10 E, lat0) on the WGS84
    ellipsoid: from its first pixel, rows along a track of the given heading, then columns across it (to
    the right), each a geodesic step of ``spacing`` metres per pixel (bench/gcp_accuracy.py's truth)."""
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    lon_a, lat_a, _ = geod.fwd(10.0, lat0, heading + 180.0, lines * spacing / 2)
    lon_0, lat_0, _ = geod.fwd(lon_a, lat_a, heading - 90.0, samples * spacing / 2)
    rows, cols = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
    full = np.ones(rows.shape)
    lon_r, lat_r, back = geod.fwd(lon_0 * full, lat_0 * full, heading * full, rows * spacing)
    lon, lat, _ = geod.fwd(lon_r, lat_r, np.asarray(back) + 270.0, cols * spacing)  # back + 180: the track's heading
    return np.asarray(lon), np.asarray(lat)


def write_raster(
    path,
    data: np.ndarray,
    crs: str | None = None,
    transform=None,
    gcps: list | None = None,
    gcp_crs: str = "EPSG:4326",
    tags: dict | None = None,
    **profile,
) -> str:
    """A one-band GeoTIFF of `data` placed by a CRS and an affine transform, or by GCPs (in gcp_crs);
    profile: further creation options (tiled, blockxsize, ...)."""
    import rasterio

    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=data.shape[0],
        width=data.shape[1],
        count=1,
        dtype=str(data.dtype),
        crs=crs,
        transform=transform,
        **profile,
    ) as ds:
        if gcps is not None:
            ds.gcps = (gcps, rasterio.crs.CRS.from_string(gcp_crs))
        ds.write(data[None])
        ds.update_tags(**(tags or {}))
    return str(path)


def write_vector(path, geoms, crs: str) -> str:
    """A GeoPackage (with its spatial index) of shapely geometries in ``crs``: a --land file."""
    import pyogrio.raw
    import shapely

    pyogrio.raw.write(
        str(path),
        np.array(shapely.to_wkb(list(geoms)), dtype=object),
        field_data=[],
        fields=[],
        driver="GPKG",
        geometry_type="Unknown",
        crs=crs,
    )
    return str(path)


def write_safe(
    root: Path,
    codes,
    polarisations=("vv", "vh"),
    a_sigma: float = 400.0,
    calibration: bool = True,
    shape: tuple[int, int] | None = None,
    spacing: tuple[float, float] = (10.0, 10.0),
) -> Path:
    """A SAFE-layout GRD folder (``spacing``: the annotated azimuth and range pixel spacing, metres): manifest.safe (with the footprint), per polarisation an annotation with a
    geolocation grid (line/pixel are sample indices: each point holds the truth at that pixel's centre,
    corner_lonlat(line + 0.5, pixel + 0.5), as in ESA's products; scene/read.py), a calibration file with a sigma-nought LUT (a constant A plus a gentle range ramp),
    and a uint16 measurement TIFF of DN = A sqrt(sigma0). ``codes``: the 8-bit codes (H, W), or, for a
    scene too large to hold, a function (row0, row1) -> those rows with ``shape`` (H, W): the measurement is
    then written 1,024 rows at a time."""
    import rasterio
    from rasterio.windows import Window

    height, width = codes.shape if shape is None else shape
    rows_of = (lambda r0, r1: codes[r0:r1]) if shape is None else codes
    safe = root / f"{PRODUCT}.SAFE"
    for sub in ("measurement", "annotation/calibration"):
        (safe / sub).mkdir(parents=True, exist_ok=True)
    corners = grd_corners(height, width)
    ring = " ".join(
        f"{lat},{lon}"
        for lon, lat in (corners[(0, 0)], corners[(0, width)], corners[(height, width)], corners[(height, 0)])
    )
    (safe / "manifest.safe").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<xfdu:XFDU xmlns:xfdu="urn:ccsds:schema:xfdu:1" xmlns:safe="http://www.esa.int/safe/sentinel-1.0" xmlns:gml="http://www.opengis.net/gml">'
        f'<metadataSection><metadataObject ID="measurementFrameSet"><metadataWrap><xmlData><safe:frameSet><safe:frame><safe:footPrint srsName="http://www.opengis.net/gml/srs/epsg.xml#4326">'
        f"<gml:coordinates>{ring}</gml:coordinates></safe:footPrint></safe:frame></safe:frameSet></xmlData></metadataWrap></metadataObject></metadataSection></xfdu:XFDU>\n"
    )
    lines = np.linspace(0, height - 1, 6).round().astype(int)
    pixels = np.linspace(0, width - 1, 7).round().astype(int)
    lut_pixels = np.linspace(0, width - 1, 9).round().astype(int)
    a_of = lambda px: a_sigma * (1.0 + 0.1 * px / width)  # noqa: E731 - a range-dependent LUT, as in real products
    a_cols = np.interp(np.arange(width), lut_pixels, a_of(lut_pixels))[None, :]

    def dn(r0: int, r1: int) -> np.ndarray:
        return np.clip(np.rint(a_cols * np.sqrt(uint8_to_linear(rows_of(r0, r1)))), 0, 65535).astype(np.uint16)

    for pol in polarisations:
        stem = f"s1a-iw-grd-{pol}-20260101t054512-20260101t054537-062000-07c0de-001"
        points = "".join(
            f"<geolocationGridPoint><azimuthTime>{START}</azimuthTime><slantRangeTime>5.3e-03</slantRangeTime><line>{r}</line><pixel>{c}</pixel>"
            f"<latitude>{corner_lonlat(r + 0.5, c + 0.5, height, width)[1]:.9f}</latitude><longitude>{corner_lonlat(r + 0.5, c + 0.5, height, width)[0]:.9f}</longitude><height>0</height>"
            "<incidenceAngle>35</incidenceAngle><elevationAngle>31</elevationAngle></geolocationGridPoint>"
            for r in lines
            for c in pixels
        )
        (safe / "annotation" / f"{stem}.xml").write_text(
            f'<?xml version="1.0" encoding="UTF-8"?>\n<product><adsHeader><missionId>S1A</missionId><productType>GRD</productType><polarisation>{pol.upper()}</polarisation>'
            f"<mode>IW</mode><swath>IW</swath><startTime>{START}</startTime><stopTime>2026-01-01T05:45:37.000000</stopTime></adsHeader>"
            f"<imageAnnotation><imageInformation><rangePixelSpacing>{spacing[1]:.1e}</rangePixelSpacing><azimuthPixelSpacing>{spacing[0]:.1e}</azimuthPixelSpacing>"
            f"<numberOfSamples>{width}</numberOfSamples><numberOfLines>{height}</numberOfLines></imageInformation></imageAnnotation>"
            f'<geolocationGrid><geolocationGridPointList count="{len(lines) * len(pixels)}">{points}</geolocationGridPointList></geolocationGrid></product>\n'
        )
        if calibration:
            vectors = "".join(
                f'<calibrationVector><azimuthTime>{START}</azimuthTime><line>{r}</line><pixel count="{len(lut_pixels)}">{" ".join(map(str, lut_pixels))}</pixel>'
                f'<sigmaNought count="{len(lut_pixels)}">{" ".join(f"{a_of(p):.6e}" for p in lut_pixels)}</sigmaNought>'
                f'<betaNought count="{len(lut_pixels)}">{" ".join("4.0e+02" for _ in lut_pixels)}</betaNought></calibrationVector>'
                for r in lines
            )
            (safe / "annotation" / "calibration" / f"calibration-{stem}.xml").write_text(
                f'<?xml version="1.0" encoding="UTF-8"?>\n<calibration><adsHeader><polarisation>{pol.upper()}</polarisation></adsHeader>'
                f"<calibrationInformation><absoluteCalibrationConstant>1</absoluteCalibrationConstant></calibrationInformation>"
                f'<calibrationVectorList count="{len(lines)}">{vectors}</calibrationVectorList></calibration>\n'
            )
        with rasterio.open(
            safe / "measurement" / f"{stem}.tiff",
            "w",
            driver="GTiff",
            height=height,
            width=width,
            count=1,
            dtype="uint16",
        ) as ds:
            for r0 in range(0, height, 1024):
                r1 = min(height, r0 + 1024)
                ds.write(dn(r0, r1)[None], window=Window(0, r0, width, r1 - r0))
    return safe


def zip_folder(folder: Path, out: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, str(p.relative_to(folder.parent)))
    return out


def ellipse_area(ay: float, ax: float) -> float:
    return math.pi * ay * ax
