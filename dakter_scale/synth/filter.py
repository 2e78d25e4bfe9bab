"""Keep the generated pairs whose image and label agree: a label-alignment filter.

A segmenter trained on the real set only (any student folder) segments every generated image;
a pair's alignment is the mean IoU between that prediction and the argmax of the generated soft
label over the classes present in either map. The filter keeps the `keep` best-aligned pairs (or
every pair at or above `min_alignment`) and writes them, in their original key order, as a new
shard set in the same layout (``ShardSet.derive``): the stock reader, the student stream and
`r * |D|` selection work on it unchanged. Image and soft-label members are copied byte for byte;
each kept pair's JSON gains `source_key` and `alignment`, so it can still be regenerated from the
source run. A stopped run scores again and resumes writing at the first unfinished shard.

The same pairs go to the hard-label baseline and to DAKTer, so the filter changes what both
learn from, not the comparison between them. It is the check the paper asks for on every
generated set ("label alignment with a segmenter trained on real data"), turned into a
selection, as FreeMask (Yang et al., NeurIPS 2023) filters synthetic masks with a real-trained
model. One process reads the source twice (score, then copy) and holds one batch of images at a
time and one float per pair.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from dakter_scale.cards import write_dataset_card
from dakter_scale.data.lease import Lease
from dakter_scale.data.shardset import DatasetInfo, ShardError, ShardSet, decode_sample
from dakter_scale.data.storage import overlaps, redact_url
from dakter_scale.errors import UserError
from dakter_scale.student.evaluate import segment
from dakter_scale.student.models import load_student, read_student_info

log = logging.getLogger("dakter_scale")

SCORES_FILE = "alignment.parquet"


class FilterError(UserError, ValueError):
    """Bad filter arguments or a source set that cannot be filtered; the message names it."""


def pair_alignment(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-pair mean IoU over the classes present in the prediction or the target: (N, H, W) -> (N,)."""
    n = len(pred)
    p = pred.reshape(n, -1)
    t = target.reshape(n, -1)
    inter = np.zeros((n, num_classes))
    union = np.zeros((n, num_classes))
    for c in range(num_classes):
        pc, tc = p == c, t == c
        inter[:, c] = (pc & tc).sum(axis=1)
        union[:, c] = (pc | tc).sum(axis=1)
    present = union > 0
    return np.where(present, inter / np.maximum(union, 1), 0.0).sum(axis=1) / present.sum(axis=1)


def _batches(source: ShardSet, batch_size: int) -> Iterator[list[tuple[dict, np.ndarray, np.ndarray]]]:
    batch = []
    for sample in source.samples():
        image, q, _ = decode_sample(sample)
        batch.append((sample, image, q))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_shards(url: str, segmenter: torch.nn.Module, batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """(keys, per-pair alignment) of every pair of a generated set, in key order."""
    keys, scores = [], []
    for batch in _batches(ShardSet(url), batch_size):
        q = np.stack([b[2] for b in batch])
        pred = segment(segmenter, np.stack([b[1] for b in batch]), batch_size).numpy()
        scores.append(pair_alignment(pred, q.argmax(axis=1), q.shape[1]))
        keys += [b[0]["__key__"] for b in batch]
    return keys, (np.concatenate(scores) if scores else np.zeros(0))


def _fingerprint(src_info: DatasetInfo, segmenter_dir: Path, keep: int | None, min_alignment: float | None) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "source": src_info.fingerprint,
                "source_count": src_info.count,
                "keep": keep,
                "min_alignment": min_alignment,
            },
            sort_keys=True,
        ).encode()
    )
    h.update((segmenter_dir / "model.safetensors").read_bytes())
    return h.hexdigest()[:16]


