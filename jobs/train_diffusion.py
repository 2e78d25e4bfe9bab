"""Train the balanced joint DDPM (SAR image + K label channels) and write a model folder.

    python jobs/train_diffusion.py --data synthetic:64 --out runs/model --config configs/demo.yaml
    accelerate launch --num_processes 8 jobs/train_diffusion.py --data osd:/data/osd --out runs/osd --config configs/osd.yaml
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 jobs/train_diffusion.py ...          (2 CPU processes, gloo)
    python jobs/train_diffusion.py ... diffusion.checkpoint_every=500 --resume latest (continue after a stop)

On CPU launch several processes with torchrun: `accelerate launch --cpu --num_processes N` starts
only one (the job stops with an error saying so). Batch size is per process; see docs/training.md.
The model folder (diffusers format, safetensors weights, dakter.json) is what jobs/synthesize.py --model reads.
"""

from __future__ import annotations

from dakter_scale.cli import check_flag, config_from, parser, progress_enabled, run, script, training_flags


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--data",
        help="data spec (overrides data.spec): synthetic:N[?size=S&test=M&seed=X], osd:PATH, sos:PATH; default the config's data.spec, else synthetic:64 (the built-in simulator)",
    )
    p.add_argument("--out", required=True, help="model folder to write (checkpoints go to OUT/checkpoints)")
    p.add_argument("--max-steps", type=int, help="training steps (overrides diffusion.max_steps)")
    training_flags(p, "'latest' (newest checkpoint in OUT, or a fresh start if none) or a checkpoint folder")
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.diffusion.train import train_diffusion
        from dakter_scale.training import finish, tracked_accelerator

        check_flag("--max-steps", args.max_steps, 1)
        cfg = config_from(args, {"data.spec": args.data, "diffusion.max_steps": args.max_steps})
        accelerator = tracked_accelerator(cfg.diffusion.mixed_precision, args.report_to, args.out)
        train_diffusion(cfg, args.out, resume=args.resume, progress=progress_enabled(), accelerator=accelerator)
        finish(accelerator)
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
