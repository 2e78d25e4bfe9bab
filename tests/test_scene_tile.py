"""The tile grid and the blending window (scene/tile.py): hand-checked properties of the pure maths."""

from __future__ import annotations

import numpy as np
import pytest

from dakter_scale.scene.tile import Blender, coverage, ramp, tile_starts


@pytest.mark.parametrize(
    "n,tile,overlap",
    [(1000, 256, 32), (257, 256, 32), (256, 256, 32), (100, 256, 32), (5000, 512, 64), (513, 64, 0), (700, 128, 127)],
)
def test_grid_covers_the_axis_with_at_least_the_overlap(n, tile, overlap):
    starts = tile_starts(n, tile, overlap)
    t = min(tile, n)
    assert starts[0] == 0 and starts[-1] == n - t
    gaps = np.diff(starts)
    assert np.all(gaps > 0) and np.all(gaps <= t - overlap)


def test_ramp_is_positive_symmetric_and_a_partition_of_unity_at_the_stride():
    t, v = 128, 32
    r = ramp(t, v)
    assert np.all(r > 0) and np.allclose(r, r[::-1]) and np.all(r[v:-v] == 1.0)
    # Tiles a stride t - v apart: the falling ramp of one plus the rising ramp of the next is exactly 1.
    assert np.allclose(r[t - v :] + r[:v], 1.0, atol=1e-12)
    s = coverage(3 * (t - v) + v, [0, t - v, 2 * (t - v)], r)
    assert np.allclose(s[v:-v], 1.0)


@pytest.mark.parametrize(
    "h,w,tile,overlap", [(300, 410, 128, 32), (128, 128, 128, 16), (90, 500, 64, 16), (257, 129, 64, 0)]
)
def test_normalised_weights_sum_to_one_and_blend_reproduces_a_global_field(h, w, tile, overlap):
    rng = np.random.default_rng(0)
    field = rng.random((3, h, w)).astype(np.float32)
    out = np.full((3, h, w), np.nan, dtype=np.float32)
    written = np.zeros((h, w), dtype=np.int32)

    def emit(y0, x0, block):
        out[:, y0 : y0 + block.shape[1], x0 : x0 + block.shape[2]] = block
        written[y0 : y0 + block.shape[1], x0 : x0 + block.shape[2]] += 1

    b = Blender(h, w, tile, overlap, 3, emit)
    total = np.zeros((h, w))
    for i, j, y0, x0 in b.tiles():
        total[y0 : y0 + b.th, x0 : x0 + b.tw] += b.weights(i, j)
        b.add(i, j, field[:, y0 : y0 + b.th, x0 : x0 + b.tw])
    assert np.allclose(total, 1.0, atol=1e-6)
    assert np.all(written == 1), "every pixel is emitted exactly once"
    # Each tile sees the same field, so the convex blend gives the field back.
    assert np.allclose(out, field, atol=1e-5)


def test_blender_carries_only_the_overlap_band():
    h, w, tile, overlap = 2000, 3000, 256, 32
    peak = 0
    b = Blender(h, w, tile, overlap, 2, lambda *a: None)
    tile_probs = np.zeros((2, b.th, b.tw), dtype=np.float32)
    for i, j, _, _ in b.tiles():
        b.add(i, j, tile_probs)
        peak = max(peak, b.carried_bytes)
    band = max(b.th - (b2 - b1) for b1, b2 in zip(b.ys, b.ys[1:]))
    assert peak <= 2 * 4 * (2 * band * w + tile * tile)  # two row bands (old and new) + the left carry
    assert peak < 2 * 4 * h * w / 10


def test_tiles_out_of_order_are_refused():
    b = Blender(100, 100, 64, 8, 1, lambda *a: None)
    with pytest.raises(AssertionError, match="row-major"):  # an internal invariant: the predictor's own order
        b.add(0, 1, np.zeros((1, 64, 64), dtype=np.float32))
