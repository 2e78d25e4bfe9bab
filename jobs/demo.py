"""Run the whole DAKTer pipeline on the built-in simulated SAR data, small enough for a laptop CPU,
and write OUT/report.md. The demo is the experiment runner (jobs/experiment.py) on
configs/demo.yaml's plan -- one student, no augmentation / hard labels / DAKTer, one seed:

  1. train the balanced joint DDPM (b = "auto")    3-5. train three students the same way: real only;
  2. synthesize ratio x |D| pairs with Ray actors        + generated as hard labels; + soft labels with KD
                                                   6. evaluate, measure generation quality, write the report

    python jobs/demo.py --out runs/demo
    python jobs/demo.py --out runs/demo diffusion.max_steps=100 student.max_steps=50     (a quicker look)

Rerunning the same command after an interruption resumes: finished units are kept.
"""

from __future__ import annotations

from pathlib import Path

from dakter_scale.cli import config_from, parser, progress_enabled, run, script

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", required=True, help="run folder (models, generated, students, report.md; resumable)")
    args = p.parse_args()
    if args.config is None:
        args.config = str(DEMO_CONFIG)

    def body() -> int:
        from dakter_scale.experiment import run_demo
        from dakter_scale.training import setup_logging

        setup_logging()
        path = run_demo(config_from(args), args.out, progress=progress_enabled())
        print(f"report written to {path}", flush=True)
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
