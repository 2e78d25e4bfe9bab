r"""One table across studies that differ only in |D| (how many real training scenes each had): the
scarcity study's rows. Reads each folder's results.json; writes markdown to --out (or stdout):

    python jobs/across.py docs/results/scarcity_10 docs/results/scarcity_20 \
        docs/results/scarcity_40 docs/results/scarcity_100 --out docs/results/scarcity.md

The tables: the ratio and length each |D| chose on validation, its instance bank, mIoU per arm, every
generator arm against copy-paste, every arm against no augmentation and each instance bank against the next
smaller one (paired differences over seeds, 95 % interval, the verdict), the rare classes' IoU, and what the generator cost (training, seconds per
generated pair, the bank, a student). Studies with another test split, other students or other arms are refused.
"""

from __future__ import annotations

from dakter_scale.cli import parser, run, script


def main() -> None:
    p = parser(__doc__, config=False)
    p.add_argument("studies", nargs="+", help="study folders, each with its results.json (jobs/experiment.py)")
    p.add_argument("--out", help="markdown file to write (default: print it)")
    args = p.parse_args()

    def body() -> int:
        from pathlib import Path

        from dakter_scale.study.across import markdown, read_study

        text = markdown([read_study(folder) for folder in args.studies])
        if args.out:
            Path(args.out).write_text(text)
            print(f"{args.out}: {len(args.studies)} studies")
        else:
            print(text, end="")
        return 0

    run(body)


if __name__ == "__main__":
    script(main)
