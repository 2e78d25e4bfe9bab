"""How well a Sentinel-1-like geolocation grid places pixels (docs/BENCHMARKS.md, "Scene inference"):
writes bench/results/gcp_accuracy.json.

The truth is a synthetic IW GRD footprint on the WGS84 ellipsoid: 25,000 lines x 16,700 samples of 10 m,
lines along a track of the given heading, samples across it (geodesic steps from the first pixel). Its
geolocation grid holds 10 x 21 points, as an IW GRD annotation does. Each pixel-to-lon/lat route GDAL
offers through rasterio's GCPTransformer (its least-squares polynomial, and a thin-plate spline) is
compared with the truth at --points random pixels: the median, 95th percentile and largest error in
metres (geodesic), at each --latitudes scene centre.

    python bench/gcp_accuracy.py --latitudes 0,40,60,70,80
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from scenegen import track_lonlat  # noqa: E402

LINES, SAMPLES, SPACING = 25_000, 16_700, 10.0
GRID = (10, 21)  # geolocation grid points along lines and samples, as an IW GRD annotation has


def truth(lat0: float, heading: float, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return track_lonlat(lat0, heading, rows, cols, LINES, SAMPLES, SPACING)


def errors(lat0: float, heading: float, points: int, seed: int) -> dict:
    from pyproj import Geod
    from rasterio.control import GroundControlPoint
    from rasterio.transform import GCPTransformer

    gr = np.linspace(0, LINES - 1, GRID[0])
    gc = np.linspace(0, SAMPLES - 1, GRID[1])
    R, C = np.meshgrid(gr, gc, indexing="ij")
    lon, lat = truth(lat0, heading, R + 0.5, C + 0.5)  # a grid point holds the truth at its pixel's centre
    gcps = [
        GroundControlPoint(row=float(r) + 0.5, col=float(c) + 0.5, x=float(x), y=float(y), z=0.0)
        for r, c, x, y in zip(R.ravel(), C.ravel(), lon.ravel(), lat.ravel())
    ]
    rng = np.random.default_rng(seed)
    rows, cols = rng.uniform(0, LINES, points), rng.uniform(0, SAMPLES, points)
    t_lon, t_lat = truth(lat0, heading, rows, cols)
    geod = Geod(ellps="WGS84")
    out = {}
    for name, tps in (("polynomial", False), ("thin_plate_spline", True)):
        with GCPTransformer(gcps, tps=tps) as t:
            xs, ys = t.xy(rows, cols, offset="ul")
        _, _, d = geod.inv(t_lon, t_lat, np.asarray(xs), np.asarray(ys))
        d = np.abs(np.asarray(d))
        out[name] = {
            "median_m": round(float(np.median(d)), 2),
            "p95_m": round(float(np.percentile(d, 95)), 2),
            "max_m": round(float(d.max()), 2),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latitudes", default="0,40,60,70,80", help="scene-centre latitudes, comma-separated")
    p.add_argument(
        "--heading", type=float, default=-12.0, help="track heading, degrees from north (ascending IW: about -12)"
    )
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gcp_accuracy.json"))
    args = p.parse_args()
    result = {
        "machine": platform.processor() or platform.machine(),
        "scene": {
            "lines": LINES,
            "samples": SAMPLES,
            "spacing_m": SPACING,
            "grid": list(GRID),
            "heading": args.heading,
        },
        "points": args.points,
        "by_latitude": {
            lat: errors(float(lat), args.heading, args.points, args.seed) for lat in args.latitudes.split(",")
        },
        "command": "python bench/gcp_accuracy.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["by_latitude"], indent=1))


if __name__ == "__main__":
    main()
