"""Land file cost per scene (docs/BENCHMARKS.md, "Scene inference"): writes bench/results/land.json.

A world-wide land file (a GeoPackage of --cells polygons of --vertices vertices each, tiled over the globe
the way OSM's split land polygons are, written with its spatial index) and a 10 m UTM scene of --size
pixels: the seconds `scene.land.land_rasteriser` takes to build the scene's land mask when it reads only
the window around the scene (the default) and when it reads the whole file (the window switched off),
alternating, --repeats times each; medians and their ratio, and the two masks compared with each other
and with where the coast was drawn (down the scene's middle column, grown by the buffer).

    python bench/bench_land.py --cells 16200 --vertices 200 --size 2048
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def world_land(path: Path, cells: int, vertices: int, coast_lon: float) -> int:
    """Polygons on a lon/lat grid between 60 S and 75 N, each a ring of `vertices` points inside its cell,
    except near the scene (1.5-4.5 E, 43.5-46.5 N), where one polygon's coast runs north-south at
    coast_lon, so that the scene is part land, part sea."""
    import numpy as np
    import shapely

    from scenegen import write_vector

    ny = max(1, int(round((cells / 2) ** 0.5)))
    nx = max(1, cells // ny)
    dx, dy = 360.0 / nx, 135.0 / ny
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    geoms = []
    for j in range(ny):
        for i in range(nx):
            cx, cy = -180.0 + (i + 0.5) * dx, -60.0 + (j + 0.5) * dy
            ring = np.column_stack([cx + 0.45 * dx * np.cos(angles), cy + 0.45 * dy * np.sin(angles)])
            geoms.append(shapely.Polygon(ring))
    near = shapely.box(1.5, 43.5, 4.5, 46.5)
    geoms = [g for g in geoms if not g.intersects(near)]
    geoms.append(shapely.segmentize(shapely.box(2.0, 44.0, coast_lon, 46.0), 0.01))
    write_vector(path, geoms, "EPSG:4326")
    return len(geoms)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=16200, help="polygons in the world file")
    p.add_argument("--vertices", type=int, default=200, help="vertices per polygon")
    p.add_argument("--size", type=int, default=2048, help="scene side in pixels (10 m)")
    p.add_argument("--buffer", type=float, default=500.0, help="--land-buffer in metres")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "land.json"))
    args = p.parse_args()

    import numpy as np

    from dakter_scale.scene import land
    from dakter_scale.scene.read import open_scene

    from scenegen import write_geotiff

    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "world.gpkg")
        t0 = time.perf_counter()
        from pyproj import Transformer

        from scenegen import ORIGIN, UTM

        # the coast at the scene's middle column
        coast_lon, _ = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(
            ORIGIN[0] + args.size * 5.0, ORIGIN[1]
        )
        n = world_land(Path(url), args.cells, args.vertices, coast_lon)
        written = time.perf_counter() - t0
        scene_path = write_geotiff(Path(tmp) / "scene.tif", np.full((args.size, args.size), 0.05, dtype=np.float32))
        window_fn = land.footprint_windows
        times = {"window": [], "whole": []}
        masks = {}
        with open_scene(str(scene_path)) as scene:
            for _ in range(args.repeats):
                for name in ("window", "whole"):
                    land.footprint_windows = window_fn if name == "window" else (lambda *a: None)
                    t0 = time.perf_counter()
                    masks[name] = land.land_rasteriser(url, args.buffer, scene, 1.0, 1.0)(0, args.size, 0, args.size)
                    times[name].append(time.perf_counter() - t0)
            land.footprint_windows = window_fn
            read, _ = land.read_vector(url, window_fn(scene, args.buffer, __import__("pyproj").CRS("EPSG:4326")))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": platform.processor() or platform.machine(),
        "world_file": {"polygons": n, "vertices_each": args.vertices, "write_seconds": round(written, 2)},
        "scene": {"pixels": [args.size, args.size], "spacing_m": 10.0, "crs": "EPSG:32631"},
        "buffer_m": args.buffer,
        "polygons_read_in_window": len(read),
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "median_seconds": {k: round(v, 3) for k, v in med.items()},
        "whole_over_window": round(med["whole"] / med["window"], 1),
        "masks_equal": bool(np.array_equal(masks["window"], masks["whole"])),
        # the coast runs down the middle column and is grown by the buffer: land is columns < this
        "expected_land_columns": int(round(args.size / 2 + args.buffer / 10.0)),
        "land_columns": {k: int(np.flatnonzero(m.any(axis=0)).max() + 1) if m.any() else 0 for k, m in masks.items()},
        "land_pixels": {k: int(m.sum()) for k, m in masks.items()},
        "command": "python bench/bench_land.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