def filter_shards(
    src_url: str,
    dst_url: str,
    segmenter_dir: str | Path,
    keep: int | None = None,
    min_alignment: float | None = None,
    samples_per_shard: int | None = None,
    batch_size: int = 64,
) -> DatasetInfo:
    """Write the best-aligned pairs of src_url to dst_url; returns dst's dataset.json.

    keep: the number of pairs to keep (the top ones by alignment; ties by key order).
    min_alignment: keep every pair at or above this alignment. Exactly one of the two.
    A finished dst made by the same source, segmenter and rule is reused as it is.
    """
    if (keep is None) == (min_alignment is None):
        raise FilterError("give exactly one of keep (a pair count) and min_alignment (a score in [0, 1])")
    if keep is not None and keep < 1:
        raise FilterError(f"keep must be >= 1 pair, got {keep}")
    if min_alignment is not None and not 0.0 <= min_alignment <= 1.0:
        raise FilterError(f"min_alignment must be in [0, 1], got {min_alignment}")
    if samples_per_shard is not None and samples_per_shard < 1:
        raise FilterError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if batch_size < 1:
        raise FilterError(f"batch_size must be >= 1, got {batch_size}")
    if overlaps(src_url, dst_url):  # writing there would overwrite or mix into the source's shards
        raise FilterError(
            f"--out {redact_url(dst_url)} is, contains or lies inside --shards {redact_url(src_url)}: give the filtered set a folder of its own"
        )
    source, dst = ShardSet(src_url), ShardSet(dst_url)
    src_info = source.info()
    if src_info is None or not src_info.complete:
        raise FilterError(
            f"{src_url}: not a complete generated set (dataset.json missing or not complete); finish jobs/synthesize.py first"
        )
    segmenter_dir = Path(segmenter_dir)
    seg_info = read_student_info(segmenter_dir)
    if list(seg_info["classes"]) != list(src_info.classes):
        raise FilterError(
            f"segmenter {segmenter_dir} has classes {seg_info['classes']}, the generated set {src_info.classes}"
        )
    fp = _fingerprint(src_info, segmenter_dir, keep, min_alignment)
    try:
        dst_info = dst.info()
    except ShardError:  # unreadable: replaced below
        dst_info = None
    if dst_info is not None and dst_info.complete and (dst_info.filter or {}).get("fingerprint") == fp:
        log.info("filter: %s already holds this selection; reusing it", dst_url)
        return dst_info
    lease = Lease(dst_url, f"filter_generated {fp[:12]}").acquire()  # one writer of --out at a time
    try:
        return _filter_into(
            source,
            dst,
            src_info,
            segmenter_dir,
            seg_info,
            fp,
            keep,
            min_alignment,
            samples_per_shard,
            batch_size,
            lease,
        )
    finally:
        lease.release()


def _filter_into(
    source: ShardSet,
    dst: ShardSet,
    src_info: DatasetInfo,
    segmenter_dir: Path,
    seg_info: dict,
    fp: str,
    keep: int | None,
    min_alignment: float | None,
    samples_per_shard: int | None,
    batch_size: int,
    lease: Lease,
) -> DatasetInfo:
    src_url, dst_url = source.url, dst.url
    segmenter, _ = load_student(segmenter_dir)

    t0 = time.time()
    keys, scores = score_shards(src_url, segmenter, batch_size)
    if keep is not None:
        if keep > len(keys):
            raise FilterError(f"{src_url} holds {len(keys)} pairs, fewer than the {keep} to keep")
        kept = np.zeros(len(keys), dtype=bool)
        kept[np.argsort(-scores, kind="stable")[:keep]] = True
    else:
        kept = scores >= min_alignment
        if not kept.any():
            raise FilterError(f"no pair of {src_url} reaches alignment {min_alignment} (best {scores.max():.3f})")
    threshold = float(scores[kept].min())
    lease.check()  # scoring is long: the scores are written only while the prefix is still this run's
    dst.write_parquet(SCORES_FILE, pa.table({"key": keys, "alignment": scores.astype(np.float32), "kept": kept}))

    per_shard = samples_per_shard or src_info.samples_per_shard or 1000
    alignment = {k: float(a) for k, a, ok in zip(keys, scores, kept) if ok}
    markers = source.derive(
        dst_url,
        lambda key, record: {"source_key": key, "alignment": round(alignment[key], 6)},
        fp,
        per_shard,
        keys=list(alignment),
        check=lease.check,
    )
    written = ShardSet.pairs(markers)
    info, _ = dst.finish(  # checked against the source's training data and thresholds; the source's warnings kept
        src_info,
        markers,
        **src_info.check_settings(),
        samples_per_shard=per_shard,
        keep_warnings=True,
        fingerprint=fp,
        filter={
            "fingerprint": fp,
            "source": redact_url(src_url),
            "source_count": len(keys),
            "source_fingerprint": src_info.fingerprint,
            "segmenter": str(segmenter_dir),
            "segmenter_arch": seg_info.get("arch"),
            "rule": f"top {keep}" if keep is not None else f"alignment >= {min_alignment}",
            "kept": written,
            "threshold": threshold,
            "alignment_mean_source": float(scores.mean()),
            "alignment_mean_kept": float(scores[kept].mean()),
            "seconds": round(time.time() - t0, 2),
        },
    )
    write_dataset_card(dst_url)
    log.info(
        "filter: kept %d of %d pairs of %s (alignment >= %.3f; mean %.3f -> %.3f) in %s",
        written,
        len(keys),
        src_url,
        threshold,
        info.filter["alignment_mean_source"],
        info.filter["alignment_mean_kept"],
        dst_url,
    )
    return info
