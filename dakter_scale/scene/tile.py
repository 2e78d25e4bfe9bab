"""The tile grid and the blending of overlapping tile probabilities, in bounded memory. numpy only.

Grid: along each axis of n pixels, tiles of side t (t = n when n < t) start at evenly spread
positions, the first at 0 and the last at n - t, at most t - overlap apart (so neighbours overlap by
at least ``overlap`` pixels).

Window: separable, w(y, x) = r(y) r(x) with the 1-D cosine-squared (Hann) ramp

    r(i) = min(1, sin^2(pi (i + 1/2) / (2 v)), sin^2(pi (t - i - 1/2) / (2 v)))      (v = overlap)

over the first and last v pixels of a tile and 1 in between. Two tiles a stride t - v apart have
ramps that sum to exactly 1 over their overlap (sin^2 + cos^2), and every ramp is > 0, so each
pixel's weights are normalised by their sum: S(y) = sum_i r(y - y_i) over the tiles covering y,
the same along x, and since the grid is a product of two 1-D grids the 2-D sum is S(y) S(x). The
blended probability sum_k w_k p_k / sum_k w_k is then a convex combination: probabilities stay
probabilities, and a tile's edge (where padding and missing context make it least reliable) weighs
least.

Memory (``Blender``): tiles arrive in row-major order; a block of the output is final as soon as no
later tile covers it. The blender keeps only the part of the current tile row that the next row
still covers (K x (t - stride) x W floats) and the part of the current tile the next tile covers
(K x t x (t - stride)): nothing grows with the scene's height, and with its width only through the
overlap band (K = 5, overlap 64, a 25,000-pixel-wide scene: 32 MB of float32).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start positions along an axis of n pixels (see the module docstring)."""
    assert n >= 1 and tile >= 1 and 0 <= overlap < tile
    t = min(tile, n)
    if t == n:
        return [0]
    count = math.ceil((n - overlap) / (t - overlap))
    count = max(count, 2)
    # Evenly spread; rounding keeps every gap <= tile - overlap because (n - t) / (count - 1) <= t - overlap.
    return [round(i * (n - t) / (count - 1)) for i in range(count)]


def ramp(t: int, overlap: int) -> np.ndarray:
    """The 1-D window r of a tile of side t (float64, > 0 everywhere, 1 in the middle)."""
    i = np.arange(t, dtype=np.float64)
    if overlap == 0:
        return np.ones(t)
    up = np.sin(np.pi * (i + 0.5) / (2 * overlap)) ** 2
    down = np.sin(np.pi * (t - i - 0.5) / (2 * overlap)) ** 2
    return np.minimum(1.0, np.minimum(np.where(i < overlap, up, 1.0), np.where(i >= t - overlap, down, 1.0)))


def coverage(n: int, starts: list[int], r: np.ndarray) -> np.ndarray:
    """S: the sum of the ramps of all tiles covering each of the n positions."""
    s = np.zeros(n, dtype=np.float64)
    for start in starts:
        s[start : start + len(r)] += r
    return s


class Blender:
    """Blends K-channel tile probabilities over an H x W scene, emitting finished blocks.

    ``tiles()`` gives (row, col, y0, x0) in the order ``add`` must receive them; ``add(row, col, p)``
    takes p (K, th, tw) float and calls ``emit(y0, x0, block)`` for each finished block (K, h, w) of
    blended probabilities. The emitted blocks tile the scene exactly once."""

    def __init__(
        self,
        height: int,
        width: int,
        tile: int,
        overlap: int,
        channels: int,
        emit: Callable[[int, int, np.ndarray], None],
    ):
        self.height, self.width, self.channels, self.emit = height, width, channels, emit
        self.th, self.tw = min(tile, height), min(tile, width)
        self.ys, self.xs = (
            tile_starts(height, tile, min(overlap, self.th - 1)),
            tile_starts(width, tile, min(overlap, self.tw - 1)),
        )
        self.ry, self.rx = ramp(self.th, min(overlap, self.th - 1)), ramp(self.tw, min(overlap, self.tw - 1))
        self.sy, self.sx = coverage(height, self.ys, self.ry), coverage(width, self.xs, self.rx)
        self.top: np.ndarray | None = None  # rows [ys[i], ys[i-1] + th) of the blend so far, all columns
        self.new_top: np.ndarray | None = None
        self.left: np.ndarray | None = None  # columns [xs[j], xs[j-1] + tw) of the current tile row
        self.expected = 0

    def tiles(self) -> Iterator[tuple[int, int, int, int]]:
        for i, y0 in enumerate(self.ys):
            for j, x0 in enumerate(self.xs):
                yield i, j, y0, x0

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def weights(self, i: int, j: int) -> np.ndarray:
        """The normalised window of tile (i, j): (th, tw) float32; over all tiles they sum to 1 at every pixel."""
        y0, x0 = self.ys[i], self.xs[j]
        wy = self.ry / self.sy[y0 : y0 + self.th]
        wx = self.rx / self.sx[x0 : x0 + self.tw]
        return (wy[:, None] * wx[None, :]).astype(np.float32)

    def add(self, i: int, j: int, probs: np.ndarray) -> None:
        assert i * len(self.xs) + j == self.expected, "tiles must arrive in row-major order"
        assert probs.shape == (self.channels, self.th, self.tw), probs.shape
        self.expected += 1
        y0, x0 = self.ys[i], self.xs[j]
        y1 = self.ys[i + 1] if i + 1 < len(self.ys) else self.height
        x1 = self.xs[j + 1] if j + 1 < len(self.xs) else self.width
        fh, fw = y1 - y0, x1 - x0
        if j == 0:
            self.left = None
            self.new_top = (
                np.zeros((self.channels, y0 + self.th - y1, self.width), dtype=np.float32)
                if i + 1 < len(self.ys)
                else None
            )
        canvas = np.multiply(
            probs, self.weights(i, j), dtype=np.float32
        )  # one new array, not a copy and then a product
        if self.top is not None:
            # Only this tile's own columns [x0, x1): the rest of the carried rows go to the next tile.
            canvas[:, : self.top.shape[1], :fw] += self.top[:, :, x0:x1]
        if self.left is not None:
            canvas[:, :, : self.left.shape[2]] += self.left
        self.emit(y0, x0, canvas[:, :fh, :fw])
        self.left = canvas[:, :, fw:].copy() if fw < self.tw else None
        if self.new_top is not None:
            self.new_top[:, :, x0:x1] = canvas[:, fh:, :fw]
        if j + 1 == len(self.xs):
            self.top, self.new_top = self.new_top, None

    @property
    def carried_bytes(self) -> int:
        return sum(a.nbytes for a in (self.top, self.new_top, self.left) if a is not None)
