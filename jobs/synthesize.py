"""Generate N (SAR image, soft label) pairs with a trained model into WebDataset shards on any fsspec URL.

    python jobs/synthesize.py --model runs/model --n 1000 --out runs/shards
    python jobs/synthesize.py --model runs/model --n 1e6 --out s3://bucket/dakter/v1 --dry-run
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/synthesize.py --model runs/model --n 1e6 --out s3://bucket/dakter/v1

Shards are written by Ray actors (one per GPU, else CPU actors of --threads-per-actor threads; --actors 0
runs in this process without Ray). A rerun skips finished shards; a failed shard is retried and reported.
Layout: OUT/shard-NNNNNN.{tar,parquet,json} and OUT/dataset.json (see docs/architecture.md).
Pair INDEX of shard SHARD is drawn from seed SeedSequence([--seed, SHARD, INDEX]); --only-key SHARD-INDEX
regenerates that one pair into OUT as KEY.image.png, KEY.soft.npy and KEY.json.
"""

from __future__ import annotations

import json
import logging
import sys

from dakter_scale.cli import config_from, fail, parser, progress_enabled, run


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="model folder written by jobs/train_diffusion.py")
    p.add_argument("--n", help="number of pairs; accepts 1e6 (overrides synthesis.n)")
    p.add_argument("--out", required=True, help="output folder or URL: ./shards, s3://bucket/prefix, gs://bucket/prefix")
    p.add_argument("--samples-per-shard", type=int, help="pairs per shard (default 1000)")
    p.add_argument("--batch-size", type=int, help="pairs sampled together on one device")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], help="reverse process (default ddim)")
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--seed", type=int, help="run seed; pair seeds derive from (seed, shard, index)")
    p.add_argument("--actors", help="number of Ray actors, 'auto' (one per GPU, else cpus / threads), or 0 for no Ray")
    p.add_argument("--threads-per-actor", type=int, help="torch threads per CPU actor (default 1)")
    p.add_argument("--verify", choices=["size", "sha256"], help="how a rerun checks finished shards (default size)")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    p.add_argument("--dry-run", action="store_true", help="print the plan (shards, pairs, estimated bytes) and exit; starts no actor")
    p.add_argument("--only-key", metavar="SHARD-INDEX", help="regenerate one pair, e.g. 000003-000017, into --out")
    p.add_argument("--json", action="store_true", help="print one JSON object (plan or summary) on stdout")
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.synth.plan import PlanError, parse_count

        n = parse_count(args.n) if args.n is not None else None
        actors = args.actors
        if actors is not None and actors != "auto":
            try:
                actors = int(actors)
            except ValueError:
                raise PlanError(f"--actors must be a number or auto, got {args.actors!r}") from None
            if actors < 0:
                raise PlanError(f"--actors must be >= 0, got {actors}")
        if args.samples_per_shard is not None and args.samples_per_shard <= 0:
            raise PlanError(f"--samples-per-shard must be >= 1, got {args.samples_per_shard}")
        if args.batch_size is not None and args.batch_size <= 0:
            raise PlanError(f"--batch-size must be >= 1, got {args.batch_size}")
        use_ray = actors != 0
        cfg = config_from(
            args,
            {
                "synthesis.n": n,
                "synthesis.samples_per_shard": args.samples_per_shard,
                "synthesis.batch_size": args.batch_size,
                "synthesis.seed": args.seed,
                "synthesis.actors": actors if actors not in (None, 0) else None,
                "synthesis.threads_per_actor": args.threads_per_actor,
                "synthesis.verify": args.verify,
                "sampling.sampler": args.sampler,
                "sampling.steps": args.steps,
            },
        )
        from dakter_scale.diffusion.model import check_model_folder
        from dakter_scale.synth import run as synth

        check_model_folder(args.model)
        if args.only_key:
            from dakter_scale.synth.regenerate import regenerate_to

            record = regenerate_to(args.model, args.only_key, cfg.synthesis.seed, cfg.sampling, args.out)
            print(json.dumps(record) if args.json else f"wrote {args.only_key} to {args.out}: {record}")
            return 0
        if args.dry_run:
            plan = synth.dry_run(args.model, args.out, cfg.synthesis, cfg.sampling, overwrite=args.overwrite)
            if args.json:
                print(json.dumps(plan))
            else:
                print(
                    f"plan: {plan['pairs']} pairs in {plan['shards']} shards of {plan['samples_per_shard']} -> {plan['out']}\n"
                    f"  to write: {plan['shards_to_write']} shards ({plan['pairs_to_write']} pairs); already done: {plan['shards_already_done']}\n"
                    f"  {plan['resolution']} px, {len(plan['classes'])} classes, {plan['sampler']} x {plan['steps']} steps\n"
                    f"  estimated size: {plan['estimated_bytes'] / 1e9:.3f} GB ({plan['estimated_bytes_per_pair'] / 1e3:.1f} kB per pair)"
                )
            return 0
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
        summary = synth.synthesize(args.model, args.out, cfg.synthesis, cfg.sampling, overwrite=args.overwrite, progress=progress_enabled(), use_ray=use_ray)
        for line in summary.lines():
            print(line, file=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps(summary.to_json()))
        if not summary.ok:
            fail(f"{len(summary.failed)} shard(s) failed for good: " + "; ".join(f"{s}: {r}" for s, r in sorted(summary.failed.items())), 1)
        return 0

    run(body)


if __name__ == "__main__":
    main()
