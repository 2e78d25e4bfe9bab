"""Run the whole DAKTer pipeline on the built-in simulated SAR data, small enough for a laptop CPU
(about 10-15 minutes on 2 cores), and write OUT/report.md:

  1. read the data and compute b            4-6. train three students the same way:
  2. train the balanced joint DDPM               real only; + generated as hard labels; + generated soft labels with KD
  3. synthesize pairs with Ray actors        7. evaluate, measure generation quality, write the report

    python jobs/demo.py --out runs/demo
    python jobs/demo.py --out runs/demo diffusion.max_steps=100 student.max_steps=50     (a quicker look)
"""

from __future__ import annotations

from pathlib import Path

from dakter_scale.cli import config_from, parser, progress_enabled, run

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", required=True, help="run folder (model, shards, students, report.md)")
    args = p.parse_args()
    if args.config is None:
        args.config = str(DEMO_CONFIG)

    def body() -> int:
        from dakter_scale.pipeline import run_demo
        from dakter_scale.training import setup_logging

        setup_logging()
        cfg = config_from(args)
        run_demo(cfg, args.out, progress=progress_enabled())
        return 0

    run(body)


if __name__ == "__main__":
    main()
