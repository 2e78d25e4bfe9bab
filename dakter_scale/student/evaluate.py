"""Evaluate a student on full test images with one confusion matrix over the whole split.

The image is brought to the scale the student trained at (resolution / crop, or resized to
resolution x resolution when it trained on whole resized images), reflect-padded to a multiple of
``pad_multiple``, segmented, and the logits are resized back to the label's size: metrics are
computed at the label's native resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dakter_scale.config import EvalConfig
from dakter_scale.core.metrics import confusion_matrix, metrics_from_confusion
from dakter_scale.data.real import DataError, normalise, open_source
from dakter_scale.data.storage import redact_url
from dakter_scale.student.models import load_student


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image: torch.Tensor, info: dict, pad_multiple: int) -> torch.Tensor:
    """image: (1, 1, H, W) in [-1, 1] -> logits (1, K, H, W) at the image's own size."""
    h, w = image.shape[-2:]
    resolution, crop = int(info["resolution"]), int(info.get("crop", 0))
    if crop > 0:
        scale = resolution / crop
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
    else:
        size = (resolution, resolution)
    x = (
        image
        if size == (h, w)
        else F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    )
    ph = (-x.shape[-2]) % pad_multiple
    pw = (-x.shape[-1]) % pad_multiple
    if ph or pw:
        mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    logits = model(x)[..., : size[0], : size[1]]
    if size != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits


def _same_size_batches(source, items, batch_size: int):
    """Consecutive items in groups of up to batch_size images of one size (a new group at each size
    change): a batch of one image at a time is what the committed CPU results used."""
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    for item in items:
        image, mask = source.load(item)
        if batch and (len(batch) == batch_size or batch[0][0].shape != image.shape):
            yield batch
            batch = []
        batch.append((image, mask))
    if batch:
        yield batch


def evaluate_student(
    student_dir: str,
    spec: str,
    split: str = "test",
    cfg: EvalConfig | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict:
    """Metrics of a student folder on a data spec's split (see core.metrics for the definitions)."""
    cfg = cfg or EvalConfig()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, info = load_student(student_dir, device, ("arch", "encoder", "classes", "resolution"))  # scoring: its size
    source = open_source(spec)
    if list(source.classes) != list(info["classes"]):
        raise DataError(
            f"{redact_url(spec)}: classes {list(source.classes)} differ from the student's {info['classes']}"
        )
    k = source.num_classes
    cm = torch.zeros(k, k, dtype=torch.int64)
    items = source.split_items(split)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=f"evaluate {split}", unit="img", leave=False)
    for batch in _same_size_batches(source, items, cfg.batch_size):
        x = torch.stack([normalise(image)[None] for image, _ in batch]).to(device)
        logits = predict_logits(model, x, info, cfg.pad_multiple)
        target = torch.from_numpy(np.stack([mask for _, mask in batch]))
        cm += confusion_matrix(logits.argmax(dim=1).cpu(), target, k)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    metrics = metrics_from_confusion(cm, list(source.classes))
    metrics.update(
        {
            "student": str(student_dir),
            "data": redact_url(spec),  # metrics files are shared and logged: never a credential
            "split": split,
            "images": len(items),
            "averaging": "one confusion matrix over the split",
        }
    )
    return metrics


@torch.no_grad()
def segment(segmenter: torch.nn.Module, images: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """A segmenter's argmax class map (N, H, W) over uint8 images (N, H, W) in the training radiometry."""
    device = next(segmenter.parameters()).device
    preds = []
    for i in range(0, len(images), batch_size):
        x = normalise(images[i : i + batch_size])[:, None].to(device)
        preds.append(segmenter(x).argmax(dim=1).cpu())
    return torch.cat(preds) if preds else torch.zeros((0,) + images.shape[1:], dtype=torch.int64)
