"""What each copy-paste arm of a study pastes onto the real training scenes: the pixel share of each
targeted class in a pasted sample, against the per-sample goal all arms are given.

The arms share one class target (synthesis.target.spec) and one rule for meeting it (core.compose.
paste_toward: instances pasted until each sample meets it, a placement that brings no pixel of its class
skipped, augment.MAX_INSTANCES and MAX_DRAWS; donors refused that fall short of it on the training scenes,
augment.check_reach), but not one kind of instance: real components, or generated ones with soft edges.
This measures the dose each arm gives on the real training scenes, whole (whole_pairs), each pasted
--draws times with seeded draws (no training, a minute on a CPU; before the one rule, docs/journal/paste-reach.md):

    OMP_NUM_THREADS=1 python bench/paste_dose.py --config configs/scarcity.yaml \
        'data.spec=synthetic:10?size=32&test=500' --bank runs/scarcity_10/generated/bank \
        --out docs/results/scarcity_10/paste_dose.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dakter_scale.config import load_config
from dakter_scale.core.compose import class_shares
from dakter_scale.core.steps import derive_seed
from dakter_scale.data.real import normalise, open_source, whole_pairs
from dakter_scale.student.augment import STREAM, build_copy_paste


def dose(paste, images: np.ndarray, masks: np.ndarray, draws: int, seed: int) -> dict:
    """Per targeted class: the mean pixel share after one paste, the share of samples below its goal, and
    the goal; over every training scene, `draws` seeded pastes each."""
    k = len(paste.target.classes)
    shares = []
    for draw in range(draws):
        for place, (image, mask) in enumerate(zip(images, masks)):
            item = {"x": normalise(image)[None], "mask": torch.from_numpy(mask.astype(np.int64)), "q": None}
            out = paste.paste(item, np.random.default_rng(derive_seed(seed, STREAM, draw, place)))
            shares.append(class_shares(out["mask"].numpy()[None], k))
    shares = np.stack(shares)
    return {
        paste.target.classes[c]: {
            "goal": round(float(goal), 6),
            "mean_share": round(float(shares[:, c].mean()), 6),
            "samples_below_goal": round(float((shares[:, c] < goal).mean()), 4),
        }
        for c, goal in paste.target.shares
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the study's config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (data.spec sets |D|)")
    p.add_argument("--bank", help="the study's instance bank (OUT/generated/bank); without it, copy_paste alone")
    p.add_argument("--bank-sizes", default="", help="comma-separated instance counts (default experiment.bank_sizes)")
    p.add_argument("--draws", type=int, default=20, help="pastes per training scene (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="JSON file to write (default: print)")
    args = p.parse_args()

    cfg = load_config(args.config, args.overrides)
    target = {"student.copy_paste": cfg.synthesis.target.spec}
    arms = {"copy_paste": cfg.replace(**target)}
    sizes = [int(n) for n in args.bank_sizes.split(",") if n] or list(cfg.experiment.bank_sizes)
    if args.bank:
        for n in sizes:
            arms[f"instance_paste_{n}"] = cfg.replace(
                **target, **{"student.instance_bank": args.bank, "student.instance_bank_size": n}
            )
    source = open_source(cfg.data.spec)
    images, masks = whole_pairs(source, cfg.data.resolution)
    result = {
        "data": cfg.data.spec,
        "target": cfg.synthesis.target.spec,
        "bank": args.bank,
        "draws_per_scene": args.draws,
        "scenes": len(images),
        "arms": {
            name: dose(build_copy_paste(c, source), images, masks, args.draws, args.seed) for name, c in arms.items()
        },
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
