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
is pasted. Generated instances from an instance bank (``student.instance_bank``) are the other kind of
donor (``core.compose.paste_soft``). Both paste by one rule (``core.compose.paste_toward``: the same
stopping rule, MAX_INSTANCES and MAX_DRAWS), and both are probed on the real training scenes
(``whole_pairs``: the first 2,000 real training pairs, whole images at data.resolution; with data.crop
the student trains on crops of them) and refused where they fall short of the target there
(``check_reach``), so arms given one target get one dose.

Everything is a function of the student's seed and the sample's position in the stream (batch index,
place in the batch), so the same seed gives the same bytes and a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from dakter_scale.config import Config
from dakter_scale.core.compose import class_shares, paste_onto, paste_soft
from dakter_scale.core.steps import derive_seed
from dakter_scale.data.bank import Instance, bank_info, read_bank
from dakter_scale.data.real import Source, denormalise, normalise, split_stats, whole_pairs
from dakter_scale.synth.target import ClassTarget, TargetError, parse_class_target, paste_pool

STREAM = 11  # derive_seed(seed, STREAM, batch, place): a sample's augmentation, apart from every other stream
# Instances pasted per class and sample at most, real or banked (core.compose.paste_toward): a placement
# that brings no pixel of its class does not count.
MAX_INSTANCES = 64
# Draws per class and sample at most, real or banked: a draw counts whatever it brings (a real donor
# drawn with its instances, or one banked instance), so that a sample that cannot reach its goal (little
# sea, instances that fit nowhere) stops.
MAX_DRAWS = 4 * MAX_INSTANCES
PROBE = 64  # pastes of the training scenes that tell whether the donors reach the target (check_reach)
# The copy-paste rule's version, in student.json's copy_paste block: a kept student pasted by another rule
# is not this one's (study.units refuses it). 1: the rule before paste_toward, real donors capped at 8
# pairs per class, their reach probed on all-sea canvases. 2: paste_toward, above.
PASTE_RULE = 2


def _write(x: torch.Tensor, image: np.ndarray, where: torch.Tensor) -> torch.Tensor:
    """x (1, H, W) in [-1, 1] with the pasted pixels `where` (H, W) of image (H, W) uint8 written in: the
    pixels not given keep their exact values (a generated image is not quantised to uint8 levels)."""
    out = x.clone()
    out[0][where] = normalise(image)[where]
    return out


@dataclass(frozen=True)
class CopyPaste:
    """Real instances pasted onto a share of the samples until they meet `target` (per sample)."""

    target: ClassTarget
    pool: dict[int, list[np.ndarray]]  # by targeted class: real pairs (2, R, R) uint8 that hold it
    real: float  # share of real samples pasted
    generated: float  # share of generated samples pasted
    max_pastes: int = MAX_INSTANCES
    max_draws: int = MAX_DRAWS

    def paste(self, item: dict, rng: np.random.Generator) -> dict:
        """item (x (1, H, W) in [-1, 1], mask (H, W), q (K, H, W) or None) -> a new item with instances
        pasted, and "pasted" (H, W) bool: the pixels given. Soft labels become one-hot where pasted."""
        image = denormalise(item["x"][0]).numpy()
        pasted_image, mask, given = paste_onto(
            image, item["mask"].numpy(), self.pool, self.target.goals, rng, self.max_pastes, self.max_draws
        )
        where = torch.from_numpy(given)
        if not given.any():
            return dict(item, pasted=where)
        out = dict(
            item, x=_write(item["x"], pasted_image, where), mask=torch.from_numpy(mask.astype(np.int64)), pasted=where
        )
        if item["q"] is not None:
            q = item["q"].clone()
            q[:, where] = torch.nn.functional.one_hot(out["mask"][where], q.shape[0]).T.to(q.dtype)
            out["q"] = q
        return out


@dataclass(frozen=True)
class BankPaste:
    """Generated instances from an instance bank (data/bank.py) pasted onto a share of the samples until
    they meet `target` (per sample), their soft labels with them: copy-paste with banked donors."""

    target: ClassTarget
    pool: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, float]]]  # by class: Instance.donor()
    real: float
    generated: float
    max_pastes: int = MAX_INSTANCES
    max_draws: int = MAX_DRAWS
    # which instances: the bank's fingerprint, how many were read and the last one's key (a bank grows at
    # its URL under one fingerprint, so the count and last key tell a grown bank's prefix apart)
    read: dict | None = None

    def paste(self, item: dict, rng: np.random.Generator) -> dict:
        """item -> a new item with instances pasted (core.compose.paste_soft), "pasted" (H, W) bool, and
        "placements": (class, instance, flip, turns, y, x) of each, in the sample's coordinates before
        Augment's geometry moves it. q takes the instances' soft labels
        (a real sample gets one, one-hot off them, so the student's loss reads them: core.kd.mixed_loss);
        the mask is its most probable class."""
        k = len(self.target.classes)
        q = (
            item["q"].numpy()
            if item["q"] is not None
            else np.eye(k, dtype=np.float32)[item["mask"].numpy()].transpose(2, 0, 1)
        )
        image = denormalise(item["x"][0]).numpy()
        pasted, q_out, given, placements = paste_soft(
            image, q, self.pool, self.target.goals, rng, self.max_pastes, self.max_draws
        )
        if not given.any():
            return dict(item, pasted=torch.from_numpy(given), placements=placements)
        mask = item["mask"].clone()
        where = torch.from_numpy(given)
        mask[where] = torch.from_numpy(np.argmax(q_out, axis=0))[where]
        return dict(
            item,
            x=_write(item["x"], pasted, where),
            mask=mask,
            q=torch.from_numpy(q_out),
            pasted=where,
            placements=placements,
        )


