"""Targeted synthesis, measured: achieved class shares, label alignment and cost per kept pair of
each route against untargeted synthesis (docs/RESULTS.md, "Targeted synthesis").

    python bench/targeted_synthesis.py MODEL SEGMENTER CONFIG OUT N SEEDS [SPEC] [MAX_DRAW_FACTOR]
    python bench/targeted_synthesis.py runs/exp/models/b_cfg runs/exp/students/none-unet-r0-s0 \
        configs/experiment_demo.yaml runs/target 128 0,1,2 oil:3x,ship:3x 20

For each run seed: the selection route (synth/targeted.py) draws into OUT/selection-sS_drawn, whose
first N pairs are exactly the untargeted set of N pairs with that seed (the same plan: pair seeds,
shards and batches), so the untargeted row is read from there; then the conditioned route draws N
pairs into OUT/conditioned-sS. Every set is scored by quality.generation_quality (label alignment
of the real-only SEGMENTER on the generated images, class fractions, SAR statistics). Records go to
OUT/records.jsonl, one per (seed, route); resumable (finished sets are reused).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(model: str, segmenter: str, config: str, out: str, n: int, seeds: list[int], spec: str = "oil:3x,ship:3x", max_draw_factor: float = 20.0) -> None:
    import logging

    from dakter_scale.config import load_config
    from dakter_scale.data.shardset import ShardSet
    from dakter_scale.quality import generation_quality
    from dakter_scale.synth.targeted import DRAWN_SUFFIX, synthesize_targeted

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        cfg = load_config(config, [f"synthesis.n={n}", f"synthesis.seed={seed}"])
        for route in ("selection", "conditioned"):
            url = str(root / f"{route}-s{seed}")
            t0 = time.time()
            result = synthesize_targeted(model, url, cfg.synthesis, cfg.sampling, spec, route, max_draw_factor, progress=False, use_ray=False)
            seconds = time.time() - t0
            rows = [(route, url, result.info.target)]
            if route == "selection":  # the draw's first n pairs: the untargeted set of this seed
                drawn = url + DRAWN_SUFFIX
                info = ShardSet(drawn).info()
                rows.insert(0, ("untargeted", drawn, {"cost": {"pairs_drawn_per_kept_pair": 1.0, "sampling_seconds_per_kept_pair": None}, "drawn_total": info.count}))
            for name, shards, target in rows:
                q = generation_quality(cfg, shards, segmenter, n=n)
                record = {"seed": seed, "route": name, "n": n, "spec": spec, "url": shards, "seconds": round(seconds, 1), "target": target, "quality": q}
                print("RESULT", json.dumps(record), flush=True)
                with open(root / "records.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 6:
        sys.exit(__doc__)
    main(args[0], args[1], args[2], args[3], int(args[4]), [int(s) for s in args[5].split(",")], *(args[6:7] or []), *([float(args[7])] if len(args) > 7 else []))
