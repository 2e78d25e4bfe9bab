"""Find slicks in SAR scenes with a trained student: probability and class-map COGs, slick polygons
(GeoJSON, EPSG:4326), a quick-look PNG and a predict.json record per scene (docs/inference.md).

    python jobs/predict.py --student runs/student --scene S1A_IW_GRDH_....SAFE.zip --out runs/scene
    python jobs/predict.py --student runs/student --scene s3://bucket/mosaic.tif --out runs/mosaic --classes oil,look-alike
    python jobs/predict.py --student runs/student --scenes 's3://bucket/2026-11/*.zip' --out runs/month --actors auto
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/predict.py --student runs/student --scenes 's3://bucket/2026-11/*.zip' --out runs/month

A scene is a GeoTIFF/COG (geotransform or ground control points, any CRS), a Sentinel-1 GRD SAFE folder
or .zip (VV by default, calibrated to sigma-nought with its LUT), or a PNG/JPEG (pixel coordinates).
With --scenes the scenes run on Ray actors (one model load each; Ray: RAY_ADDRESS, set by `ray job submit`,
else the latest `ray start` on this machine, else a new local cluster); a scene whose predict.json exists is
skipped, a failed scene is retried and then reported by name while the others finish.
"""

from __future__ import annotations

import json
import sys

from dakter_scale.cli import actor_count, check_flag, parser, progress_enabled, run, script
from dakter_scale.scene.predict import MAX_GRID_PIXELS, MAX_RESAMPLE_FACTOR, MAX_SCENE_PIXELS

# Flags whose value may start with "-": argparse takes such a value for a flag unless it is one plain
# negative number, and a dB window of sigma-nought starts below zero ("-35,5").
DASHED_VALUES = ("--db-window",)


