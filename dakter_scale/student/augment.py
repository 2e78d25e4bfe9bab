"""What a student's samples go through before they are batched: one geometric augmentation for every
arm of a study, and copy-paste of real instances.

Copy-paste (Simple Copy-Paste, Ghiasi et al. 2021) is the baseline every user of rare-class
segmentation expects and the control for what generated pairs add: real instances of the targeted
classes (``student.copy_paste: oil:3x,ship:3x``, the grammar of ``--class-target``) are cut from the
real training pairs (the pasted route's donors, ``data.real.whole_pairs``) and pasted onto a sample's
sea with the pasted route's placement (``core.compose.paste_onto``: one 4-connected instance at a
time, only where it fits what the class still lacks, moved to the sample's sea level), until each
class covers its target share of the sample. A share of the real samples (``copy_paste_real``) and of
the generated ones (``copy_paste_generated``: soft label and image together, the pasted pixels one-hot)
is pasted.

Everything is a function of the student's seed and the sample's position in the stream (batch index,
place in the batch), so the same seed gives the same bytes and a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dakter_scale.config import Config
from dakter_scale.core.compose import paste_onto
from dakter_scale.core.steps import derive_seed
from dakter_scale.data.real import Source, denormalise, normalise, split_stats, whole_pairs
from dakter_scale.synth.target import MAX_PASTES, ClassTarget, check_composable, parse_class_target, paste_pool

STREAM = 11  # derive_seed(seed, STREAM, batch, place): a sample's augmentation, apart from every other stream


@dataclass(frozen=True)
class CopyPaste:
    """Real instances pasted onto a share of the samples until they meet `target` (per sample)."""

    target: ClassTarget
    pool: dict[int, list[np.ndarray]]  # by targeted class: real pairs (2, R, R) uint8 that hold it
    real: float  # share of real samples pasted
    generated: float  # share of generated samples pasted
    max_pastes: int = MAX_PASTES

    def paste(self, item: dict, rng: np.random.Generator) -> dict:
        """item (x (1, H, W) in [-1, 1], mask (H, W), q (K, H, W) or None) -> a new item with instances
        pasted, and "pasted" (H, W) bool: the pixels given. Soft labels become one-hot where pasted."""
        image = denormalise(item["x"][0]).numpy()
        pasted_image, mask, given = paste_onto(
            image, item["mask"].numpy(), self.pool, self.target.goals, rng, self.max_pastes
        )
        where = torch.from_numpy(given)
        out = dict(item, x=normalise(pasted_image)[None], mask=torch.from_numpy(mask.astype(np.int64)), pasted=where)
        if item["q"] is not None:
            q = item["q"].clone()
            q[:, where] = torch.nn.functional.one_hot(out["mask"][where], q.shape[0]).T.to(q.dtype)
            out["q"] = q
        return out


class Augment:
    """The per-sample augmentation of one student: copy-paste (optional), then the geometry
    (none | flip: a horizontal flip half the time | d4: a flip and a quarter turn, the eight
    symmetries of the square) applied to image, mask, soft label and pasted pixels alike."""

    def __init__(self, seed: int, geometry: str = "none", copy_paste: CopyPaste | None = None):
        self.seed, self.geometry, self.copy_paste = seed, geometry, copy_paste

    @property
    def active(self) -> bool:
        return self.geometry != "none" or self.copy_paste is not None

    def __call__(self, item: dict, batch: int, place: int) -> dict:
        rng = np.random.default_rng(derive_seed(self.seed, STREAM, batch, place))
        cp = self.copy_paste
        if cp is not None and rng.random() < (cp.generated if item["generated"] else cp.real):
            item = cp.paste(item, rng)
        if self.geometry == "none":
            return item
        flip = bool(rng.integers(2))
        turns = int(rng.integers(4)) if self.geometry == "d4" else 0

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            t = t.flip(-1) if flip else t
            return torch.rot90(t, turns, dims=(-2, -1)).contiguous() if turns else t

        return {**item, **{k: move(item.get(k)) for k in ("x", "mask", "q", "pasted") if k in item}}


def build_copy_paste(cfg: Config, source: Source) -> CopyPaste:
    """student.copy_paste's target against the real training split's classes and pixel shares, and
    its donors; refused in one line (TargetError) when no training pair holds a targeted class or
    the donors cannot reach the target."""
    s = cfg.student
    shares = split_stats(source, "train", cfg.data.stats_max_images).class_fractions
    target = parse_class_target(s.copy_paste, source.classes, shares, flag="student.copy_paste")
    images, masks = whole_pairs(source, cfg.data.resolution)
    check_composable("pasted", images, masks, target, flag="student.copy_paste")
    return CopyPaste(target, paste_pool(images, masks, target), s.copy_paste_real, s.copy_paste_generated)


def build_augment(cfg: Config, source: Source) -> Augment | None:
    """The Augment student.augment and student.copy_paste ask for; None for neither."""
    s = cfg.student
    augment = Augment(s.seed, s.augment, build_copy_paste(cfg, source) if s.copy_paste else None)
    return augment if augment.active else None
