"""Targeted synthesis, measured: achieved class shares, label alignment and cost per kept pair of
each route against untargeted synthesis (docs/journal/results-history.md, "Targeted synthesis").

    python bench/targeted_synthesis.py MODEL SEGMENTER CONFIG OUT N SEEDS SPECS [MAX_DRAW_FACTOR [VARIANTS]]
    python bench/targeted_synthesis.py runs/demo/model runs/demo/real-only-unet configs/demo.yaml \
        runs/target 100 0,1,2 'oil:3x,ship:3x;oil:1.5x' 20

SPECS: class targets separated by ';'. For each run seed and each spec: the selection route
(synth/targeted.py), all specs growing one draw OUT/draw-sS, whose first N pairs are exactly the
untargeted set of N pairs with that seed (the same plan: pair seeds, shards and batches), so the
untargeted row is read from there; then the routes that draw pairs given something (N pairs per
spec), as VARIANTS says. A route's refusal (TargetError) is recorded as such. Every set is scored by
quality.generation_quality (label alignment of the real-only SEGMENTER on the generated images,
class fractions, SAR statistics). VARIANTS: comma-separated [ROUTE:]FREE_STEPS:RESAMPLE, or ROUTE
alone for ROUTE:0:1; ROUTE is conditioned (the default) or pasted, or pasted@F: instances placed
after a share F of the sampling steps onto the sea of the pair's layout (synthesis.target.paste_at), and a
suffix +c pastes a donor's instances one at a time (synthesis.target.by_component), e.g. pasted@0.7+c. Default 0:1, the conditioned route
with plain replacement; 10:1 lets the last 10 steps run jointly, 0:4 is RePaint's resampling with
u = 4; each is recorded as conditioned-free10, conditioned-resample4, pasted. Records go to
OUT/records.jsonl, one per (seed, route, spec); a rerun skips recorded ones.

    python bench/targeted_synthesis.py summary OUT docs/results/targeted_synthesis.json [RECORDS]

writes the means and stds over seeds per route (and every record) and prints the markdown table
(RECORDS: a records file in OUT other than records.jsonl, e.g. one `rescore` wrote).

    python bench/targeted_synthesis.py rescore OUT SEGMENTER CONFIG TAG [RECORDS]

scores every recorded set of OUT/RECORDS (default records.jsonl) again with another real-only
SEGMENTER (e.g. one trained on other real scenes than the generator's, which the pasted route's
instances come from) -> OUT/records-TAG.jsonl.

    python bench/targeted_synthesis.py follow MODEL OUT/conditioned-oil3x-ship3x-s0 oil:3x,ship:3x

prints how far a conditioned set's recorded labels follow the composed maps, or a pasted set's
follow the pasted pixels (pixel counts).

    python bench/targeted_synthesis.py recall MODEL OUT/pasted-oil3x-ship3x-s0 SEGMENTER oil:3x,ship:3x

prints, per recorded class, the share of its pixels the real-only SEGMENTER calls that class (its
recall of the recorded labels: unlike label alignment's IoU, independent of the class mix), over
all pixels, and for a pasted set over the pasted pixels and the drawn ones apart. follow and recall
rebuild a set placed on each pair's layout (pasted@F) by drawing its batches again with the set's own
writer and placement (about as long as writing it), and check every rebuilt pair against the stored one.

    python bench/targeted_synthesis.py layout MODEL CONFIG [N]

per sampling step, the class shares of the label estimate's argmax over N untargeted pairs: when
the sampler fixes where land, look-alikes and slicks go (what synthesis.target.paste_at is chosen from).

    python bench/targeted_synthesis.py reference MODEL SEGMENTER REAL_SPEC oil:3x,ship:3x OUT.json [SELECTED_DIR]

the SEGMENTER's label alignment on real scenes (REAL_SPEC's test split) at the untargeted and the
targeted class mix, where every label is right: random sets, a set selected to meet the target, and
random scenes with real instances pasted in as the pasted route does. How far alignment falls with
the class mix alone, for a judge trained at the training mix. SELECTED_DIR: the selected real
scenes written as an OSD folder (osd:SELECTED_DIR), to train a judge at the targeted mix.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def variant(record: dict) -> str:
    """A record's route with its settings: conditioned-free10, conditioned-resample4, pasted-at10."""
    return (
        record["route"]
        + (f"-at{record['paste_at']}" if record.get("paste_at") else "")
        + ("-comp" if record.get("by_component") else "")
        + (f"-free{record['free_steps']}" if record.get("free_steps") else "")
        + (f"-resample{record['resample']}" if record.get("resample", 1) > 1 else "")
    )


