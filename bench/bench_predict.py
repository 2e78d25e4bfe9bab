"""Scene inference benchmark (docs/BENCHMARKS.md, "Scene inference"): writes bench/results/predict.json.

1. Pipeline efficiency: tiles/s of the predictor's tile stage (windowed read, radiometric
   conversion, batched forward, softmax, blending, windowed GeoTIFF writes) divided by tiles/s of a
   bare forward loop (model(x) under no_grad) over the same number of tiles and batch size, with the
   demo's student architecture (unet, resnet18 encoder, depth 5, 5 classes; random weights: timing
   only). Bare loop and predictor alternate (--repeats predictor runs, each between two bare loops,
   compared with their mean) as the CPU is shared; the medians are reported, with the same ratio in
   CPU seconds per tile, which moves less with the load. End-to-end (with vectorising, the COGs and
   the quick-look) is reported beside it.
2. Peak memory against scene size: each size in a fresh process (the scene is written by another
   one), with a per-pixel segmenter so that the pipeline, not the model, is what is measured; peak RSS
   (VmHWM) after imports and at the end.
3. A full IW GRD scene (25,000 x 16,700 pixels) at the demo student's tile settings: the tile count
   and the seconds it takes at the measured CPU tiles/s (a projection from measured numbers, stated
   as such); a GPU figure only where measured on one.
4. Peak memory against the resampling factor (--grd-spacings): a SAFE GRD product of a full IW scene's
   size (25,788 samples x 16,685 lines of uint16 DN, its calibration LUT, the geolocation grid), written
   by tests/scenegen.py, predicted by students whose model pixels are 10, 80 and 500 m (factor 1, 8 and
   50), each in a fresh process: peak RSS, seconds, tiles and tiles/s. Tiles are read decimated by GDAL
   (Scene.read with out_shape), so the peak should not grow with the factor (issue 29: reading each tile's
   full window, 500 m took 12 GB and 45 s).

    python bench/bench_predict.py --sizes 2048,8192 --efficiency-size 2048
    python bench/bench_predict.py --sizes '' --efficiency-size 0 --grd-spacings 10,80,500
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IW_GRD = (16700, 25000)  # lines x samples of a full IW GRDH scene
GRD_PRODUCT = (16685, 25788)  # lines x samples of the product the resampling part writes (issue 29's)


def write_scene(path: Path, size: int, seed: int = 0) -> None:
    """An 8-bit dB-coded GeoTIFF of size x size written in 1024-row windows (sea, dark ellipses), UTM."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    profile = dict(
        driver="GTiff",
        height=size,
        width=size,
        count=1,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 5000000, 10, 10),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    slicks = [
        (rng.uniform(0, size), rng.uniform(0, size), rng.uniform(10, 80), rng.uniform(20, 200))
        for _ in range(max(4, size * size // 4_000_000))
    ]
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, 1024):
            r1 = min(size, r0 + 1024)
            band = np.clip(170 + rng.normal(0, 6, (r1 - r0, size)), 0, 255).astype(np.uint8)
            rows, cols = np.ogrid[r0:r1, 0:size]
            for cy, cx, ay, ax in slicks:
                if cy + ay < r0 or cy - ay > r1:
                    continue
                band[((rows - cy) / ay) ** 2 + ((cols - cx) / ax) ** 2 <= 1] = 60
            ds.write(band[None], window=rasterio.windows.Window(0, r0, size, r1 - r0))


def demo_student(folder: Path) -> Path:
    from dakter_scale.data.osd import CLASSES
    from dakter_scale.student.models import build_student, save_student

    model = build_student("unet", "auto", len(CLASSES))
    return save_student(
        folder,
        model,
        {
            "arch": "unet",
            "encoder": "resnet18",
            "encoder_depth": 5,
            "classes": list(CLASSES),
            "resolution": 512,
            "crop": 0,
            "real": "synthetic:bench",
            "pixel_spacing_m": 10.0,
        },
    )


def efficiency(size: int, tile: int, overlap: int, batch: int, work: Path, repeats: int) -> dict:
    import statistics

    import torch

    from dakter_scale.scene.predict import PredictOptions, Predictor
    from dakter_scale.scene.tile import tile_starts

    scene = work / f"eff-{size}.tif"
    write_scene(scene, size)
    predictor = Predictor(
        demo_student(work / "student"), PredictOptions(tile=tile, overlap=overlap, batch_size=batch), device="cpu"
    )
    model = predictor.model
    tiles = len(tile_starts(size, tile, overlap)) ** 2
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand(min(batch, tiles - i), 1, tile, tile, generator=g) * 2 - 1 for i in range(0, tiles, batch)]

    def bare() -> dict:
        with torch.no_grad():
            t0, c0 = time.perf_counter(), time.process_time()
            for x in batches:
                model(x)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {
            "tiles_per_second": round(tiles / wall, 4),
            "cpu_seconds_per_tile": round(cpu / tiles, 4),
            "load": round(os.getloadavg()[0], 2),
        }

    sys.path.insert(0, str(ROOT / "bench"))
    from measure import count_flops

    with torch.no_grad():
        flops = count_flops(lambda: model(torch.zeros(1, 1, tile, tile)))
        # Warm-up with each batch shape of the loop (a full one and the last): the first call of a shape
        # creates its kernels, which would otherwise be charged to the first bare loop alone.
        model(batches[0])
        model(batches[-1])
    # Interleaved, bare / predictor / bare / ...: each predictor run is compared with the bare loops just
    # before and after it, so that both sides see the same load on a shared machine.
    bares, runs = [bare()], []
    for r in range(repeats):
        record = predictor(str(scene), work / f"eff-{size}-{r}")
        bares.append(bare())
        t = record["timings"]
        around = [b["tiles_per_second"] for b in bares[-2:]]
        around_cpu = [b["cpu_seconds_per_tile"] for b in bares[-2:]]
        runs.append(
            {
                "predict_tile_stage_tiles_per_second": t["tiles_per_second"],
                "efficiency_tile_stage": round(t["tiles_per_second"] / statistics.mean(around), 3),
                "efficiency_end_to_end": round(tiles / t["total_seconds"] / statistics.mean(around), 3),
                "cpu_seconds_per_tile": round(t["tiles_cpu_seconds"] / tiles, 4),
                "cpu_efficiency_tile_stage": round(statistics.mean(around_cpu) / (t["tiles_cpu_seconds"] / tiles), 3),
                "timings": t,
                "forward_seconds": record["tiling"]["forward_seconds"],
                "read_seconds_on_helper_thread": record["tiling"]["read_seconds"],
                "blend_write_seconds_on_helper_thread": record["tiling"]["blend_write_seconds"],
                "load": round(os.getloadavg()[0], 2),
            }
        )

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    return {
        "scene": size,
        "tile": tile,
        "overlap": overlap,
        "batch_size": batch,
        "tiles": tiles,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "flops_per_tile": flops,
        "efficiency_tile_stage": median("efficiency_tile_stage"),
        "efficiency_end_to_end": median("efficiency_end_to_end"),
        "cpu_efficiency_tile_stage": median("cpu_efficiency_tile_stage"),
        "predict_tile_stage_tiles_per_second": median("predict_tile_stage_tiles_per_second"),
        "bare_tiles_per_second": statistics.median(b["tiles_per_second"] for b in bares),
        "bare": bares,
        "runs": runs,
        "definition": "efficiency: predictor tile-stage tiles/s / the mean of the bare model(x) loops just before and after it (same tiles, batch, threads, process); "
        "cpu efficiency: the same with CPU seconds per tile of the whole process (all threads); medians over the repeats",
    }


