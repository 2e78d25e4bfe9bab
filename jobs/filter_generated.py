"""Keep the generated pairs whose image and label agree (label-alignment filter).

A student trained on real data only segments every generated image; a pair's alignment is the
mean IoU of that prediction against the generated label's argmax over the classes present. The
best-aligned pairs are written, in their original order, as a new shard set (same layout, images
and soft labels copied byte for byte, each pair's JSON naming its source key), plus
alignment.parquet with every source pair's score. Train students on the output as on any shards.

    python jobs/filter_generated.py --shards runs/shards --segmenter runs/student_real --out runs/shards_top --keep 50000
    python jobs/filter_generated.py --shards s3://bucket/gen --segmenter runs/student_real --out s3://bucket/gen_aligned --min-alignment 0.4
"""

from __future__ import annotations

from dakter_scale.cli import check_flag, parser, run, script


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument(
        "--shards", required=True, help="a complete generated set (folder or fsspec URL) written by jobs/synthesize.py"
    )
    p.add_argument(
        "--segmenter",
        required=True,
        help="student folder trained on real data only (jobs/train_student.py with student.ratio=0)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="where to write the kept pairs (folder or fsspec URL); replaced unless it holds this exact selection",
    )
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--keep", type=int, help="keep this many pairs, the best-aligned")
    rule.add_argument("--min-alignment", type=float, help="keep every pair whose alignment (0-1) reaches this")
    p.add_argument("--samples-per-shard", type=int, help="pairs per output shard (default: the source's)")
    p.add_argument("--batch-size", type=int, default=64, help="images per segmenter forward pass (default 64)")
    args = p.parse_args()

    def body() -> int:
        from dakter_scale.data.storage import redact_url
        from dakter_scale.synth.filter import filter_shards
        from dakter_scale.training import setup_logging

        check_flag("--keep", args.keep, 1)
        check_flag("--min-alignment", args.min_alignment, 0, 1)
        check_flag("--samples-per-shard", args.samples_per_shard, 1)
        check_flag("--batch-size", args.batch_size, 1)
        setup_logging()
        info = filter_shards(
            args.shards,
            args.out,
            args.segmenter,
            keep=args.keep,
            min_alignment=args.min_alignment,
            samples_per_shard=args.samples_per_shard,
            batch_size=args.batch_size,
        )
        f = info.filter
        print(
            f"kept {f['kept']} of {f['source_count']} pairs (alignment >= {f['threshold']:.3f}; mean {f['alignment_mean_source']:.3f} -> {f['alignment_mean_kept']:.3f}) in {redact_url(args.out)}"
        )
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
