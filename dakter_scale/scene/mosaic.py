"""A large georeferenced scene made of simulated ones: the built-in data for trying scene inference.

rows x cols scenes of the simulator (data/synthetic_sar.py, the test split's seeds, so a student
trained on the train split has seen none of them), side by side, written band by band as a tiled
GeoTIFF in UTM zone 31N at ``spacing`` metres per pixel: 8-bit dB codes (the simulator's own
convention), or with ``sigma0=True`` linear sigma-nought in float32 (the codes' centres,
osd.uint8_to_linear), so that the predictor's radiometric conversion is exercised. The
ground truth class map is written beside it (``NAME.truth.tif``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dakter_scale.data.osd import uint8_to_linear
from dakter_scale.data.synthetic_sar import scene_seed, simulate_scene

ORIGIN = (500000.0, 5000000.0)  # UTM 31N: the open sea west of the Gulf of Lion is nearby
CRS = "EPSG:32631"


def write_mosaic(
    path: str | Path,
    rows: int,
    cols: int,
    size: int = 256,
    seed: int = 0,
    spacing: float = 10.0,
    sigma0: bool = False,
    progress: bool = False,
) -> tuple[Path, Path]:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    truth = path.with_name(path.stem + ".truth.tif")
    profile = dict(
        driver="GTiff",
        height=rows * size,
        width=cols * size,
        count=1,
        crs=CRS,
        transform=from_origin(*ORIGIN, spacing, spacing),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rows * cols, desc="mosaic", unit="scene")
    with (
        rasterio.open(path, "w", dtype="float32" if sigma0 else "uint8", **profile) as image,
        rasterio.open(truth, "w", dtype="uint8", **profile) as labels,
    ):
        image.update_tags(
            SCENE_ID=f"simulated-mosaic-{rows}x{cols}-{size}-seed{seed}",
            RADIOMETRY="sigma0" if sigma0 else "db8 [-35, 5] dB",
        )
        for r in range(rows):
            for c in range(cols):
                codes, mask = simulate_scene(scene_seed(seed, "test", r * cols + c), size, size)
                window = Window(c * size, r * size, size, size)
                image.write((uint8_to_linear(codes).astype(np.float32) if sigma0 else codes)[None], window=window)
                labels.write(mask[None], window=window)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    return path, truth
