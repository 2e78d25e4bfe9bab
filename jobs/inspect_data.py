"""Describe a labelled dataset: per split the image count, size and class pixel fractions; b = "auto".

python jobs/inspect_data.py synthetic:64 --json
python jobs/inspect_data.py osd:/data/osd --json
python jobs/inspect_data.py 'sos:/data/sos?sat=palsar'
"""

from __future__ import annotations

import json
import sys

from dakter_scale.cli import check_flag, parser, progress_enabled, run, script
from dakter_scale.core.joint import resolve_b
from dakter_scale.data.real import SPLITS, open_source, split_stats
from dakter_scale.data.storage import redact_url


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument(
        "spec", help="data spec: synthetic:N[?size=S&test=M&seed=X], osd:PATH or sos:PATH[?sat=palsar|sentinel]"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else there")
    p.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="read at most this many evenly spaced images per split for fractions and b (default: all)",
    )
    args = p.parse_args()

    def body() -> int:
        check_flag("--max-images", args.max_images, 1)
        source = open_source(args.spec)
        splits = {}
        stats = {}
        for split in SPLITS:
            stats[split] = split_stats(source, split, args.max_images, progress=progress_enabled() and not args.json)
            s = stats[split]
            splits[split] = {
                "images": s.images,
                "size": list(s.size) if s.size else None,
                "class_fractions": list(s.class_fractions),
            }
            if s.read != s.images:
                splits[split]["images_read"] = s.read
        train = stats["train"].image_stats
        result = {
            "splits": splits,
            "classes": list(source.classes),
            "b_auto": resolve_b("auto", train),
            "b_auto_std": resolve_b("auto-std", train),
            "image_mean": train.mean,
            "radiometry": source.radiometry,
        }
        if args.json:
            json.dump(result, sys.stdout)
            sys.stdout.write("\n")
            return 0
        print(f"{redact_url(args.spec)}: classes {', '.join(source.classes)}")
        for split, s in splits.items():
            size = "x".join(map(str, s["size"])) if s["size"] else "mixed sizes"
            fr = ", ".join(f"{c} {100 * f:.2f}%" for c, f in zip(source.classes, s["class_fractions"]))
            print(f"  {split}: {s['images']} images, {size}; pixels: {fr}")
        print(
            f"  b auto = {result['b_auto']:.4f} (RMS of normalised train images), auto-std = {result['b_auto_std']:.4f}"
        )
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