def window(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition(",")
    return float(lo), float(hi)


def join_dashed_values(argv: list[str]) -> list[str]:
    """``--db-window -35,5`` -> ``--db-window=-35,5`` (DASHED_VALUES), so that argparse reads it as the value."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in DASHED_VALUES and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument("--student", required=True, help="student folder written by jobs/train_student.py")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--scene", help="one scene: local path or fsspec URL (GeoTIFF, SAFE folder or .zip, PNG/JPEG)")
    where.add_argument(
        "--scenes",
        help="many scenes: a GLOB, a LIST_FILE (one path or URL a line) or a URL_PREFIX (every scene directly under it)",
    )
    p.add_argument("--out", required=True, help="output folder (local); with --scenes one sub-folder per scene")
    g = p.add_argument_group("tiling")
    g.add_argument("--tile", type=int, default=512, help="tile side in model pixels (default 512)")
    g.add_argument(
        "--overlap",
        type=int,
        default=64,
        help="pixels shared by neighbouring tiles, blended with a cosine-squared ramp (default 64)",
    )
    g.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass (default 8)")
    g.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the student runs (auto: a GPU when present; bf16 where supported)",
    )
    g = p.add_argument_group("scene and radiometry")
    g.add_argument("--polarisation", default="VV", help="SAFE products: the polarisation to read (default VV)")
    g.add_argument("--band", type=int, help="GeoTIFFs with several bands: the SAR band to read (1-based)")
    g.add_argument(
        "--scene-radiometry",
        default="auto",
        choices=["auto", "db8", "sigma0", "sigma0_db"],
        help="what a GeoTIFF's pixels are: db8 = 8-bit codes of dB (uint8), used as read and assumed to be in the student's window (--db-window ignored); sigma0 = linear sigma-nought (float); sigma0_db = sigma-nought already in dB (float); both converted to codes over the student's window or --db-window; auto (default) = db8 for uint8, sigma0 for float (SAFE products: DN calibrated with their LUT)",
    )
    g.add_argument(
        "--db-window",
        type=window,
        metavar="MIN,MAX",
        help="dB window of the 8-bit codes (default: the student's training window)",
    )
    g.add_argument(
        "--allow-radiometry-mismatch",
        action="store_true",
        help="run even when the scene's radiometry cannot be converted to the student's (recorded in predict.json)",
    )
    g.add_argument(
        "--pixel-spacing",
        type=float,
        metavar="METRES",
        help="the training data's pixel spacing, when the student folder records none: scenes are resampled to it",
    )
    g.add_argument(
        "--require-georeferencing",
        action="store_true",
        help="refuse a scene without georeferencing instead of writing pixel coordinates",
    )
    g = p.add_argument_group("caps (checked before any tile runs; docs/inference.md)")
    g.add_argument(
        "--max-scene-pixels",
        type=int,
        default=MAX_SCENE_PIXELS,
        metavar="N",
        help=f"refuse a scene of more pixels (default {MAX_SCENE_PIXELS:,}; a full IW GRD is 430 million)",
    )
    g.add_argument(
        "--max-grid-pixels",
        type=int,
        default=MAX_GRID_PIXELS,
        metavar="N",
        help=f"refuse a model grid of more pixels (default {MAX_GRID_PIXELS:,})",
    )
    g.add_argument(
        "--max-resample-factor",
        type=float,
        default=MAX_RESAMPLE_FACTOR,
        metavar="F",
        help=f"refuse a model grid more than F scene pixels per model pixel, or 1/F (default {MAX_RESAMPLE_FACTOR:g})",
    )
    g = p.add_argument_group("slicks")
    g.add_argument(
        "--classes", default="oil", help="classes to vectorise, comma-separated (default oil; e.g. oil,look-alike)"
    )
    g.add_argument(
        "--seed-threshold",
        type=float,
        default=0.6,
        help="a slick holds at least one pixel with this probability (default 0.6)",
    )
    g.add_argument(
        "--outline-threshold",
        type=float,
        default=0.4,
        help="a slick's outline: connected pixels with at least this probability (default 0.4)",
    )
    g.add_argument(
        "--min-area",
        type=float,
        default=0.0,
        metavar="M2",
        help="drop slicks smaller than this many square metres (scene pixels, not model pixels, without georeferencing; default 0: keep all)",
    )
    g.add_argument(
        "--simplify",
        type=float,
        default=0.0,
        metavar="METRES",
        help="polygon simplification tolerance (scene pixels without georeferencing; default 0: pixel outlines)",
    )
    g.add_argument(
        "--land",
        metavar="VECTOR_FILE",
        help="land polygons (any format GDAL/OGR reads): no slicks there, marked land in the class map (certain background for a student without a land class)",
    )
    g.add_argument(
        "--land-buffer",
        type=float,
        default=0.0,
        metavar="METRES",
        help="grow the land polygons by this many metres (default 0)",
    )
    g.add_argument("--no-quicklook", action="store_true", help="skip quicklook.png")
    g = p.add_argument_group("many scenes (--scenes)")
    g.add_argument(
        "--actors",
        default="auto",
        help="Ray actors: auto (default; one per GPU, else CPUs / --threads-per-actor), a number, or 0 to run in this process without Ray; with --scenes anything but 0, auto included, starts Ray (or joins RAY_ADDRESS / a running `ray start`)",
    )
    g.add_argument("--threads-per-actor", type=int, default=1, help="CPU threads per actor (default 1)")
    g.add_argument("--retries", type=int, default=1, help="extra attempts for a failed scene (default 1)")
    g.add_argument(
        "--call-timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="Ray: a scene still running after S seconds is presumed hung; its actor is killed and replaced and the scene retried (default 0: no limit)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the record (or the many-scene summary) as one JSON object on stdout"
    )
    args = p.parse_args(join_dashed_values(sys.argv[1:]))

    def body() -> int:
        for flag, value, low, high in (
            ("--tile", args.tile, 32, 8192),
            ("--overlap", args.overlap, 0, args.tile - 1),
            ("--batch-size", args.batch_size, 1, 4096),
            ("--threads-per-actor", args.threads_per_actor, 1, None),
            ("--retries", args.retries, 0, 100),
            ("--call-timeout", args.call_timeout, 0, None),
        ):
            check_flag(flag, value, low, high)
        actors = actor_count(args.actors)
        from dakter_scale.scene.many import RunSettings, predict_many
        from dakter_scale.scene.predict import PredictOptions, Predictor
        from dakter_scale.training import setup_logging

        setup_logging()  # the scene's notes and "no STAC item" reach stderr, as the other jobs' log lines do

        options = PredictOptions(
            tile=args.tile,
            overlap=args.overlap,
            batch_size=args.batch_size,
            classes=tuple(c.strip() for c in args.classes.split(",") if c.strip()),
            seed_threshold=args.seed_threshold,
            outline_threshold=args.outline_threshold,
            min_area_m2=args.min_area,
            simplify_m=args.simplify,
            polarisation=args.polarisation.upper(),
            band=args.band,
            scene_radiometry=args.scene_radiometry,
            db_window=args.db_window,
            allow_radiometry_mismatch=args.allow_radiometry_mismatch,
            pixel_spacing=args.pixel_spacing,
            land=args.land,
            land_buffer_m=args.land_buffer,
            require_georeferencing=args.require_georeferencing,
            quicklook=not args.no_quicklook,
            max_scene_pixels=args.max_scene_pixels,
            max_grid_pixels=args.max_grid_pixels,
            max_resample_factor=args.max_resample_factor,
        )
        device = None if args.device == "auto" else args.device
        if args.scene:
            record = Predictor(args.student, options, device=device, progress=progress_enabled() and not args.json)(
                args.scene, args.out
            )
            if args.json:
                print(json.dumps(record))
            else:
                t = record["timings"]
                print(
                    f"{record['scene']['source']}: {record['slicks']} slick(s) in {args.out} ({record['tiling']['count']} tiles, {t['tiles_per_second']} tiles/s, {t['total_seconds']} s)"
                )
            return 0
        settings = RunSettings(
            actors=actors if actors != 0 else "auto",
            threads_per_actor=args.threads_per_actor,
            retries=args.retries,
            call_timeout=args.call_timeout,
        )
        summary = predict_many(
            args.student,
            args.scenes,
            args.out,
            options,
            settings=settings,
            use_ray=actors != 0,
            device=args.device,
            progress=progress_enabled() and not args.json,
        )
        if args.json:
            print(json.dumps(summary.to_json()))
        else:
            print("\n".join(summary.lines()))
        return 0 if summary.ok else 1

    run(body)


if __name__ == "__main__":
    script(main)
