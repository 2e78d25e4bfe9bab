"""Composed label maps and pasted instances: real regions of chosen classes, moved.

compose_mask: the label-conditioned route of targeted synthesis (synth/targeted.py) draws the image
given such a map. A map starts from a real mask; for each targeted class, whole masks of real donors
are transformed (flips, quarter turns, a cyclic shift) and their pixels of that class painted over
background pixels only, until the class's share of the map reaches its goal or `max_pastes` donors
were used. Painting over background alone keeps every real region (land, ships, slicks) of the base.
The shapes are real ones (whole donor components, moved), not drawn blobs.

paste_instances: the pasted route gives image and label together at some pixels and lets the joint
model draw the rest. Real donor pairs (image and mask, moved by one transform) give their pixels of
each targeted class, image and class id, until the class covers its goal; given the layout of the
pair being drawn (`base`), only onto its sea, counting what it already holds.

paste_toward: copy-paste augmentation (Simple Copy-Paste, Ghiasi et al. 2021): instances pasted onto a
finished sample's sea toward a per-class goal, their image moved to its sea level, by one rule whatever
the donors: paste_onto draws real pairs with the pasted route's placement, paste_soft draws banked
instances with their soft labels.

Pure numpy: the randomness is a ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np


def transform(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random flip, quarter turn and cyclic shift of a square (..., H, H) array, the same for every
    leading index (a mask, or an image and its mask stacked): the same shapes elsewhere."""
    out = mask[..., ::-1] if rng.integers(2) else mask
    out = np.rot90(out, int(rng.integers(4)), axes=(-2, -1))
    h, w = out.shape[-2:]
    return np.roll(out, (int(rng.integers(h)), int(rng.integers(w))), axis=(-2, -1))


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


def components(mask: np.ndarray) -> np.ndarray:
    """mask (H, W) bool -> (H, W) int64 labels of its 4-connected components, 1.. in raster order of
    their first pixel, 0 off the mask. Min-label propagation with pointer jumping (each pixel takes
    the label of the pixel its label names), so long thin slicks settle in a few rounds; no scipy."""
    h, w = mask.shape
    big = h * w + 1
    index = np.arange(1, h * w + 1).reshape(h, w)
    labels = np.where(mask, index, big)
    padded = np.full((h + 2, w + 2), big, labels.dtype)
    while True:
        padded[1:-1, 1:-1] = labels
        nearest = np.minimum(np.minimum(labels, padded[:-2, 1:-1]), np.minimum(padded[2:, 1:-1], padded[1:-1, :-2]))
        nearest = np.where(mask, np.minimum(nearest, padded[1:-1, 2:]), big)
        flat = nearest.ravel()
        nearest = np.where(mask, flat[np.minimum(nearest, big - 1) - 1], big)  # jump: a label's own pixel's label
        if np.array_equal(nearest, labels):
            break
        labels = nearest
    # Settled, each pixel holds its component's first pixel's label; that pixel alone holds its own, and
    # counting those in raster order numbers the components (a sort, as np.unique does, is slower).
    number = np.cumsum(mask & (labels == index)).reshape(h, w)
    return np.where(mask, number.ravel()[np.minimum(labels, big - 1) - 1], 0)


