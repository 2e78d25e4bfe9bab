"""Re-read the soft labels of a generated set from its finished images: p(label | image).

The joint sampler's own soft label is near one-hot wherever the label branch committed early,
whether or not the finished image shows it. This job asks the same diffusion model for the label
given the finished image: from each pair's label noised to --start * T, the label channels are
denoised again with the image held fixed (RePaint-style), over --repeats runs that are averaged.
The output has the same keys and byte-identical images, new soft labels and manifest statistics;
train students on it as on any shards. It resumes shard by shard and reuses a finished output made
with the same source, model and settings. On the committed CPU run it made students worse
(docs/RESULTS.md, "Relabelling from the finished image"); it is a tool, off by default.

    python jobs/relabel.py --shards runs/shards --out runs/shards_relabel
    python jobs/relabel.py --shards s3://bucket/gen --out s3://bucket/gen_relabel --model runs/diffusion --start 0.25 --repeats 4
"""

from __future__ import annotations

from dakter_scale.cli import parser, run


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument("--shards", required=True, help="a complete generated set (folder or fsspec URL) written by jobs/synthesize.py or jobs/filter_generated.py")
    p.add_argument("--out", required=True, help="where to write the relabelled set (folder or fsspec URL); resumed or reused when it holds this relabelling")
    p.add_argument("--model", help="diffusion model folder (default: the one named in the set's dataset.json)")
    p.add_argument("--start", type=float, default=0.25, help="noise level to restart the labels from, as a fraction of the training steps, in (0, 1]; 1 = from pure noise (default 0.25)")
    p.add_argument("--repeats", type=int, default=4, help="posterior runs averaged per pair, each with its own noise (default 4)")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim", help="sampler for the relabelling steps (default ddim)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps over the whole schedule; those below --start are taken (default 50)")
    p.add_argument("--batch-size", type=int, default=50, help="pairs per denoiser forward pass")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    args = p.parse_args()
    if not 0 < args.start <= 1:
        p.error(f"--start must be in (0, 1], got {args.start}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1")

    def body() -> int:
        from dakter_scale.cli import progress_enabled
        from dakter_scale.config import SamplingConfig
        from dakter_scale.synth.relabel import relabel_shards
        from dakter_scale.training import setup_logging

        setup_logging()
        sampling = SamplingConfig(sampler=args.sampler, steps=args.steps, relabel_repeats=args.repeats, relabel_start=args.start)
        info = relabel_shards(args.shards, args.out, sampling, model_dir=args.model, batch_size=args.batch_size, device=args.device, progress=progress_enabled())
        g = info["generated_stats"]
        print(f"relabelled {g['pairs']} pairs into {args.out} (mean confidence {g['mean_confidence']:.3f}, class-fraction TV to the training data {info['divergence'].get('class_fraction_tv', float('nan')):.3f})")
        return 0

    run(body)


if __name__ == "__main__":
    main()