def grd_rows(r0: int, r1: int, width: int = GRD_PRODUCT[1]):
    """Rows [r0, r1) of the GRD part's 8-bit codes: sea with speckle-like noise, dark ellipses every ~3,000 pixels
    (deterministic per row band, so the scene is the same whoever writes it)."""
    import numpy as np

    rng = np.random.default_rng(r0)
    band = np.clip(170 + rng.normal(0, 6, (r1 - r0, width)), 0, 255).astype(np.uint8)
    rows, cols = np.ogrid[r0:r1, 0:width]
    for cy in range(1500, GRD_PRODUCT[0], 3000):
        for cx in range(1500, width, 3000):
            band[((rows - cy) / 300.0) ** 2 + ((cols - cx) / 900.0) ** 2 <= 1] = 60
    return band


def write_grd(root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from scenegen import write_safe

    return write_safe(root, grd_rows, polarisations=("vv",), shape=GRD_PRODUCT)


RESAMPLE_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import torch
from scenegen import DarkIsOil, info
from dakter_scale.scene.predict import Predictor, PredictOptions
torch.set_num_threads(1)
p = Predictor(DarkIsOil(), PredictOptions(tile={tile}, overlap={overlap}, batch_size={batch}), device="cpu", info=info({spacing}))
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1024
base = status("VmHWM")
t0 = time.time()
r = p({scene!r}, {out!r})
print(json.dumps({{"model_spacing_m": {spacing}, "factor": r["conventions"]["scale"]["factor"], "grid": r["conventions"]["grid"], "baseline_rss_mb": base,
                  "peak_rss_mb": status("VmHWM"), "seconds": time.time() - t0, "tiles": r["tiling"]["count"], "timings": r["timings"], "slicks": r["slicks"]}}))
"""


def run_child(code: str) -> dict:
    """Run `code` in a fresh interpreter (its peak memory its own) and return the JSON of its last line."""
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, DAKTER_PROGRESS="0"),
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def resample(spacings: list[float], tile: int, overlap: int, batch: int, work: Path) -> dict:
    t0 = time.time()
    subprocess.run(
        [sys.executable, __file__, "--write-grd", str(work / "grd")],
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    written = time.time() - t0
    safe = next((work / "grd").glob("*.SAFE"))
    rows = []
    for spacing in spacings:
        out = work / f"grd-{spacing:g}"
        code = RESAMPLE_CHILD.format(
            root=str(ROOT),
            tests=str(ROOT / "tests"),
            tile=tile,
            overlap=overlap,
            batch=batch,
            spacing=spacing,
            scene=str(safe),
            out=str(out),
        )
        row = run_child(code)
        row = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
        print(json.dumps(row), flush=True)
        rows.append(row)
        shutil.rmtree(out)
    return {
        "product": {
            "lines": GRD_PRODUCT[0],
            "samples": GRD_PRODUCT[1],
            "dtype": "uint16",
            "kind": "SAFE GRD (tests/scenegen.py write_safe: DN, calibration LUT, geolocation grid)",
            "write_seconds": round(written, 1),
        },
        "segmenter": "scenegen.DarkIsOil (per pixel: the pipeline, not the model, is measured)",
        "tile": tile,
        "overlap": overlap,
        "batch_size": batch,
        "rows": rows,
    }


MEMORY_CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import torch
from scenegen import DarkIsOil, info
from dakter_scale.scene.predict import Predictor, PredictOptions
torch.set_num_threads(1)
p = Predictor(DarkIsOil(), PredictOptions(tile={tile}, overlap={overlap}, batch_size={batch}), device="cpu", info=info(10.0))
def status(key):  # /proc/self/status: VmHWM is this process's peak RSS (ru_maxrss would carry the forking parent's)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":")) / 1024
base = status("VmHWM")
t0 = time.time()
r = p({scene!r}, {out!r})
print(json.dumps({{"baseline_rss_mb": base, "peak_rss_mb": status("VmHWM"), "seconds": time.time() - t0,
                  "timings": r["timings"], "tiles": r["tiling"]["count"], "blend_carry_peak_mb": r["tiling"]["blend_carry_peak_bytes"] / 2**20}}))
"""


def memory(size: int, tile: int, overlap: int, batch: int, work: Path) -> dict:
    scene = work / f"mem-{size}.tif"
    t0 = time.time()
    subprocess.run(
        [sys.executable, __file__, "--write-scene", str(scene), "--size", str(size)],
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    written = time.time() - t0
    code = MEMORY_CHILD.format(
        root=str(ROOT),
        tests=str(ROOT / "tests"),
        tile=tile,
        overlap=overlap,
        batch=batch,
        scene=str(scene),
        out=str(work / f"mem-{size}"),
    )
    result = run_child(code)
    scene.unlink()
    return {
        "scene": size,
        "megapixels": round(size * size / 1e6, 1),
        "write_scene_seconds": round(written, 1),
        **{k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2048,8192", help="scene sides for the memory sweep (comma-separated)")
    p.add_argument("--efficiency-size", type=int, default=2048, help="scene side for the efficiency run (0: skip)")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="predictor runs in the efficiency part, each between two bare loops (default 3)",
    )
    p.add_argument(
        "--grd-spacings",
        default="",
        help="model pixel spacings (m) for the resampling part on a full GRD product, e.g. 10,80,500 (default: skip)",
    )
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "predict.json"))
    p.add_argument("--write-grd", help=argparse.SUPPRESS)
    p.add_argument("--write-scene", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.write_scene:
        write_scene(Path(args.write_scene), args.size)
        return
    if args.write_grd:
        write_grd(Path(args.write_grd))
        return

    import torch

    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "note": "2 cores shared with other jobs",
    }
    results: dict = {"machine": machine, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        work = Path(tmp)
        if args.efficiency_size:
            results["efficiency"] = e = efficiency(
                args.efficiency_size, args.tile, args.overlap, args.batch_size, work, args.repeats
            )
            print(json.dumps(e), flush=True)
            from dakter_scale.scene.tile import tile_starts

            n = len(tile_starts(IW_GRD[0], args.tile, args.overlap)) * len(
                tile_starts(IW_GRD[1], args.tile, args.overlap)
            )
            projection = {
                "scene": list(IW_GRD),
                "tiles": n,
                "cpu_seconds_at_measured_tile_rate": round(n / e["predict_tile_stage_tiles_per_second"], 0),
                "basis": "tile count of the full scene x the measured tile-stage rate on this CPU; vectorising and COG writing not included",
            }
            gpu = ROOT / "bench" / "results" / "evidence_model_gpu.json"
            if gpu.exists():  # a projection from this repo's H200 measurements, not a measurement of this pipeline
                g = json.loads(gpu.read_text())
                rate = g["sampling"]["fraction_of_peak"] * g["matmul_peak"]["flops_per_second"]
                projection["gpu"] = {
                    "device": g["device"],
                    "forward_seconds": round(n * e["flops_per_tile"] / rate, 1),
                    "achieved_flops_per_second": rate,
                    "basis": "tiles x counted FLOPs per tile / the bf16 FLOP/s a conv UNet reached on that GPU in bench/results/evidence_model_gpu.json (fraction of the measured matmul peak); forward only",
                }
            results["iw_grd_projection"] = projection
        results["memory"] = []
        for size in (int(s) for s in args.sizes.split(",") if s):
            m = memory(size, args.tile, args.overlap, args.batch_size, work)
            results["memory"].append(m)
            print(json.dumps(m), flush=True)
        if args.grd_spacings:
            results["resample"] = resample(
                [float(v) for v in args.grd_spacings.split(",")], args.tile, args.overlap, args.batch_size, work
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    if not results["memory"]:
        results.pop("memory")
    # Parts run separately (--efficiency-size 0, --sizes '') keep the other part's last numbers.
    Path(args.out).write_text(json.dumps(previous | results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
