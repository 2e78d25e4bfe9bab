"""Evaluate a student on full images of a split: one confusion matrix over the split, then
per-class IoU, F1, precision, recall, their means, and pixel accuracy.

    python jobs/evaluate.py --student runs/student --data synthetic:64 --json
    python jobs/evaluate.py --student runs/student --data osd:/data/osd --split test --out runs/student/metrics.json
"""

from __future__ import annotations

import json

from dakter_scale.cli import check_flag, parser, progress_enabled, run, script


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument("--student", required=True, help="student folder written by jobs/train_student.py")
    p.add_argument("--data", required=True, help="data spec to evaluate on")
    p.add_argument(
        "--split", default="test", choices=["train", "test"], help="the data spec's split to score (default test)"
    )
    p.add_argument(
        "--pad-multiple", type=int, default=32, help="reflect-pad full images to a multiple of this (default 32)"
    )
    p.add_argument("--out", help="also write the metrics JSON to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else there")
    args = p.parse_args()

    def body() -> int:
        from pathlib import Path

        check_flag("--pad-multiple", args.pad_multiple, 1)

        from dakter_scale.config import EvalConfig
        from dakter_scale.data.storage import redact_url
        from dakter_scale.student.evaluate import evaluate_student

        metrics = evaluate_student(
            args.student,
            args.data,
            args.split,
            EvalConfig(split=args.split, pad_multiple=args.pad_multiple),
            progress=progress_enabled() and not args.json,
        )
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(metrics, indent=2) + "\n")
        if args.json:
            print(json.dumps(metrics))
        else:
            print(
                f"{args.student} on {redact_url(args.data)} [{args.split}, {metrics['images']} images]: mIoU {100 * metrics['miou']:.2f}  mF1 {100 * metrics['mean_f1']:.2f}  acc {100 * metrics['pixel_accuracy']:.2f}"
            )
            for name, iou, f1 in zip(metrics["classes"], metrics["iou"], metrics["f1"]):
                print(
                    f"  {name:12s} IoU {'-' if iou is None else f'{100 * iou:6.2f}'}  F1 {'-' if f1 is None else f'{100 * f1:6.2f}'}"
                )
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