def parse_variant(text: str) -> tuple[str, int, int, float, bool]:
    """'pasted' -> ('pasted', 0, 1, 0.0, False); '0:4' -> ('conditioned', 0, 4, 0.0, False);
    'pasted:10:1' -> ('pasted', 10, 1, 0.0, False); 'pasted@0.7+c' -> ('pasted', 0, 1, 0.7, True):
    instances placed after 70 % of the steps (synthesis.target.paste_at), one at a time (synthesis.target.by_component)."""
    parts = text.split(":")
    head, plus, _ = parts[0].partition("+c")
    route, _, at = head.partition("@")
    if route in ("conditioned", "pasted"):
        parts.pop(0)
    else:
        route = "conditioned"
    free_steps, resample = (int(v) for v in parts) if parts else (0, 1)
    return route, free_steps, resample, float(at or 0), bool(plus)


def main(
    model: str,
    segmenter: str,
    config: str,
    out: str,
    n: int,
    seeds: list[int],
    specs: list[str],
    max_draw_factor: float = 20.0,
    variants: tuple[tuple[str, int, int, float, bool], ...] = (("conditioned", 0, 1, 0.0, False),),
) -> None:
    import dataclasses
    import logging

    from dakter_scale.config import load_config
    from dakter_scale.study.quality import generation_quality
    from dakter_scale.synth.target import TargetError
    from dakter_scale.synth.targeted import synthesize_targeted

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    done = (
        {(r["seed"], variant(r), r["spec"]) for r in map(json.loads, open(root / "records.jsonl"))}
        if (root / "records.jsonl").is_file()
        else set()
    )

    def emit(record: dict) -> None:
        print("RESULT", json.dumps(record), flush=True)
        with open(root / "records.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    for seed in seeds:
        cfg = load_config(config, [f"synthesis.n={n}", f"synthesis.seed={seed}"])
        draw = str(
            root / f"draw-s{seed}"
        )  # every selection of this seed grows one draw; its first n pairs are the untargeted set
        for route, free_steps, resample, paste_at, by_component in [("selection", 0, 1, 0.0, False), *variants]:
            settings = {
                k: v
                for k, v, default in (
                    ("free_steps", free_steps, 0),
                    ("resample", resample, 1),
                    ("paste_at", paste_at, 0.0),
                    ("by_component", by_component, False),
                )
                if v != default
            }
            name = variant({"route": route, **settings})
            for spec in specs:
                if (seed, name, spec) in done:
                    continue
                url = str(root / f"{name}-{spec.replace(':', '').replace(',', '-')}-s{seed}")
                t0 = time.time()
                target = dataclasses.replace(
                    cfg.synthesis.target,
                    spec=spec,
                    route=route,
                    max_draw_factor=max_draw_factor,
                    free_steps=free_steps,
                    resample=resample,
                    paste_at=paste_at,
                    by_component=by_component,
                )
                try:
                    result = synthesize_targeted(
                        model,
                        url,
                        dataclasses.replace(cfg.synthesis, target=target),
                        cfg.sampling,
                        draw,
                        progress=False,
                        use_ray=False,
                    )
                except TargetError as e:  # the route refuses: a measured outcome too
                    emit(
                        {
                            "seed": seed,
                            "route": route,
                            "spec": spec,
                            "n": n,
                            "refused": str(e),
                            "seconds": round(time.time() - t0, 1),
                        }
                    )
                    continue
                q = generation_quality(cfg, url, segmenter, n=n)
                record = {
                    "seed": seed,
                    "route": route,
                    "spec": spec,
                    "n": n,
                    "url": url,
                    "seconds": round(time.time() - t0, 1),
                    "target": result.info.target,
                    "quality": q,
                }
                emit(dict(record, **settings))
            if route == "selection" and (seed, "untargeted", "") not in done:
                q = generation_quality(cfg, draw, segmenter, n=n)
                emit(
                    {"seed": seed, "route": "untargeted", "spec": "", "n": n, "url": draw, "target": None, "quality": q}
                )


def rescore(out: str, segmenter: str, config: str, tag: str, records_file: str = "records.jsonl") -> None:
    """Every scored record of OUT/RECORDS_FILE, its set scored again by SEGMENTER -> OUT/records-TAG.jsonl."""
    from dakter_scale.config import load_config
    from dakter_scale.study.quality import generation_quality

    cfg = load_config(config)
    with open(Path(out) / f"records-{tag}.jsonl", "w") as f:
        for record in map(json.loads, open(Path(out) / records_file)):
            if "quality" in record:
                record = dict(
                    record,
                    quality=generation_quality(cfg, record["url"], segmenter, n=record["n"]),
                    segmenter=segmenter,
                )
            f.write(json.dumps(record) + "\n")


def draw_seconds_per_pair(url: str) -> float:
    """Sampling seconds per pair of a draw, from its shard markers."""
    from dakter_scale.data.shardset import ShardSet

    done = ShardSet(url).done()
    return sum(i.marker.get("seconds", 0.0) for i in done) / max(1, sum(i.marker.get("count", 0) for i in done))


def summary(out: str, json_path: str, records_file: str = "records.jsonl") -> None:
    """Mean and std over seeds per (route, spec), from OUT/RECORDS_FILE -> JSON_PATH, and a markdown table."""
    import numpy as np

    records = [json.loads(line) for line in open(Path(out) / records_file)]
    classes = ("sea", "oil", "look-alike", "ship", "land")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((variant(r), r["spec"]), []).append(r)
    # untargeted pairs cost what the draw's pairs cost: sampling seconds per drawn pair of the seed's draw
    per_drawn = {r["seed"]: draw_seconds_per_pair(r["url"]) for r in records if r["route"] == "untargeted"}

    def stat(values):
        v = np.array(values, dtype=np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "values": v.tolist()}

    rows = {}
    for (route, spec), rs in groups.items():
        key = f"{route} {spec}".strip()
        refused = [r for r in rs if "refused" in r]
        scored = [r for r in rs if "quality" in r]
        row: dict = {
            "route": route,
            "spec": spec,
            "seeds": [r["seed"] for r in rs],
            "refused": [r["refused"] for r in refused],
        }
        if scored:
            fr = np.array([r["quality"]["class_fractions_generated"] for r in scored])
            row.update(
                n=scored[0]["n"],
                class_fractions={c: stat(fr[:, i]) for i, c in enumerate(classes)},
                class_fractions_real=scored[0]["quality"]["class_fractions_real"],
                label_alignment_miou=stat([r["quality"]["label_alignment"]["miou"] for r in scored]),
                pixel_agreement=stat([r["quality"]["label_alignment"]["pixel_agreement"] for r in scored]),
                label_alignment_iou={
                    c: stat([r["quality"]["label_alignment"]["iou"][i] for r in scored]) for i, c in enumerate(classes)
                },
                mean_confidence=stat([r["quality"]["mean_confidence"] for r in scored]),
                met=[bool(r["target"]["met"]) for r in scored] if route != "untargeted" else None,
                pairs_drawn_per_kept_pair=stat(
                    [r["target"]["cost"]["pairs_drawn_per_kept_pair"] if r["target"] else 1.0 for r in scored]
                ),
                sampling_seconds_per_kept_pair=stat(
                    [
                        r["target"]["cost"]["sampling_seconds_per_kept_pair"]
                        if r["target"]
                        else per_drawn.get(r["seed"], float("nan"))
                        for r in scored
                    ]
                ),
                histogram_tv=stat([r["quality"].get("histogram_distance", {}).get("tv", float("nan")) for r in scored]),
                enl_generated=stat([r["quality"]["enl_generated"] for r in scored]),
            )
        rows[key] = row
    Path(json_path).write_text(json.dumps({"rows": rows, "records": records}, indent=1) + "\n")

    def ms(s, scale=100.0, digits=2):
        return f"{scale * s['mean']:.{digits}f}" + (f" ± {scale * s['std']:.{digits}f}" if s["std"] is not None else "")

    print(
        "| route, target | oil share % | ship share % | look-alike share % | label alignment mIoU % | oil IoU % | ship IoU % | mean max-prob. | pairs drawn / kept | sampling s / kept pair | met |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key, r in rows.items():
        if "class_fractions" not in r:
            print(
                f"| {key} | refused in {len(r['refused'])} of {len(r['seeds'])} seeds: {r['refused'][0]} |" + " |" * 9
            )
            continue
        met = "–" if r["met"] is None else f"{sum(r['met'])}/{len(r['met'])}"
        print(
            f"| {key} | {ms(r['class_fractions']['oil'])} | {ms(r['class_fractions']['ship'], digits=3)} | {ms(r['class_fractions']['look-alike'])} | {ms(r['label_alignment_miou'])} | "
            f"{ms(r['label_alignment_iou']['oil'])} | {ms(r['label_alignment_iou']['ship'])} | {ms(r['mean_confidence'], 1, 3)} | {ms(r['pairs_drawn_per_kept_pair'], 1)} | {ms(r['sampling_seconds_per_kept_pair'], 1, 3)} | {met} |"
        )


def given_pixels(model: str, url: str, spec: str):
    """(target, route, an iterator of (image, soft label q, class ids given, given pixels) per pair of
    the set): the composed maps at every pixel (conditioned), the pasted pixels (pasted), or nothing
    given (any other set); the route is read from the set's dataset.json. A pasted set placed on each
    pair's layout (paste_at) is rebuilt: its batches are drawn again with the set's own writer, plan
    and placement, the given pixels recorded, and each rebuilt pair checked against the stored one."""
    import numpy as np

    from dakter_scale.data.shardset import ShardSet, decode_sample
    from dakter_scale.synth import target as tgt
    from dakter_scale.synth import targeted

    target, info = targeted.model_target(model, spec)
    images, masks = targeted.training_pairs(info)
    record = ShardSet(url).info().target or {}
    route = record.get("route")
    condition = tgt.Condition.from_record(record, target, images, masks) if route in tgt.DRAWN_ROUTES else None
    if condition is not None and condition.paste_at:
        return target, route, _placed_pairs(model, url, condition)

    def pairs():
        for sample in ShardSet(url).samples():
            image, q, meta = decode_sample(sample)
            if condition is None:
                ids, given = np.zeros(q.shape[1:], dtype=np.uint8), np.zeros(q.shape[1:], dtype=bool)
            else:
                g = condition.given([meta["seed"]])
                ids, given = g.ids[0], g.where[0] if g.where is not None else np.ones(q.shape[1:], dtype=bool)
            yield image, q, ids, given

    return target, route, pairs()


def _placed_pairs(model: str, url: str, condition):
    """A placed pasted set's pairs with what each was given (given_pixels), by drawing its batches
    again: the placement depends on each batch's own layout, so it cannot be recomputed from the seed
    alone. One torch thread, as the set's writers ran; a rebuilt pair that differs from the stored one
    by a single byte stops the measurement."""
    import tempfile

    import numpy as np

    from dakter_scale.data.real import denormalise
    from dakter_scale.data.shardset import ShardSet, decode_sample
    from dakter_scale.synth.plan import Plan, batch_indices, pair_seed
    from dakter_scale.synth.worker import ShardWriter

    info = ShardSet(url).info()
    stored = {}
    for sample in ShardSet(url).samples():
        image, q, meta = decode_sample(sample)
        stored[meta["seed"]] = (image, q)
    with tempfile.TemporaryDirectory() as scratch:
        writer = ShardWriter(
            model, scratch, info.sampling, info.batch_size, info.seed, threads=1, device="cpu", condition=condition
        )
        for task in Plan(info.count, info.samples_per_shard, info.seed).tasks():
            for indices in batch_indices(task.count, info.batch_size):  # the shard's batches, as the writer drew them
                seeds = [pair_seed(info.seed, task.shard, i) for i in indices]
                given = []
                rebuilt = denormalise(writer.sample(seeds, on_given=given.append).images[:, 0]).numpy()
                for j, seed in enumerate(seeds):
                    image, q = stored[seed]
                    if not np.array_equal(rebuilt[j], image):
                        sys.exit(
                            f"{url}: pair of seed {seed} rebuilt differently from the stored one (another torch build or thread count?)"
                        )
                    yield image, q, given[-1].ids[j], given[-1].where[j]


def follow(model: str, url: str, spec: str) -> None:
    """How far a set's recorded labels follow what its pairs were drawn given: pixel counts of (given
    class, recorded argmax) over every pair, at every pixel of the composed maps (conditioned) or at
    the pasted pixels (pasted)."""
    import numpy as np

    target, route, pairs = given_pixels(model, url, spec)
    k = len(target.classes)
    counts = np.zeros((k, k), dtype=np.int64)
    for _, q, ids, given in pairs:
        counts += np.bincount((ids[given].astype(np.int64) * k + q.argmax(0)[given]), minlength=k * k).reshape(k, k)
    followed = {c: float(counts[i, i] / max(1, counts[i].sum())) for i, c in enumerate(target.classes)}
    shares = {"given_pixels_per_class": counts.sum(1).tolist(), "recorded_there_per_class": counts.sum(0).tolist()}
    print(
        json.dumps(
            {
                "route": route,
                "classes": list(target.classes),
                "rows_given_cols_recorded": counts.tolist(),
                **shares,
                "recorded_where_given": followed,
            }
        )
    )


def recall(model: str, url: str, segmenter: str, spec: str) -> None:
    """(recorded class, segmenter's class) pixel counts of a set, on pasted and drawn pixels apart,
    and the per-class recall of each (module docstring)."""
    import numpy as np
    import torch

    from dakter_scale.data.real import normalise
    from dakter_scale.student.models import load_student

    target, route, pairs = given_pixels(model, url, spec)
    net, _ = load_student(segmenter)
    net.eval()
    k = len(target.classes)
    counts = {"given": np.zeros((k, k), dtype=np.int64), "drawn": np.zeros((k, k), dtype=np.int64)}
    for image, q, _, given in pairs:
        with torch.no_grad():
            judged = net(normalise(image)[None, None]).argmax(1)[0].numpy()
        recorded = q.argmax(0)
        given = (
            given if route == "pasted" else np.zeros(recorded.shape, dtype=bool)
        )  # a composed map gives every pixel: all drawn
        for name, where in (("given", given), ("drawn", ~given)):
            counts[name] += np.bincount(recorded[where] * k + judged[where], minlength=k * k).reshape(k, k)

    def rec(c):
        return {name: float(c[i, i] / c[i].sum()) if c[i].sum() else None for i, name in enumerate(target.classes)}

    recalls = {
        "recall_all": rec(counts["given"] + counts["drawn"]),
        "recall_given": rec(counts["given"]),
        "recall_drawn": rec(counts["drawn"]),
    }
    print(
        json.dumps(
            {
                "route": route,
                "classes": list(target.classes),
                **recalls,
                "counts_rows_recorded_cols_judged": {n: c.tolist() for n, c in counts.items()},
            }
        )
    )


def layout(model: str, config: str, n: int = 32) -> None:
    """When the joint sampler fixes a pair's layout: per step, the pooled share of each class in the
    argmax of the label estimate x0_hat, over n untargeted pairs (seeds 1000..), and in the final
    soft labels. Listens to the sampler's steps (on_step); changes no sample."""
    from dakter_scale.config import load_config
    from dakter_scale.diffusion import sample
    from dakter_scale.diffusion.model import load_model_folder

    cfg = load_config(config)
    m = load_model_folder(model, "cpu")
    shares = []

    def recorded(step: int, x0):
        label = x0[:, 1:].argmax(dim=1)
        shares.append([float((label == c).float().mean()) for c in range(m.num_classes)])

    out = sample.sample_pairs(m, list(range(1000, 1000 + n)), cfg.sampling, "cpu", on_step=recorded)
    final = out.q.argmax(dim=1)
    print(
        json.dumps(
            {
                "classes": list(m.classes),
                "per_step": [[round(v, 4) for v in row] for row in shares],
                "final": [round(float((final == c).float().mean()), 4) for c in range(m.num_classes)],
            }
        )
    )


def reference(
    model: str,
    segmenter: str,
    real_spec: str,
    spec: str,
    out_json: str,
    selected_dir: str | None = None,
    n: int = 200,
    repeats: int = 3,
) -> None:
    """The judge's label alignment on real scenes (the test split of REAL_SPEC, e.g. a few thousand
    simulated scenes the generator never saw) at the untargeted and at the targeted class mix: what
    labels that are right at every pixel score at each mix. Rows: `repeats` random sets of n scenes;
    n scenes selected from all of them to meet the target (target.select, the selection route on
    real scenes); and n random scenes with real instances pasted into them as the pasted route
    does: before the layout (pasted anywhere, counting only pasted pixels) and onto the scene's sea
    counting what it holds (the layout-aware placement), each moved to the scene's sea level.
    selected_dir: the selected scenes are also written there as an OSD-layout folder (train: the n
    selected, test: 20 others; PNG, lossless), to train a judge at the targeted mix on."""
    import numpy as np
    import torch

    from dakter_scale.config import TargetConfig
    from dakter_scale.core.compose import class_shares
    from dakter_scale.core.metrics import confusion_matrix, metrics_from_confusion
    from dakter_scale.data.real import open_source
    from dakter_scale.student.evaluate import segment
    from dakter_scale.student.models import load_student
    from dakter_scale.synth import target as tgt
    from dakter_scale.synth import targeted

    target, info = targeted.model_target(model, spec)
    images, masks = targeted.training_pairs(info)
    pool = tgt.paste_pool(images, masks, target)
    source = open_source(real_spec)
    scenes = [source.load(item) for item in source.split_items("test")]
    real_images, real_masks = np.stack([x for x, _ in scenes]), np.stack([m for _, m in scenes]).astype(np.uint8)
    net, _ = load_student(segmenter)
    net.eval()
    classes = list(target.classes)
    k = len(classes)

    def score(name: str, imgs: np.ndarray, ids: np.ndarray) -> dict:
        m = metrics_from_confusion(
            confusion_matrix(segment(net, imgs), torch.from_numpy(ids.astype(np.int64)), k), classes
        )
        row = {
            "set": name,
            "scenes": len(imgs),
            "miou": m["miou"],
            "iou": dict(zip(classes, m["iou"])),
            "recall": dict(zip(classes, m["recall"])),
            "shares": dict(zip(classes, class_shares(ids, k).tolist())),
        }
        print(json.dumps(row), flush=True)
        return row

    def pasted(indices: np.ndarray, layout: bool) -> tuple[np.ndarray, np.ndarray]:
        imgs, ids = real_images[indices].copy(), real_masks[indices].copy()
        for j, i in enumerate(indices):
            image, given_ids, given, level = tgt.pair_paste(
                int(i),
                images,
                masks,
                target,
                pool=pool,
                base=ids[j] if layout else None,
                by_component=TargetConfig.by_component,
            )
            sea = ids[j] == 0
            shift = np.median(imgs[j][sea]) if sea.any() else np.median(imgs[j])
            imgs[j][given] = (
                np.clip(image[given].astype(np.float32) + (shift - level[given]), 0, 255).round().astype(np.uint8)
            )
            ids[j][given] = given_ids[given]
        return imgs, ids

    rng = np.random.default_rng(0)
    rows = []
    for r in range(repeats):
        pick = np.sort(rng.choice(len(scenes), n, replace=False))
        rows.append(score(f"real, random {n} ({r})", real_images[pick], real_masks[pick]))
        rows.append(score(f"real with instances pasted anywhere ({r})", *pasted(pick, layout=False)))
        rows.append(score(f"real with instances pasted onto their sea ({r})", *pasted(pick, layout=True)))
    fractions = np.stack([class_shares(m[None], k) for m in real_masks])
    chosen = tgt.select(fractions, target, n)
    rows.append(
        score(
            f"real, {n} selected of {len(scenes)} to meet {spec}"
            + ("" if target.met(tgt.pooled(fractions, chosen)) else " (not met)"),
            real_images[chosen],
            real_masks[chosen],
        )
    )
    if selected_dir:
        from PIL import Image

        for split, indices in (("train", chosen), ("test", np.setdiff1d(np.arange(len(scenes)), chosen)[:20])):
            for kind in ("images", "labels_1D"):
                (Path(selected_dir) / split / kind).mkdir(parents=True, exist_ok=True)
            for j, i in enumerate(indices):
                Image.fromarray(real_images[i]).save(Path(selected_dir) / split / "images" / f"{j:05d}.png")
                Image.fromarray(real_masks[i]).save(Path(selected_dir) / split / "labels_1D" / f"{j:05d}.png")
    Path(out_json).write_text(
        json.dumps(
            {
                "model": model,
                "segmenter": segmenter,
                "real_spec": real_spec,
                "spec": spec,
                "target": target.named([s for s in target.reference()]),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["recall"] and len(sys.argv) == 6:
        sys.exit(recall(*sys.argv[2:6]))
    if sys.argv[1:2] == ["follow"] and len(sys.argv) == 5:
        sys.exit(follow(*sys.argv[2:5]))
    args = sys.argv[1:]
    if args[:1] == ["layout"] and len(args) in (3, 4):
        sys.exit(layout(args[1], args[2], *(int(v) for v in args[3:])))
    if args[:1] == ["reference"] and len(args) in (6, 7):
        sys.exit(reference(*args[1:]))
    if args[:1] == ["summary"] and len(args) in (3, 4):
        sys.exit(summary(*args[1:]))
    if args[:1] == ["rescore"] and len(args) in (5, 6):
        sys.exit(rescore(*args[1:]))
    if len(args) < 6:
        sys.exit(__doc__)
    variants = (
        tuple(parse_variant(v) for v in args[8].split(",")) if len(args) > 8 else (("conditioned", 0, 1, 0.0, False),)
    )
    main(
        args[0],
        args[1],
        args[2],
        args[3],
        int(args[4]),
        [int(s) for s in args[5].split(",")],
        args[6].split(";"),
        float(args[7]) if len(args) > 7 else 20.0,
        variants,
    )