class Augment:
    """The per-sample augmentation of one student: copy-paste (optional), then the geometry
    (none | flip: a horizontal flip half the time | d4: a flip and a quarter turn, the eight
    symmetries of the square) applied to image, mask, soft label and pasted pixels alike."""

    def __init__(self, seed: int, geometry: str = "none", copy_paste: CopyPaste | BankPaste | None = None):
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


def build_copy_paste(cfg: Config, source: Source) -> CopyPaste | BankPaste:
    """student.copy_paste's target against the real training split's classes and pixel shares, and
    its donors (the real pairs, or student.instance_bank's instances: build_bank_paste); refused in one
    line (TargetError) when no donor holds a targeted class or the donors cannot reach the target on the
    real training scenes, whole (whole_pairs, check_reach): the same rule for both kinds of donor."""
    s = cfg.student
    shares = split_stats(source, "train", cfg.data.stats_max_images).class_fractions
    target = parse_class_target(s.copy_paste, source.classes, shares, flag="student.copy_paste")
    images, masks = whole_pairs(source, cfg.data.resolution)
    if s.instance_bank:
        instances = read_bank(s.instance_bank, list(source.classes), s.instance_bank_size, cfg.data.resolution)
        read = {
            "fingerprint": bank_info(s.instance_bank).get("fingerprint"),
            "instances": len(instances),
            "last_key": instances[-1].key if instances else None,
        }
        paste = dataclasses.replace(build_bank_paste(cfg, target, instances), read=read)
        where = f"student.instance_bank {s.instance_bank}"
    else:
        pool = paste_pool(images, masks, target)
        missing = [target.classes[c] for c, pairs in pool.items() if not pairs]
        if missing:
            raise TargetError(f"student.copy_paste {target.spec}: no training pair holds {', '.join(missing)}")
        paste, where = CopyPaste(target, pool, s.copy_paste_real, s.copy_paste_generated), "the real training pairs"
    check_reach(paste, images, masks, where)
    return paste


def build_bank_paste(cfg: Config, target: ClassTarget, instances: list[Instance]) -> BankPaste:
    """The BankPaste of student.copy_paste's target over banked instances, refused in one line
    (TargetError) when the bank is smaller than student.instance_bank_size or holds no instance of a
    targeted class (whether it reaches the target: check_reach)."""
    s = cfg.student
    where = f"student.instance_bank {s.instance_bank}"
    if s.instance_bank_size and len(instances) < s.instance_bank_size:
        raise TargetError(
            f"{where} holds {len(instances)} instances, fewer than student.instance_bank_size {s.instance_bank_size}"
        )
    pool = {c: [i.donor() for i in instances if i.cls == c] for c, _ in target.shares}
    missing = [target.classes[c] for c, donors in pool.items() if not donors]
    if missing:
        raise TargetError(
            f"student.copy_paste {target.spec}: {where} holds no {', '.join(missing)} instance (of its first {len(instances)})"
        )
    return BankPaste(target, pool, s.copy_paste_real, s.copy_paste_generated)


def reach(paste: CopyPaste | BankPaste, images: np.ndarray, masks: np.ndarray, probe: int = PROBE) -> np.ndarray:
    """Pooled class shares (K,) of `probe` pastes of the training scenes (images, masks: (N, H, W) uint8;
    build_copy_paste gives whole_pairs, whole images, not the crops a student with data.crop trains on),
    scene i * N // probe (every scene about equally often) with the generator derive_seed(i, 2): the dose
    the student's pasted samples get, whole scenes standing for them."""
    out = []
    for i in range(probe):
        scene = i * len(masks) // probe
        item = {"x": normalise(images[scene])[None], "mask": torch.from_numpy(masks[scene].astype(np.int64)), "q": None}
        out.append(paste.paste(item, np.random.default_rng(derive_seed(i, 2)))["mask"].numpy())
    return class_shares(np.stack(out), len(paste.target.classes))


def check_reach(paste: CopyPaste | BankPaste, images: np.ndarray, masks: np.ndarray, where: str) -> np.ndarray:
    """Refuse (TargetError, one line naming student.copy_paste) donors (`where`) whose pastes of the
    training scenes (images, masks: whole_pairs) fall short of the target, pooled (reach): real pairs and
    banked instances alike, so that every arm that trains gets its target. Returns the shares reached (K,)."""
    shares = reach(paste, images, masks)
    if not paste.target.met(shares):
        raise TargetError(
            f"student.copy_paste {paste.target.spec} cannot be reached from {where} ({paste.max_pastes} instances"
            f" per class at most): pasted training scenes reach {', '.join(paste.target.missed(shares))}"
        )
    return shares


def build_augment(cfg: Config, source: Source) -> Augment | None:
    """The Augment student.augment and student.copy_paste ask for; None for neither."""
    s = cfg.student
    augment = Augment(s.seed, s.augment, build_copy_paste(cfg, source) if s.copy_paste else None)
    return augment if augment.active else None
