"""Segmentation metrics from one confusion matrix, as OSD papers report them.

Accumulate a single confusion matrix over the whole test set (rows: true class, columns:
predicted class), then derive per-class IoU, precision, recall, F1 and their means, and the pixel
accuracy. Per-image averaging gives different numbers; this module never does it.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(K, K) int64 counts; entry [i, j] = pixels of true class i predicted as j. Ignored pixels drop out."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"target holds classes outside [0, {num_classes})")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def metrics_from_confusion(cm: torch.Tensor | np.ndarray, class_names: list[str] | None = None) -> dict:
    """Per-class IoU, precision, recall, F1; their means over classes; pixel accuracy. Values in [0, 1].

    A class absent from both truth and prediction has undefined IoU/precision/recall/F1 (NaN in the
    per-class list, JSON null) and is left out of the means.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got {cm.shape}")
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
    present = (tp + fp + fn) > 0
    # A class that appears only in predictions or only in truth scores 0, not NaN.
    for arr in (iou, precision, recall, f1):
        arr[present & np.isnan(arr)] = 0.0
    names = class_names or [str(i) for i in range(k)]

    def listed(a: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else float(v) for v in a]

    def mean(a: np.ndarray) -> float:
        return float(np.nanmean(a[present])) if present.any() else float("nan")

    total = cm.sum()
    return {
        "classes": list(names),
        "miou": mean(iou),
        "mean_f1": mean(f1),
        "mean_precision": mean(precision),
        "mean_recall": mean(recall),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "iou": listed(iou),
        "f1": listed(f1),
        "precision": listed(precision),
        "recall": listed(recall),
        "pixels": int(total),
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }
