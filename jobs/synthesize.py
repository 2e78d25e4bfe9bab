"""Generate N (SAR image, soft label) pairs with a trained model into WebDataset shards on any fsspec URL.

    python jobs/synthesize.py --model runs/model --n 1000 --out runs/shards
    python jobs/synthesize.py --model runs/model --n 1e6 --out s3://bucket/dakter/v1 --dry-run
    ray job submit --address http://HEAD:8265 -- python jobs/synthesize.py --model runs/model --n 1e6 --out s3://bucket/dakter/v1

Shards are written by Ray actors (one per GPU, else CPU actors of --threads-per-actor threads; --actors 0
runs in this process without Ray). Ray: RAY_ADDRESS (set by `ray job submit`), else the latest `ray start`
cluster on this machine, else a new local one. A rerun skips finished shards; a failed shard is retried
and reported; one run writes a prefix at a time (a second is refused: OUT/lock-NNNNNN.json); the exit status is 1 if any shard failed for good, 2 on bad input (before any actor starts).
Layout: OUT/shard-NNNNNN.{tar,parquet,json} and OUT/dataset.json (docs/synthesis.md).
Pair INDEX of shard SHARD is drawn from seed SeedSequence([--seed, SHARD, INDEX]); the same command plus
--only-key SHARD-INDEX regenerates that one pair into OUT/regenerated/ as KEY.image.png, KEY.soft.npy, KEY.json.

Targeted synthesis: --class-target oil:3x,ship:3x yields N pairs whose pooled pixel shares of oil and of
ships are at least 3x the real training shares recorded in the model folder (oil:0.05: an absolute share).
--target-route selection draws more pairs (into OUT_all, or --draw-out) and keeps N that meet it, at
most --max-draw-factor drawn per kept; --target-route conditioned draws each image given a label map
composed from real training masks with pasted oil / ship regions (--resample U: RePaint's resampling, images
follow their maps more closely at about U x the cost); --target-route pasted draws each pair jointly around
real oil / ship instances pasted in, image and label together. dataset.json records the target, the
route, the achieved shares and the cost; a target that is not met is a warning (docs/synthesis.md).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys

from dakter_scale.cli import actor_count, check_flag, config_from, parser, progress_enabled, run, script
from dakter_scale.config import ROUTES, SamplingConfig, SynthesisConfig


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", required=True, help="model folder written by jobs/train_diffusion.py")
    p.add_argument(
        "--n",
        help=f"number of pairs; accepts 1e6 (overrides synthesis.n; default the config's, else {SynthesisConfig.n})",
    )
    p.add_argument(
        "--out", required=True, help="output folder or URL: ./shards, s3://bucket/prefix, gs://bucket/prefix"
    )
    p.add_argument(
        "--samples-per-shard",
        type=int,
        help=f"pairs per shard (overrides synthesis.samples_per_shard; default the config's, else {SynthesisConfig.samples_per_shard})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"pairs sampled together on one device, part of the dataset's identity (overrides synthesis.batch_size; default the config's, else {SynthesisConfig.batch_size})",
    )
    p.add_argument(
        "--sampler",
        help="reverse process: dpmsolver++ (default, 20 steps), ddim, ddpm, unipc, or distilled (a distilled model folder's own; docs/synthesis.md, Samplers)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help=f"denoising steps = network evaluations per pair (overrides sampling.steps; default the config's, else {SamplingConfig.steps}; a distilled folder's own count)",
    )
    p.add_argument("--solver-order", type=int, help="dpmsolver++ and unipc: multistep order 1-3 (default 2)")
    p.add_argument(
        "--seed",
        type=int,
        help=f"run seed; pair seeds derive from (seed, shard, index) (overrides synthesis.seed; default the config's, else {SynthesisConfig.seed})",
    )
    p.add_argument(
        "--actors",
        help=f"number of Ray actors, 'auto' (one per GPU, else cpus / threads), or 0 for no Ray (overrides synthesis.actors; default the config's, else {SynthesisConfig.actors})",
    )
    p.add_argument("--threads-per-actor", type=int, help="torch threads per actor (default 1)")
    p.add_argument(
        "--call-timeout",
        type=float,
        metavar="S",
        help="Ray: a shard still being written after S seconds is presumed hung; its actor is killed and replaced and the shard retried (synthesis.call_timeout_s, default 0: no limit)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="actor device: auto (GPU actors when the cluster has GPUs), cpu, or cuda (GPU actors even before an autoscaler has added GPU nodes)",
    )
    p.add_argument(
        "--verify",
        choices=["size", "sha256"],
        help="how a rerun checks finished shards (default size; sha256 reads every tar)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    p.add_argument(
        "--break-lock",
        action="store_true",
        help="take --out's lock from a run that looks alive (one run writes a prefix at a time; a dead run's lock is taken over by itself synthesis.lease_seconds after its last renewal; data/lease.py)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (shards, pairs, estimated bytes) and exit; starts no actor, writes nothing",
    )
    p.add_argument(
        "--only-key", metavar="SHARD-INDEX", help="regenerate one pair, e.g. 000003-000017, into OUT/regenerated/"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (plan or summary) on stdout")
    p.add_argument(
        "--class-target",
        metavar="CLASS:F[x],...",
        help="per-class pixel shares to meet: CLASS:3x (3 x the training share) or CLASS:0.05 (a share), comma-separated (synthesis.target.spec)",
    )
    p.add_argument(
        "--target-route",
        choices=ROUTES,
        help="how --class-target is met (synthesis.target.route): selection from a larger draw (default); conditioned: images drawn given composed label maps (worse students so far); "
        "pasted: pairs drawn around real instances of the targeted classes, image and label pasted together onto the sea each pair's first steps drew (docs/journal/results-history.md, 'Targeted synthesis')",
    )
    p.add_argument(
        "--max-draw-factor",
        type=float,
        help="selection: at most this many pairs drawn per pair kept; a target that needs more is refused (synthesis.target.max_draw_factor, default 20)",
    )
    p.add_argument("--draw-out", help="selection: where the larger draw is written (default OUT_all)")
    p.add_argument(
        "--resample",
        type=int,
        metavar="U",
        help="conditioned, pasted: take each step U times (RePaint's resampling) so images follow what they are given more closely, at about U x the cost; ddim or ddpm only "
        "(synthesis.target.resample, default 1)",
    )
    args = p.parse_args()

    # --json: stdout carries the one JSON object alone. Ray forwards worker and raylet messages to this
    # process's stdout, so until the end everything written to file descriptor 1 goes to stderr instead.
    json_out = None
    if args.json:
        json_out = os.fdopen(os.dup(1), "w")
        sys.stdout.flush()
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def emit(obj: dict) -> None:
        print(json.dumps(obj), file=json_out, flush=True)

    def body() -> int:
        from dakter_scale.synth.plan import PlanError, parse_count

        n = parse_count(args.n) if args.n is not None else None
        actors = actor_count(args.actors)
        for flag, value in (
            ("--samples-per-shard", args.samples_per_shard),
            ("--batch-size", args.batch_size),
            ("--steps", args.steps),
            ("--threads-per-actor", args.threads_per_actor),
        ):
            check_flag(flag, value, 1)
        check_flag("--seed", args.seed, 0)
        check_flag("--call-timeout", args.call_timeout, 0)
        cfg = config_from(
            args,
            {
                "synthesis.n": n,
                "synthesis.samples_per_shard": args.samples_per_shard,
                "synthesis.batch_size": args.batch_size,
                "synthesis.seed": args.seed,
                "synthesis.actors": actors if actors not in (None, 0) else None,
                "synthesis.threads_per_actor": args.threads_per_actor,
                "synthesis.call_timeout_s": args.call_timeout,
                "synthesis.verify": args.verify,
                "sampling.sampler": args.sampler,
                "sampling.steps": args.steps,
                "sampling.solver_order": args.solver_order,
            },
        )
        from dakter_scale.diffusion.model import check_model_folder
        from dakter_scale.synth import run as synth

        # the flags over synthesis.target, checked by targeted.prepare_target with the flags named
        flags = {
            "spec": args.class_target,
            "route": args.target_route,
            "max_draw_factor": args.max_draw_factor,
            "resample": args.resample,
        }
        target_cfg = dataclasses.replace(cfg.synthesis.target, **{k: v for k, v in flags.items() if v is not None})
        if target_cfg.resample != 1 and not target_cfg.spec:
            raise PlanError(
                f"--resample {target_cfg.resample} applies to --class-target ... --target-route conditioned or pasted only"
            )
        check_model_folder(args.model)
        if target_cfg.spec:
            from dakter_scale.synth import targeted
            from dakter_scale.synth.target import TargetError

            if args.only_key:
                raise TargetError(
                    "--only-key regenerates pairs of an untargeted run; drop --class-target (a selected pair is its draw's pair: see its source_key)"
                )
            if args.dry_run:
                plan = targeted.dry_run(args.model, target_cfg, cfg.sampling.sampler)
                emit(plan) if args.json else print("\n".join(targeted.dry_run_lines(plan)))
                return 0
            targeted.prepare_target(
                args.model, target_cfg, cfg.sampling.sampler, cfg.sampling.steps
            )  # its checks, before any work
        if args.only_key:
            from dakter_scale.synth.regenerate import regenerate_to

            record = regenerate_to(args.model, args.only_key, cfg.synthesis, cfg.sampling, args.out)
            if args.json:
                emit(record)
            else:
                print(f"wrote {args.only_key} to {record['written_to']}: {record}")
            return 0
        if args.dry_run:
            plan = synth.dry_run(args.model, args.out, cfg.synthesis, cfg.sampling, overwrite=args.overwrite)
            emit(plan) if args.json else print("\n".join(synth.dry_run_lines(plan)))
            return 0
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
        )
        run_kwargs = dict(
            overwrite=args.overwrite,
            progress=progress_enabled(),
            use_ray=actors != 0,
            device=args.device,
            break_lock=args.break_lock,
        )
        if not target_cfg.spec:
            summary = synth.synthesize(args.model, args.out, cfg.synthesis, cfg.sampling, **run_kwargs)
            lines, payload = summary.lines(), summary.to_json()
        else:
            synthesis = dataclasses.replace(cfg.synthesis, target=target_cfg)
            result = targeted.synthesize_targeted(
                args.model, args.out, synthesis, cfg.sampling, args.draw_out, **run_kwargs
            )
            summary = result.summary
            lines, payload = result.lines(), dict(summary.to_json(), dataset=result.info.to_json())
        for line in lines:
            print(line)  # stderr under --json
        if args.json:
            emit(payload)
        if not summary.ok:
            print(
                f"error: {len(summary.failed)} shard(s) failed for good: "
                + "; ".join(f"{s}: {r}" for s, r in sorted(summary.failed.items())),
                file=sys.stderr,
            )
            return 1
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
