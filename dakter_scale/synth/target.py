"""A class target for targeted synthesis: parsing it, and choosing pairs that meet it.

``--class-target oil:3x,ship:3x`` asks for a generated set whose pooled pixel share of oil and of
ships is at least three times the real training set's (recorded in the model folder's dakter.json);
``oil:0.05`` asks for an absolute share. Classes not named keep whatever share the route gives them.

This module owns the target's grammar and its arithmetic, and nothing else: pure functions of
numbers (no files, no model), so that the job, the routes (synth/targeted.py) and the experiment
runner agree on what a target means and whether it is met.

Selection (``select``): from a larger draw, keep n pairs whose pooled shares meet the target,
greedily and deterministically, by each pair's class_fractions in the manifest.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from dakter_scale.config import ROUTES, TargetConfig
from dakter_scale.core.compose import class_shares, compose_mask, paste_instances
from dakter_scale.core.steps import derive_seed
from dakter_scale.errors import UserError

MAX_PASTES = TargetConfig.max_pastes  # donor masks pasted per class at most, by default

DRAWN_ROUTES = ROUTES[1:]  # conditioned, pasted: the routes that draw each pair given something (synth/targeted.py)
FORMAT = 1  # version of dataset.json's "target" record
_ENTRY = re.compile(r"^\s*([^:,\s][^:,]*?)\s*:\s*([^,]+?)\s*$")
# Draw factors the selection route tries, smallest first (pairs drawn per pair kept).
DRAW_FACTORS = (
    1.0,
    1.25,
    1.5,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    10.0,
    12.0,
    16.0,
    20.0,
    25.0,
    32.0,
    40.0,
    50.0,
    64.0,
    80.0,
    100.0,
)


class TargetError(UserError, ValueError):
    """A class target that cannot be used or reached; the message names the flag."""


@dataclass(frozen=True)
class ClassTarget:
    """A parsed target: per targeted class index, the share asked for, and how it was written."""

    spec: str  # as given, e.g. "oil:3x,ship:3x"
    classes: tuple[str, ...]  # the model's classes
    training: tuple[float, ...]  # the real training set's pixel shares (dakter.json)
    shares: tuple[tuple[int, float], ...]  # (class index, share asked for), in class order
    written: tuple[tuple[int, str], ...]  # (class index, "3x" or "0.05")

    @property
    def goals(self) -> dict[int, float]:
        return dict(self.shares)

    def named(self, values: Sequence[float]) -> dict[str, float]:
        """{class name: value} of the targeted classes, from a per-class vector."""
        return {self.classes[c]: float(values[c]) for c, _ in self.shares}

    def met(self, achieved: Sequence[float]) -> bool:
        return all(achieved[c] >= share for c, share in self.shares)

    def missed(self, achieved: Sequence[float]) -> list[str]:
        """One phrase per targeted class whose achieved share is below its target."""
        return [f"{self.classes[c]} {achieved[c]:.4f} < {share:.4f}" for c, share in self.shares if achieved[c] < share]

    def reference(self) -> list[float]:
        """The class mix a met target aims at: targeted classes at their shares, the others scaled
        from the training shares to fill the rest (what the divergence check compares against)."""
        goals = self.goals
        rest = [self.training[c] for c in range(len(self.classes)) if c not in goals]
        free = max(0.0, 1.0 - sum(goals.values()))
        scale = free / sum(rest) if sum(rest) > 0 else 0.0
        return [goals[c] if c in goals else self.training[c] * scale for c in range(len(self.classes))]


def parse_class_target(
    text: str, classes: Sequence[str], training: Sequence[float], flag: str = "--class-target"
) -> ClassTarget:
    """'oil:3x,ship:0.05' -> ClassTarget. A factor multiplies the class's training share; a plain
    number is an absolute share. Errors (TargetError, one line naming the flag): an empty or
    malformed entry, an unknown class (the model's are listed), a class named twice, a factor <= 0,
    a share outside (0, 1), shares that sum to more than 1, a factor of a class the training set
    does not hold, a factor that gives a share >= 1."""
    classes, training = tuple(classes), tuple(float(v) for v in training)
    if len(classes) != len(training):
        raise ValueError(
            f"{len(classes)} classes but {len(training)} training shares"
        )  # an invariant of the model folder
    if not isinstance(text, str) or not text.strip():
        raise TargetError(f"{flag} is empty; give CLASS:FACTORx or CLASS:SHARE entries, e.g. oil:3x,ship:3x")
    goals: dict[int, float] = {}
    written: dict[int, str] = {}
    for entry in text.split(","):
        match = _ENTRY.match(entry)
        if match is None:
            raise TargetError(
                f"{flag} entry {entry.strip()!r} is not CLASS:FACTORx or CLASS:SHARE (e.g. oil:3x or oil:0.05)"
            )
        name, value = match.group(1), match.group(2).strip()
        if name not in classes:
            raise TargetError(f"{flag}: unknown class {name!r}; the model's classes are {', '.join(classes)}")
        c = classes.index(name)
        if c in goals:
            raise TargetError(f"{flag}: class {name!r} is named twice")
        factor = value[:-1] if value.lower().endswith("x") else None
        try:
            number = float(factor if factor is not None else value)
        except ValueError:
            raise TargetError(
                f"{flag} entry {entry.strip()!r}: {value!r} is not a factor like 3x or a share like 0.05"
            ) from None
        if not math.isfinite(number):
            raise TargetError(f"{flag} entry {entry.strip()!r}: {value!r} is not a finite number")
        if factor is not None:
            if number <= 0:
                raise TargetError(f"{flag}: the factor of {name!r} must be > 0, got {value}")
            if training[c] <= 0:
                raise TargetError(
                    f"{flag}: the training set holds no {name!r} pixels, so a factor of its share means nothing; give a share like {name}:0.05"
                )
            share = number * training[c]
            if share >= 1:
                raise TargetError(
                    f"{flag}: {name}:{value} asks for a share of {share:.3f} (training share {training[c]:.4f}), which must be < 1"
                )
        else:
            share = number
            if not 0 < share < 1:
                raise TargetError(
                    f"{flag}: the share of {name!r} must be in (0, 1), got {value} (a factor needs an x: {name}:{value}x)"
                )
        goals[c], written[c] = share, value
    total = math.fsum(goals.values())
    if total > 1 + 1e-9:  # 0.33 + 0.56 + 0.11 adds to 1.0000000000000002 in floats
        raise TargetError(
            f"{flag}: the shares asked for sum to {total:.3f} > 1 ("
            + ", ".join(f"{classes[c]} {s:.3f}" for c, s in sorted(goals.items()))
            + "): no set can hold them"
        )
    return ClassTarget(text.strip(), classes, training, tuple(sorted(goals.items())), tuple(sorted(written.items())))


def check_spec_grammar(text: str, flag: str = "synthesis.target.spec") -> None:
    """A spec's grammar before any work (TargetError naming flag), where the model's classes and training
    shares are not known yet: the classes are the spec's own and each share the least positive float, so
    what is refused here is refused with any model. An empty spec (no target) passes."""
    if text.strip():
        names = [entry.partition(":")[0].strip() for entry in text.split(",")]
        parse_class_target(text, names, [sys.float_info.min] * len(names), flag)


def check_route(route: str, flag: str = "--target-route") -> str:
    if route not in ROUTES:
        raise TargetError(f"{flag} must be one of {', '.join(ROUTES)}, got {route!r}")
    return route


# -- selection ----------------------------------------------------------------------------------------


def select(fractions: np.ndarray, target: ClassTarget, keep: int) -> np.ndarray:
    """Indices (increasing) of `keep` rows of fractions (N, K) whose pooled mean comes as close to the
    target as a greedy choice gets. Greedy and deterministic: each pick is the row that most reduces the
    shortfall of the kept set, sum_c max(0, share_c * keep - sum of picked f_c) / share_c; ties (e.g.
    once nothing is short) go to the lowest index, i.e. to the pairs in key order, so the classes not
    targeted keep the draw's mix as far as the target allows. For one targeted class it meets the
    target whenever the `keep` rows richest in that class do; for two or more it can miss a choice the
    pool allows (target oil 0.45, ship 0.45 from rows (0, 1, 0), (0, 0, 1), (0, .55, .45), keep 2: it
    takes the last two, short of oil, where the first two meet both), and the route then draws more.

    A row's gain only falls as rows are picked (what is still short only shrinks), so the greedy is
    run lazily: a heap of gains last computed, each recomputed when it reaches the top and taken when
    it stays there. The same picks as recomputing every gain at every pick (O(keep * N * K), the
    reference in tests/test_target.py), in about O(N log N) for a draw of 10^6 pairs."""
    fractions = np.asarray(fractions, dtype=np.float64)
    n = len(fractions)
    if not 0 < keep <= n:
        raise ValueError(f"keep must be in [1, {n}], got {keep}")
    cols = np.array([c for c, _ in target.shares], dtype=np.int64)
    if not len(cols):
        return np.arange(keep)  # nothing targeted: every gain is 0, ties go to key order
    shares = np.array([s for _, s in target.shares], dtype=np.float64)
    f = fractions[:, cols]
    total = np.zeros(len(cols))

    def gains(rows: np.ndarray) -> np.ndarray:
        need = np.maximum(0.0, shares * keep - total)  # what the rows still to pick must bring
        return (np.minimum(f[rows], need) / shares).sum(axis=1)

    heap = list(zip((-gains(np.arange(n))).tolist(), range(n)))
    heapq.heapify(heap)
    picked = []
    while len(picked) < keep:
        _, i = heapq.heappop(heap)
        key = (-float(gains(np.array([i]))[0]), i)
        if heap and key > heap[0]:  # another row may gain more now: look again
            heapq.heappush(heap, key)
            continue
        picked.append(i)
        total += f[i]
    return np.sort(np.array(picked, dtype=np.int64))


def pooled(fractions: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
    """Pooled per-class pixel shares of the rows `indices` (default all) of fractions (N, K): all pairs
    have the same pixel count, so the pooled share is the mean of their fractions."""
    fractions = np.asarray(fractions, dtype=np.float64)
    rows = fractions if indices is None else fractions[indices]
    return rows.mean(axis=0)


def draw_factor(fractions: np.ndarray, target: ClassTarget, max_factor: float, keep: int | None = None) -> float | None:
    """The smallest DRAW_FACTORS entry f <= max_factor at which selecting `keep` of ceil(f * keep)
    rows, cycled from fractions (N, K) in order, meets the target; None when none does. With the real
    training masks' per-image shares it estimates the draw the selection route needs before any
    sampling; with a generated draw's, it is that draw's acceptance."""
    fractions = np.asarray(fractions, dtype=np.float64)
    keep = keep or len(fractions)
    for f in DRAW_FACTORS:
        if f > max_factor:
            break
        pool = fractions[np.arange(int(math.ceil(f * keep))) % len(fractions)]
        if target.met(pooled(pool, select(pool, target, keep))):
            return f
    return None


# -- conditioned and pasted sampling: what each pair is drawn given ----------------------------------

COMPOSE_STREAM = 1  # derive_seed(pair seed, COMPOSE_STREAM): the composed map's randomness, apart from the sampler's


def paste_step(paste_at: float, steps: int, free_steps: int = 0) -> int:
    """The sampling step after which the pasted route places its instances (sample_pairs' given_at):
    paste_at of the steps, at least 1 and leaving at least one replaced step; 0 when paste_at is 0."""
    if not 0.0 <= paste_at < 1.0:
        raise ValueError(f"paste_at must be a share of the sampling steps in [0, 1), got {paste_at}")
    return 0 if paste_at == 0 else max(1, min(round(paste_at * steps), steps - free_steps - 1))


def donors(masks: np.ndarray, target: ClassTarget, items: np.ndarray | None = None) -> dict[int, list[np.ndarray]]:
    """By targeted class index, the items (default: the masks themselves) of the real masks
    (N, H, H) that hold that class."""
    items = masks if items is None else items
    return {c: [items[i] for i in np.flatnonzero((masks == c).any(axis=(1, 2)))] for c, _ in target.shares}


def paste_pool(images: np.ndarray, masks: np.ndarray, target: ClassTarget) -> dict[int, list[np.ndarray]]:
    """The pasted route's donors: by targeted class index, the real pairs (2, H, H) uint8, image over
    class ids, that hold that class. Built once per run: every pair draws from it."""
    return donors(masks, target, np.stack([images, masks], axis=1))


def pair_mask(
    seed: int, masks: np.ndarray, target: ClassTarget, max_pastes: int = MAX_PASTES, pool: dict | None = None
) -> np.ndarray:
    """The composed label map (H, H) of the pair drawn from `seed`: a real mask, chosen by the seed,
    with donors' regions of each targeted class pasted until the class covers its target share
    (core.compose). A function of (seed, masks, target) alone, so a pair can be rebuilt on its own.
    pool: donors(masks, target), when the caller keeps it."""
    rng = np.random.default_rng(derive_seed(seed, COMPOSE_STREAM))
    base = masks[int(rng.integers(len(masks)))]
    return compose_mask(
        base, donors(masks, target) if pool is None else pool, target.goals, rng, background=0, max_pastes=max_pastes
    )


def pair_paste(
    seed: int,
    images: np.ndarray,
    masks: np.ndarray,
    target: ClassTarget,
    max_pastes: int = MAX_PASTES,
    pool: dict | None = None,
    base: np.ndarray | None = None,
    by_component: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the pasted route gives the pair drawn from `seed`: (image uint8, class ids, given bool,
    each pixel's donor sea level float32), each (H, H): real instances of each targeted class, image
    and label, from the real pairs (images, masks: (N, H, H) uint8) moved and pasted until they cover
    the class's target share (core.compose.paste_instances). A function of its arguments alone, like
    pair_mask. pool: paste_pool(images, masks, target), when the caller keeps it. base (H, H) class
    ids: the drawn pair's layout so far (TargetConfig.paste_at), pasted onto its sea and counted towards
    the target. by_component: instances one at a time (TargetConfig.by_component)."""
    rng = np.random.default_rng(derive_seed(seed, COMPOSE_STREAM))
    return paste_instances(
        paste_pool(images, masks, target) if pool is None else pool, target.goals, rng, max_pastes, base, by_component
    )


def given_shares(
    route: str,
    seeds,
    images: np.ndarray,
    masks: np.ndarray,
    target: ClassTarget,
    max_pastes: int = MAX_PASTES,
    by_component: bool = TargetConfig.by_component,
) -> np.ndarray:
    """Pooled per-class shares (K,) of what `route` gives the pairs of `seeds`: the composed maps
    (conditioned), or the pasted pixels alone (pasted: what the model draws around them adds more;
    by_component as pair_paste's)."""
    k = len(target.classes)
    if route == "conditioned":
        pool = donors(masks, target)
        return class_shares(np.stack([pair_mask(s, masks, target, max_pastes, pool) for s in seeds]), k)
    pool = paste_pool(images, masks, target)
    pasted = [pair_paste(s, images, masks, target, max_pastes, pool, by_component=by_component) for s in seeds]
    counts = sum(np.bincount(ids[given].astype(np.int64), minlength=k)[:k] for _, ids, given, _ in pasted)
    return counts / (len(pasted) * masks[0].size)


def check_composable(
    route: str,
    images: np.ndarray,
    masks: np.ndarray,
    target: ClassTarget,
    max_pastes: int = MAX_PASTES,
    probe: int = 64,
    flag: str = "--class-target",
    by_component: bool = TargetConfig.by_component,
) -> np.ndarray:
    """Refuse (TargetError, naming `flag`) a target `route` (conditioned or pasted) cannot compose: a
    targeted class that no training mask holds, or what it gives `probe` seeds falling short of the
    target (pooled). Returns those pooled shares (K,)."""
    missing = [target.classes[c] for c, pool in donors(masks, target).items() if not pool]
    if missing:
        hint = "; use --target-route selection" if flag == "--class-target" else ""
        raise TargetError(
            f"{flag}: no training mask holds {', '.join(missing)}, so the {route} route has nothing to paste{hint}"
        )
    shares = given_shares(
        route, [derive_seed(i, 2) for i in range(probe)], images, masks, target, max_pastes, by_component
    )
    if not target.met(shares):
        what = "composed maps" if route == "conditioned" else "pasted instances"
        raise TargetError(
            f"{flag} {target.spec} cannot be reached by the {route} route ({max_pastes} pasted masks per class at most): {what} reach {', '.join(target.missed(shares))}"
        )
    return shares


# -- what a run that draws pairs given something gives them ------------------------------------------


def _array_hash(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return hashlib.sha256(array.tobytes() + str(array.shape).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GivenPairs:
    """What a batch of pairs is drawn given, as class ids and pixels (the writer turns it into
    diffusion/sample.py's given_* tensors)."""

    ids: (
        np.ndarray
    )  # (N, H, H) uint8 class ids: the composed maps (conditioned) or the pasted instances' labels (pasted)
    where: np.ndarray | None  # (N, H, H) bool: the pixels given (pasted); None: every pixel (conditioned)
    image: np.ndarray | None = None  # (N, H, H) uint8: the pasted instances' image (pasted)
    sea: np.ndarray | None = None  # (N, H, H) float32: each given pixel's donor sea level (pasted)


@dataclass(frozen=True, eq=False)
class Condition:
    """What each pair of a conditioned or pasted run is drawn given (module docstring), from the real
    training pairs: the ShardWriter's one argument for it, part of the set's identity (`identity`,
    hashed into its fingerprint) and of its dataset.json `target` record (`from_record` rebuilds it).
    The settings at which the conditioned route ignores them (sea, paste_at, by_component) are False
    or 0 there, as they were before the pasted route existed."""

    route: str  # conditioned | pasted
    target: ClassTarget
    masks: np.ndarray  # (N, H, H) uint8 class ids of the real training pairs
    images: np.ndarray | None = None  # (N, H, H) uint8 images of the real training pairs (pasted)
    max_pastes: int = MAX_PASTES
    free_steps: int = 0  # the last sampling steps run jointly
    resample: int = 1  # each replaced step taken this many times (RePaint)
    sea: bool = False  # pasted images moved to the drawn pair's sea level (diffusion/sample.py given_sea)
    paste_at: float = 0.0  # pasted: instances placed after this share of the steps, onto the layout's sea
    by_component: bool = False  # pasted: a donor's instances one at a time (core.compose.paste_instances)

    def __post_init__(self):
        if self.route not in DRAWN_ROUTES or (self.route == "pasted") != (self.images is not None):
            raise ValueError(
                f"a condition's route is one of {DRAWN_ROUTES}, with the training images for pasted only, got {self.route!r}"
            )

    @classmethod
    def from_config(cls, cfg: TargetConfig, target: ClassTarget, images: np.ndarray, masks: np.ndarray) -> "Condition":
        """The condition synthesis.target (cfg.route conditioned or pasted) gives the pairs of a run,
        from the real training pairs (images, masks), each (N, H, H) uint8."""
        settings = dict(max_pastes=cfg.max_pastes, free_steps=cfg.free_steps, resample=cfg.resample)
        if cfg.route == "pasted":
            return cls(
                "pasted",
                target,
                masks,
                images,
                sea=cfg.sea,
                paste_at=cfg.paste_at,
                by_component=cfg.by_component,
                **settings,
            )
        return cls(cfg.route, target, masks, **settings)

    @classmethod
    def from_record(cls, record: dict, target: ClassTarget, images: np.ndarray, masks: np.ndarray) -> "Condition":
        """The condition a set was drawn given, from its dataset.json `target` record (a key absent
        there was at the value it had before the key existed)."""
        return cls(
            record["route"],
            target,
            masks,
            images if record["route"] == "pasted" else None,
            int(record.get("max_pastes", MAX_PASTES)),
            int(record.get("free_steps", 0)),
            int(record.get("resample", 1)),
            bool(record.get("sea", False)),
            float(record.get("paste_at", 0.0)),
            bool(record.get("by_component", False)),
        )

    def identity(self) -> dict:
        """What of the condition makes the shards' bytes, for the fingerprint (synth/plan.py): the
        arrays by their hash. Settings at the values they had before they existed are left out, so
        those sets keep their fingerprints."""
        out: dict = {
            k: v for k, v, old in (("free_steps", self.free_steps, 0), ("resample", self.resample, 1)) if v != old
        }
        if self.route == "pasted":
            out.update(images=_array_hash(self.images), sea=bool(self.sea))
        out.update(
            {k: v for k, v in (("paste_at", float(self.paste_at)), ("by_component", bool(self.by_component))) if v}
        )
        return {
            **out,
            "route": self.route,
            "spec": self.target.spec,
            "training": [float(v) for v in self.target.training],
            "max_pastes": int(self.max_pastes),
            "masks": _array_hash(self.masks),
        }

    def record(self) -> dict:
        """Its settings in dataset.json's `target` record: what each pair was given, and how."""
        if self.route == "conditioned":
            given = {"label_maps": "real training masks + pasted real regions (synth/target.py pair_mask)"}
        else:
            given = {
                "pasted": "real training pairs' regions of the targeted classes, image and label (synth/target.py pair_paste)",
                "sea": self.sea,
                "paste_at": self.paste_at,
                "by_component": self.by_component,
            }
        return {"max_pastes": self.max_pastes, "free_steps": self.free_steps, "resample": self.resample, **given}

    def given_at(self, steps: int) -> int:
        """The sampling step after which what is given is placed (sample_pairs' given_at); 0: before sampling."""
        return paste_step(self.paste_at, steps, self.free_steps) if self.route == "pasted" else 0

    @cached_property
    def pool(self) -> dict[int, list[np.ndarray]]:
        """The donors every pair draws from (built once per process, on first use)."""
        return (
            paste_pool(self.images, self.masks, self.target)
            if self.route == "pasted"
            else donors(self.masks, self.target)
        )

    def given(self, seeds: Sequence[int], bases: np.ndarray | None = None) -> GivenPairs:
        """What the pairs of `seeds` are given: their composed maps (conditioned), or their pasted
        instances (pasted), onto the sea of bases (N, H, H) class ids (their layout so far) if given."""
        if self.route == "conditioned":
            return GivenPairs(
                np.stack([pair_mask(s, self.masks, self.target, self.max_pastes, self.pool) for s in seeds]), None
            )
        bases = [None] * len(seeds) if bases is None else bases
        pasted = (
            pair_paste(s, self.images, self.masks, self.target, self.max_pastes, self.pool, base, self.by_component)
            for s, base in zip(seeds, bases)
        )
        image, ids, where, level = (np.stack(a) for a in zip(*pasted))
        return GivenPairs(ids, where, image, level if self.sea else None)
