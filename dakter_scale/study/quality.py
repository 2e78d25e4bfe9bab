"""Generation quality without downloaded weights.

* label alignment: a segmenter trained on the real set segments the generated images; its argmax
  is scored against the argmax of the generated soft labels (mIoU, pixel agreement) - do the
  labels describe the images?
* class-frequency match: total variation between generated and real class pixel fractions.
* SAR statistics (data/sar_stats.py): equivalent number of looks (ENL = mean^2 / var of linear
  intensity) over homogeneous sea windows, and the distance between 8-bit intensity histograms of
  generated and real images (total variation and 1-Wasserstein in grey levels).
Inputs are uint8 images (N, H, W) in the training radiometry (8-bit, dB-scaled) and soft labels.
`generation_quality` scores a generated shard set with all of them (the experiment's and the demo's
quality table); `read_generated` reads its first pairs.
"""

from __future__ import annotations

import numpy as np
import torch

from dakter_scale.config import Config
from dakter_scale.core.metrics import confusion_matrix, metrics_from_confusion
from dakter_scale.core.soft_labels import class_fractions
from dakter_scale.data.real import denormalise, open_source, split_stats
from dakter_scale.data.sar_stats import SEA_CLASS, histogram_distance, window_enl
from dakter_scale.data.stream import GeneratedStream
from dakter_scale.student.evaluate import segment
from dakter_scale.student.models import load_student


def enl(images: np.ndarray, masks: np.ndarray | None = None, window: int = 8, sea_class: int = SEA_CLASS) -> float:
    """Median ENL over non-overlapping window x window patches that are all sea (or all pixels when
    masks is None); data/sar_stats.py owns the windows and the dB mapping."""
    values = window_enl(images, masks, window, sea_class)
    return float(np.median(values)) if values.size else float("nan")


def class_fraction_tv(generated: np.ndarray, real: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(generated, dtype=np.float64) - np.asarray(real, dtype=np.float64)).sum())


def label_alignment(
    segmenter: torch.nn.Module, images: np.ndarray, q: np.ndarray, class_names: list[str], batch_size: int = 32
) -> dict:
    """Score a real-trained segmenter's prediction on generated images against the generated labels."""
    k = q.shape[1]
    cm = confusion_matrix(segment(segmenter, images, batch_size), torch.from_numpy(q).argmax(dim=1), k)
    m = metrics_from_confusion(cm, class_names)
    return {"miou": m["miou"], "pixel_agreement": m["pixel_accuracy"], "iou": m["iou"]}


# -- a generated shard set -------------------------------------------------------------------------


def read_generated(url: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n generated pairs in key order: images (n, H, W) uint8 and soft labels (n, K, H, W)."""
    images, qs = [], []
    for item in GeneratedStream(url, shuffle_buffer=1):
        images.append(denormalise(item["x"][0]).numpy())
        qs.append(item["q"].numpy())
        if len(images) == n:
            break
    return np.stack(images), np.stack(qs)


def generation_quality(cfg: Config, shards_url: str, segmenter_dir: str, n: int = 256) -> dict:
    """The first n pairs of a generated set against cfg.data.spec's training split: label alignment
    (the real-trained student segmenter_dir on the generated images), class-fraction match, SAR statistics."""
    source = open_source(cfg.data.spec)
    images, q = read_generated(shards_url, n)
    segmenter, _ = load_student(segmenter_dir)
    items = source.split_items("train")[: max(1, min(n, 200))]
    real = [source.load(it) for it in items]
    real_images = np.stack([r[0] for r in real]) if len({r[0].shape for r in real}) == 1 else None
    gen_fractions = class_fractions(torch.from_numpy(q)).mean(dim=0).tolist()
    real_fractions = list(split_stats(source, "train", cfg.data.stats_max_images).class_fractions)
    out = {
        "pairs": len(images),
        "label_alignment": label_alignment(segmenter, images, q, list(source.classes)),
        "class_fractions_generated": gen_fractions,
        "class_fractions_real": real_fractions,
        "class_fraction_tv": class_fraction_tv(gen_fractions, real_fractions),
        "mean_confidence": float(q.max(axis=1).mean()),
        "enl_generated": enl(images, q.argmax(axis=1), window=4),
    }
    if real_images is not None:
        out["enl_real"] = enl(real_images, np.stack([r[1] for r in real]), window=4)
        out["histogram_distance"] = histogram_distance(images, real_images)
    return out
