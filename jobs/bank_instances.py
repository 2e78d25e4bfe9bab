"""Cut instances of the rare classes from generated pairs into an instance bank (synth/bank.py).

Each 4-connected component of the pixels whose soft label gives a class of synthesis.bank.classes (oil,
ship) at least synthesis.bank.threshold is an instance, kept with synthesis.bank.edge pixels of soft edge
(their soft labels with them) when a real-only judge (a student folder) segments its class over it with
IoU >= synthesis.bank.min_agreement. One bank shard per source shard, by Ray actors (--actors 0: in this
process) at any fsspec URL; a rerun cuts only the source shards not cut yet (a grown source set, a killed
run). Students paste from it: jobs/train_student.py --copy-paste oil:3x,ship:3x --instance-bank OUT.

    python jobs/bank_instances.py --shards runs/shards --judge runs/real --out runs/bank
    python jobs/bank_instances.py --shards s3://bucket/gen --judge runs/real --out s3://bucket/bank synthesis.bank.min_agreement=0.3
"""

from __future__ import annotations

import json

from dakter_scale.cli import actor_count, config_from, parser, progress_enabled, run, script


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--shards", required=True, help="a generated set (folder or fsspec URL) written by jobs/synthesize.py"
    )
    p.add_argument("--judge", required=True, help="student folder trained on real data only (jobs/train_student.py)")
    p.add_argument("--out", required=True, help="the instance bank's folder or URL")
    p.add_argument("--actors", help="Ray actors: a number, auto, or 0 for none (overrides synthesis.actors)")
    p.add_argument("--overwrite", action="store_true", help="replace another set already in --out")
    p.add_argument(
        "--break-lock", action="store_true", help="take --out's lock from a run that looks alive (a killed run's)"
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.synth.bank import build_bank
        from dakter_scale.training import setup_logging

        actors = actor_count(args.actors)
        cfg = config_from(args, {"synthesis.actors": actors if actors not in (None, 0) else None})
        setup_logging()
        summary = build_bank(
            args.shards,
            args.out,
            args.judge,
            cfg.synthesis.bank,
            cfg.synthesis,
            use_ray=actors != 0,
            progress=progress_enabled(),
            overwrite=args.overwrite,
            break_lock=args.break_lock,
        )
        for line in summary.lines():
            print(line)
        if args.json:
            print(json.dumps({**summary.__dict__, "ok": summary.ok}, default=str))
        return 0 if summary.ok else 1

    run(body)


if __name__ == "__main__":
    script(main)