def paste_instances(
    donors: Mapping[int, Sequence[np.ndarray]],
    goals: Mapping[int, float],
    rng: np.random.Generator,
    max_pastes: int = 8,
    base: np.ndarray | None = None,
    by_component: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """donors[c]: real pairs (2, H, H) uint8, image over class ids, that hold class c -> (image (H, H)
    uint8, class ids (H, H) uint8, given (H, H) bool, sea): each targeted class's pixels of
    transformed donors, image and id together, until class c covers goals[c] of the pixels or
    max_pastes donors were used. Classes are taken in increasing id order; a pixel once given is not
    painted again. Pixels not given hold 0 in image and ids (they are drawn, not given). sea (H, H)
    float32: at each given pixel, its donor's sea level (the median of the donor image over its sea,
    id 0, or over all of it).
    base (H, H) class ids: what the pair being drawn already holds (its layout, once sampling has
    fixed it): pixels are given only where base is sea (0), and base's own pixels of class c count
    towards goals[c]. None: an all-sea base, so pixels go anywhere and only given ones count.
    by_component: a donor's instances (4-connected components of class c) are pasted one at a time,
    in random order, instead of all at once, and an instance is skipped when it would bring more
    than twice the pixels the class still needs (it would overshoot the goal by more than it falls
    short): the share lands closer to the goal."""
    shape = next(iter(pool[0] for pool in donors.values() if pool), np.zeros((2, 0, 0))).shape[-2:]
    image, ids, given, sea = (
        np.zeros(shape, np.uint8),
        np.zeros(shape, np.uint8),
        np.zeros(shape, bool),
        np.zeros(shape, np.float32),
    )
    free = np.ones(shape, bool) if base is None else base == 0
    for c in sorted(goals):
        pool = donors.get(c) or ()
        have = 0 if base is None else np.count_nonzero(base == c)

        def need() -> float:  # pixels class c still lacks
            return goals[c] * given.size - have - np.count_nonzero(given & (ids == c))

        for _ in range(max_pastes if pool else 0):
            if need() <= 0:
                break
            donor = transform(pool[int(rng.integers(len(pool)))], rng)
            level = np.median(donor[0][donor[1] == 0] if (donor[1] == 0).any() else donor[0])
            if by_component:
                labels = components(donor[1] == c)
                pieces = [labels == j for j in rng.permutation(np.arange(1, labels.max() + 1))]
            else:
                pieces = [donor[1] == c]
            for piece in pieces:
                if need() <= 0:
                    break
                new = piece & ~given & free
                if by_component and np.count_nonzero(new) > 2 * need():
                    continue
                image[new], ids[new], given[new], sea[new] = donor[0][new], c, True, level
    return image, ids, given, sea


class Piece(NamedTuple):
    """One placed instance, what paste_toward may paste: over its window (h, w) of the sample, at top-left
    (y, x), the image (h, w) uint8, labels (h, w) class ids (the most probable class), region (h, w) bool
    (the pixels it gives where they fall on sea), soft label q (K, h, w) float32 (None where the sample's
    labels are hard), its donor's sea level, and `record`, what paste_toward lists once it is pasted."""

    y: int
    x: int
    image: np.ndarray
    labels: np.ndarray
    region: np.ndarray
    q: np.ndarray | None
    level: float
    record: tuple


def paste_toward(
    image: np.ndarray,
    labels: np.ndarray,
    goals: Mapping[int, float],
    draw: Callable[[int], Iterable[Piece]],
    max_pastes: int,
    max_draws: int,
    q: np.ndarray | None = None,
    match_sea: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, list[tuple]]:
    """A sample (image (H, W) uint8, labels (H, W) class ids, soft label q (K, H, W) float32 or None) ->
    (image uint8, labels, q, given (H, W) bool, placements) with instances pasted onto its sea (label 0)
    until each class c of goals covers goals[c] of the pixels, counting what the sample holds: the one
    rule of copy-paste, whatever the donors.

    For each class in increasing id order, draw(c) draws donors (its randomness is the caller's) and
    gives the pieces of one draw in order. A piece's region pixels that fall on sea are pasted, image
    (with match_sea, moved by the sample's sea level minus the donor's; the sample's is the median of its
    image over its sea before any paste, and a sample without sea keeps the donors' levels), labels and
    q, when they bring at least one pixel of class c and at most twice the class-c pixels still missing
    (any number, when less than a pixel is missing, so that a sample reaches its goal whenever the caps
    allow). Sea is what is labelled sea now: the sample's, and an earlier piece's soft edge where sea is
    its most probable class (a banked instance's edge does not take the sea from later instances; an
    earlier piece keeps the pixels it labels otherwise). A piece that brings no pixel of c (it falls on
    land or on earlier instances, or only its soft edge lands) or too many is skipped and uses up no
    paste. Class c stops when it covers its goal, after max_pastes pieces pasted, after max_draws draws
    (a draw that brings nothing counts: the bound on a sample that cannot reach its goal), or when no
    sea is left. placements: the record of each piece pasted, in order. The inputs are not changed."""
    sea = labels == 0
    out_image, out_labels = image.astype(np.float32), np.array(labels, copy=True)
    out_q = None if q is None else np.array(q, dtype=np.float32, copy=True)
    given = np.zeros(labels.shape, bool)
    level = np.float32(np.median(image[sea])) if sea.any() else None
    placements: list[tuple] = []
    for c in sorted(goals):
        have = np.count_nonzero(labels == c)
        # Kept as running counts, not recounted over the image per piece: a paste changes only pixels
        # labelled sea, so `got` (given pixels labelled c) and `sea_left` move by what it brings, exactly.
        got = np.count_nonzero(given & (out_labels == c))
        sea_left = np.count_nonzero(out_labels == 0)

        def need() -> float:  # pixels class c still lacks
            return goals[c] * labels.size - have - got

        pastes = draws = 0
        while draws < max_draws and pastes < max_pastes and need() > 0 and sea_left > 0:
            draws += 1
            for piece in draw(c):
                missing = need()
                if missing <= 0 or pastes >= max_pastes:
                    break
                h, w = piece.region.shape
                window = (slice(piece.y, piece.y + h), slice(piece.x, piece.x + w))
                new = piece.region & (out_labels[window] == 0)
                brings = np.count_nonzero(new & (piece.labels == c))
                if brings == 0 or (missing >= 1 and brings > 2 * missing):
                    continue
                # a given sea pixel pasted over leaves the count of class c only when c is sea
                got += brings - (np.count_nonzero(new & given[window]) if c == 0 else 0)
                sea_left -= np.count_nonzero(new & (piece.labels != 0))
                shift = level - np.float32(piece.level) if match_sea and level is not None else np.float32(0)
                out_image[window][new] = piece.image[new] + shift
                out_labels[window][new] = piece.labels[new]
                if out_q is not None:
                    out_q[(slice(None),) + window][:, new] = piece.q[:, new]
                given[window] |= new
                placements.append(piece.record)
                pastes += 1
    return np.clip(np.rint(out_image), 0, 255).astype(np.uint8), out_labels, out_q, given, placements


def paste_onto(
    image: np.ndarray,
    mask: np.ndarray,
    donors: Mapping[int, Sequence[np.ndarray]],
    goals: Mapping[int, float],
    rng: np.random.Generator,
    max_pastes: int,
    max_draws: int,
    match_sea: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A pair (image (H, H) uint8, mask (H, H) class ids) -> (image, mask, given (H, H) bool) with real
    instances of the targeted classes pasted onto its sea toward goals (paste_toward's rule). donors[c]:
    real pairs (2, H, H) uint8, image over class ids, that hold class c. A draw is the pasted route's
    placement (paste_instances, by_component): a donor drawn at random and moved by transform, its
    instances (4-connected components of class c) its pieces in random order, at the donor's sea level
    (the median of its image over its sea, or over all of it), moved to the pair's (paste_toward: the
    median over its sea before any paste). The inputs are not changed."""

    levels: dict[tuple[int, int], float] = {}  # by (class, donor)

    def draw(c: int) -> Iterable[Piece]:
        pool = donors[c]
        i = int(rng.integers(len(pool)))
        if (c, i) not in levels:  # transform only moves pixels, so the median is the untransformed donor's
            sea = pool[i][1] == 0
            levels[c, i] = float(np.median(pool[i][0][sea] if sea.any() else pool[i][0]))
        donor = transform(pool[i], rng)
        labels = components(donor[1] == c)
        for j in rng.permutation(np.arange(1, labels.max() + 1)):
            yield Piece(0, 0, donor[0], donor[1], labels == j, None, levels[c, i], (c, i, int(j)))

    reachable = {c: goal for c, goal in goals.items() if donors.get(c)}
    out_image, out_mask, _, given, _ = paste_toward(
        image, mask, reachable, draw, max_pastes, max_draws, None, match_sea
    )
    return out_image, out_mask, given


def class_shares(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Pooled pixel share of each class over masks (N, H, W) of class ids -> (K,)."""
    counts = np.bincount(np.asarray(masks).reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
    return counts / max(1, counts.sum())


# -- instances of generated pairs: cut with their soft labels, pasted with them ------------------------


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    """mask (H, W) bool grown by `steps` 4-neighbour steps (a diamond of radius steps), inside the frame."""
    out = np.asarray(mask, bool)
    for _ in range(steps):
        padded = np.pad(out, 1)
        out = out | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return out


def instance_regions(q: np.ndarray, c: int, threshold: float, edge: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The instances of class c in a soft label q (K, H, W) (probabilities, or uint8 levels with the
    threshold in levels): one per 4-connected component of the confident pixels q[c] >= threshold, in
    raster order of their first pixel, as (core, region), each (H, W) bool. core: the component.
    region: the component grown by `edge` pixels into its soft edge, the pixels most probable as c or
    sea (0) that are confident for no component of c: where the instance's soft label is kept."""
    confident = q[c] >= threshold
    labels = components(confident)
    top = np.argmax(q, axis=0)  # the first maximum on ties, as the student stream's class_argmax
    edge_ok = ((top == c) | (top == 0)) & ~confident
    out = []
    for j in range(1, int(labels.max()) + 1):
        core = labels == j
        out.append((core, core | (dilate(core, edge) & edge_ok)))
    return out


def paste_soft(
    image: np.ndarray,
    q: np.ndarray,
    donors: Mapping[int, Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, float]]],
    goals: Mapping[int, float],
    rng: np.random.Generator,
    max_pastes: int,
    max_draws: int,
    match_sea: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int, int, int, int, int]]]:
    """A sample (image (H, W) uint8, soft label q (K, H, W) float32) -> (image, q, given (H, W) bool,
    placements) with instances pasted onto its sea, soft labels and all, toward goals (paste_toward's
    rule; what the sample holds is its most probable class).

    donors[c]: instances of class c as (image (h, w) uint8, q (K, h, w) float32, region (h, w) bool,
    their pair's sea level). A draw: an instance drawn at random, flipped (left-right) and turned by
    quarter turns at random, placed at a random top-left corner where it fits (one that fits nowhere
    gives no piece); its region's pixels take its image and soft label. placements: (class, instance
    index, flip, turns, y, x) of each instance pasted, in order: where each landed. The inputs are not
    changed."""
    h_img, w_img = image.shape

    def draw(c: int) -> Iterable[Piece]:
        pool = donors[c]
        i = int(rng.integers(len(pool)))
        flip, turns = int(rng.integers(2)), int(rng.integers(4))
        piece = [a[..., ::-1] if flip else a for a in pool[i][:3]]
        piece_image, piece_q, region = (np.rot90(a, turns, axes=(-2, -1)) for a in piece)
        h, w = region.shape
        if h > h_img or w > w_img:
            return
        y, x = int(rng.integers(h_img - h + 1)), int(rng.integers(w_img - w + 1))
        yield Piece(
            y, x, piece_image, np.argmax(piece_q, axis=0), region, piece_q, pool[i][3], (c, i, flip, turns, y, x)
        )

    reachable = {c: goal for c, goal in goals.items() if donors.get(c)}
    out_image, _, out_q, given, placements = paste_toward(
        image, np.argmax(q, axis=0), reachable, draw, max_pastes, max_draws, q, match_sea
    )
    return out_image, out_q, given, placements
