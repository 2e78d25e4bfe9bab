"""Write a large georeferenced GeoTIFF made of simulated scenes (and its ground-truth class map), the
built-in data for trying jobs/predict.py (dakter_scale/scene/mosaic.py).

    python jobs/write_mosaic.py --out data/mosaic.tif --rows 8 --cols 8 --size 256
"""

from __future__ import annotations

from dakter_scale.cli import check_flag, parser, progress_enabled, run, script


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument("--out", required=True, help="GeoTIFF to write; the truth goes to NAME.truth.tif beside it")
    p.add_argument("--rows", type=int, default=4, help="simulated scenes down (default 4)")
    p.add_argument("--cols", type=int, default=4, help="simulated scenes across (default 4)")
    p.add_argument("--size", type=int, default=256, help="side of each simulated scene in pixels (default 256)")
    p.add_argument("--spacing", type=float, default=10.0, help="metres per pixel of the mosaic's UTM grid (default 10)")
    p.add_argument(
        "--seed", type=int, default=0, help="the simulator's base seed (default 0); scenes come from its test split"
    )
    p.add_argument(
        "--sigma0", action="store_true", help="write linear sigma-nought (float32) instead of 8-bit dB codes"
    )
    args = p.parse_args()

    def body() -> int:
        for flag, value, low in (
            ("--rows", args.rows, 1),
            ("--cols", args.cols, 1),
            ("--size", args.size, 16),
            ("--spacing", args.spacing, 1e-3),
            ("--seed", args.seed, 0),
        ):
            check_flag(flag, value, low)
        from dakter_scale.scene.mosaic import write_mosaic

        image, truth = write_mosaic(
            args.out, args.rows, args.cols, args.size, args.seed, args.spacing, args.sigma0, progress=progress_enabled()
        )
        print(
            f"wrote {image} ({args.rows * args.size} x {args.cols * args.size} px at {args.spacing:g} m, EPSG:32631) and {truth}"
        )
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
