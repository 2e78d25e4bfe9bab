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

    python bench/targeted_synthesis.py summary OUT docs/results/targeted_synthesis.json

writes the means and stds over seeds per route (and every record) and prints the markdown table.
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


def summary(out: str, json_path: str) -> None:
    """Mean and std over seeds per route, from OUT/records.jsonl -> JSON_PATH, and a markdown table."""
    import numpy as np

    records = [json.loads(line) for line in open(Path(out) / "records.jsonl")]
    classes = ("sea", "oil", "look-alike", "ship", "land")
    by_route: dict[str, list[dict]] = {}
    for r in records:
        by_route.setdefault(r["route"], []).append(r)
    seconds_per_drawn = {r["seed"]: r["target"]["cost"]["sampling_seconds_per_kept_pair"] / r["target"]["cost"]["pairs_drawn_per_kept_pair"] for r in by_route.get("selection", [])}
    rows = {}
    for route, rs in by_route.items():
        def stat(values):
            v = np.array(values, dtype=np.float64)
            return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "values": v.tolist()}

        fr = np.array([r["quality"]["class_fractions_generated"] for r in rs])
        cost = [r["target"]["cost"] for r in rs]
        rows[route] = {
            "seeds": [r["seed"] for r in rs],
            "n": rs[0]["n"],
            "class_fractions": {c: stat(fr[:, i]) for i, c in enumerate(classes)},
            "class_fractions_real": rs[0]["quality"]["class_fractions_real"],
            "label_alignment_miou": stat([r["quality"]["label_alignment"]["miou"] for r in rs]),
            "pixel_agreement": stat([r["quality"]["label_alignment"]["pixel_agreement"] for r in rs]),
            "label_alignment_iou": {c: stat([r["quality"]["label_alignment"]["iou"][i] for r in rs]) for i, c in enumerate(classes)},
            "mean_confidence": stat([r["quality"]["mean_confidence"] for r in rs]),
            "met": [bool((r["target"] or {}).get("met", False)) for r in rs] if route != "untargeted" else None,
            "pairs_drawn_per_kept_pair": stat([c["pairs_drawn_per_kept_pair"] for c in cost]),
            "sampling_seconds_per_kept_pair": stat(
                [seconds_per_drawn[r["seed"]] if route == "untargeted" else c["sampling_seconds_per_kept_pair"] for r, c in zip(rs, cost)]
            ),
            "histogram_tv": stat([r["quality"].get("histogram_distance", {}).get("tv", float("nan")) for r in rs]),
            "enl_generated": stat([r["quality"]["enl_generated"] for r in rs]),
        }
    payload = {"spec": records[0]["spec"], "routes": rows, "records": records}
    Path(json_path).write_text(json.dumps(payload, indent=1) + "\n")

    def ms(s, scale=100.0, digits=2):
        return f"{scale * s['mean']:.{digits}f}" + (f" ± {scale * s['std']:.{digits}f}" if s["std"] is not None else "")

    print("| route | oil share % | ship share % | look-alike share % | label alignment mIoU % | oil IoU % | ship IoU % | mean max-prob. | pairs drawn / kept | sampling s / kept pair | met |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for route, r in rows.items():
        met = "–" if r["met"] is None else f"{sum(r['met'])}/{len(r['met'])}"
        print(
            f"| {route} | {ms(r['class_fractions']['oil'])} | {ms(r['class_fractions']['ship'], digits=3)} | {ms(r['class_fractions']['look-alike'])} | {ms(r['label_alignment_miou'])} | "
            f"{ms(r['label_alignment_iou']['oil'])} | {ms(r['label_alignment_iou']['ship'])} | {ms(r['mean_confidence'], 1, 3)} | {ms(r['pairs_drawn_per_kept_pair'], 1)} | {ms(r['sampling_seconds_per_kept_pair'], 1, 3)} | {met} |"
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["summary"] and len(args) == 3:
        sys.exit(summary(args[1], args[2]))
    if len(args) < 6:
        sys.exit(__doc__)
    main(args[0], args[1], args[2], args[3], int(args[4]), [int(s) for s in args[5].split(",")], *(args[6:7] or []), *([float(args[7])] if len(args) > 7 else []))
