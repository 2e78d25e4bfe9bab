"""Composed label maps: a real training mask with extra regions of chosen classes pasted in.

The label-conditioned route of targeted synthesis (synth/targeted.py) draws the image given such a
map. A map starts from a real mask; for each targeted class, whole masks of real donors are
transformed (flips, quarter turns, a cyclic shift) and their pixels of that class painted over
background pixels only, until the class's share of the map reaches its goal or `max_pastes` donors
were used. Painting over background alone keeps every real region (land, ships, slicks) of the base.
The shapes are real ones (whole donor components, moved), not drawn blobs.

Pure numpy: the randomness is a ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def transform(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random flip, quarter turn and cyclic shift of a square (H, H) mask: the same class shapes elsewhere."""
    out = mask[:, ::-1] if rng.integers(2) else mask
    out = np.rot90(out, int(rng.integers(4)))
    h, w = out.shape
    return np.roll(out, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1))


def compose_mask(
    base: np.ndarray,
    donors: Mapping[int, Sequence[np.ndarray]],
    goals: Mapping[int, float],
    rng: np.random.Generator,
    background: int = 0,
    max_pastes: int = 8,
) -> np.ndarray:
    """base (H, H) class ids -> a copy whose class c covers at least goals[c] of the pixels where
    max_pastes pastes of donors[c] (masks that hold class c) reach it. Classes are taken in
    increasing id order; a class without donors is left as it is."""
    out = np.array(base, copy=True)
    size = out.size
    for c in sorted(goals):
        pool = donors.get(c) or ()
        for _ in range(max_pastes if pool else 0):
            if np.count_nonzero(out == c) >= goals[c] * size:
                break
            donor = transform(pool[int(rng.integers(len(pool)))], rng)
            out[(donor == c) & (out == background)] = c
    return out


def class_shares(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Pooled pixel share of each class over masks (N, H, W) of class ids -> (K,)."""
    counts = np.bincount(np.asarray(masks).reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
    return counts / max(1, counts.sum())
