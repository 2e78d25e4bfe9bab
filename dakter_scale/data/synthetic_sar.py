"""Deterministic Sentinel-1-like SAR oil-spill scene simulator: the toolkit's embedded default dataset.

Every scene is a pure function of ``(seed, height, width)``. It mimics the Oil Spill Detection (OSD)
dataset: C-band, VV, 8-bit dB-scaled images with a five-class mask (sea, oil, look-alike, ship,
land), in the conventions of data/osd.py (CLASSES, OSD_COLOURS, the dB window).

Physics model (levels and dampings are composed in dB, then converted to linear sigma0, where the
noise floor, ship side lobes and speckle are applied; the image is quantised from linear intensity)
---------------------------------------------------------------------------------------------------
* **Sea** -- wind-driven Bragg scattering. A smooth log-wind-speed field (scene mean 2.5..11 m/s,
  so some scenes calm, some windy, plus low-frequency variation) goes through a CMOD-like
  power law ``sigma0_dB = -16 + 17 log10(U / 5)`` and an incidence-angle gradient across range
  (the column axis; ~0.25 dB per degree over a few degrees of swath). A faint fine-scale texture
  stands for wind streaks and long waves. Sea sigma0 stays within about -24..-6 dB.
* **Oil (class 1)** -- mineral oil damps the capillary waves: 5.5..10 dB darker than the local
  sea (a few weathered slicks only 4..6 dB). Slicks are elongated: a curved centre line (quadratic
  + cubic bend + random meander) with a half-width that varies along it (lens, comet or a chain
  of fragments), a rough perturbed boundary, a darker core and a feathered rim. The mask is the
  core region. Some slicks are trails behind a ship (narrow at the ship, spreading behind it).
* **Look-alikes (class 2)** -- natural dark features, less dark (2..5 dB, a few up to 6.5 dB):
  broad irregular low-wind areas with diffuse edges, thin sinuous biogenic filament networks
  (bands of constant pixel width around the zero contours of a smooth noise field inside a patch;
  1 dB more contrast so that they stay visible), and now and then an elongated
  natural slick with the same shape model as oil -- deliberate ambiguity.
* **Ships (class 3)** -- bright (+15..25 dB) small elongated targets (>= 2 px) with a faint
  range/azimuth side-lobe cross; never on land.
* **Land (class 4)** -- entering from an edge or corner: a coastline from a ramp plus fractal
  noise, thresholded. Bright (-8..0 dB) with its own fine texture and brighter built-up patches.
  Present in about 40 % of scenes. Oil, look-alikes and ships are never on land.
* **Sensor** -- additive thermal noise floor (NESZ -30..-26 dB), then multiplicative Gamma speckle
  with L looks (L drawn per scene from {1, 2, 3, 4}; mean 1, shape L, scale 1/L).
* **Quantisation** -- ``dB = 10 log10(I)``, window [-35, +5] dB mapped linearly to 0..255 (uint8), like
  the 8-bit dB-scaled OSD JPEGs.

Mask priority where regions overlap: land > ship > oil > look-alike > sea. Object sizes are
fractions of ``min(height, width)`` (with pixel floors), so 32x32 .. 650x1250 scenes look alike.

Determinism: one ``np.random.Generator(np.random.PCG64(seed))`` per scene, no global RNG, and the
per-pixel maths uses only IEEE-exact operations (+, -, *, /, sqrt, comparisons, table look-ups via
``np.interp``, exact frexp/ldexp); dB<->linear conversions use tables built with scalar
Python arithmetic, so SIMD-dependent ``np.exp``/``np.log10``/``np.power`` never decide a pixel, and no
BLAS. Scalar transcendentals (``math``, the Generator's own samplers) come from the platform libm.
Golden digests in tests/test_synthetic_sar.py pin the dataset bit for bit.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dakter_scale.data.osd import CODE_STEP_DB as _CODE_STEP_DB
from dakter_scale.data.osd import DB_MIN, LAND, LOOKALIKE, OIL, SHIP, colour_mask

__all__ = [
    "simulate_scene",
    "scene_seed",
    "write_osd_layout",
    "write_sos_layout",
]

_SPLIT_CODES = {"train": 0, "test": 1}
_SATELLITE_CODES = {"palsar": 0, "sentinel": 1}

# ----------------------------------------------------------------------------------------------
# dB <-> linear conversions: exact binary exponent split (frexp/ldexp) + fine tables built with
# scalar Python arithmetic, so results are identical on every platform (no SIMD exp/log).
# ----------------------------------------------------------------------------------------------
_TABLE_N = 4096
_DB_PER_OCTAVE = 10.0 * math.log10(2.0)
_POW2 = np.array([2.0 ** (j / _TABLE_N) for j in range(_TABLE_N + 1)])  # 2**f, f in [0, 1]
_POW2_SLOPE = np.diff(_POW2)
_LOG_MANT = np.array([10.0 * math.log10(0.5 + j / (2 * _TABLE_N)) for j in range(_TABLE_N + 1)])  # m in [0.5, 1]
_LOG_MANT_SLOPE = np.diff(_LOG_MANT)


def _db_to_linear(db: np.ndarray) -> np.ndarray:
    """10 ** (db / 10) = 2 ** k * 2 ** f with f interpolated in a table (relative error < 1e-8)."""
    x = np.asarray(db, dtype=np.float64) * (1.0 / _DB_PER_OCTAVE)
    k = np.floor(x)
    x -= k
    x *= _TABLE_N  # table position of the fractional octave
    i = x.astype(np.intp)
    x -= i
    x *= _POW2_SLOPE.take(i)
    x += _POW2.take(i)
    return np.ldexp(x, k.astype(np.int32), out=x)


def _linear_to_db(intensity: np.ndarray) -> np.ndarray:
    """10 log10(I) from I = m * 2 ** e (exact split) and a table of 10 log10(m) (error < 1e-7 dB)."""
    x, e = np.frexp(np.maximum(intensity, 1e-30))
    x -= 0.5
    x *= 2 * _TABLE_N  # table position of the mantissa
    i = x.astype(np.intp)
    x -= i
    x *= _LOG_MANT_SLOPE.take(i)
    x += _LOG_MANT.take(i)
    x += e * _DB_PER_OCTAVE
    return x


def _to_uint8(intensity: np.ndarray) -> np.ndarray:
    """Linear intensity -> 8-bit code of 10 log10(I) in the [-35, +5] dB window (rounded, clipped)."""
    code = np.floor((_linear_to_db(intensity) - DB_MIN) * (1.0 / _CODE_STEP_DB) + 0.5)
    return np.clip(code, 0, 255).astype(np.uint8)


def _scalar_pow(x: np.ndarray, p: float) -> np.ndarray:
    """x ** p with scalar math.pow, for small 1-D tables: numpy's array power may be SIMD-dispatched
    and differ in the last bit between CPUs."""
    return np.array([math.pow(float(v), p) for v in x])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ----------------------------------------------------------------------------------------------
# Smooth random fields
# ----------------------------------------------------------------------------------------------
def _bspline_weights(n: int, cell: float, phase: float):
    """Cubic B-spline weights/indices for n output samples on a knot grid of spacing `cell` px.

    Weights are divided by sqrt(sum w^2) so that interpolating iid N(0, 1) knots gives exactly unit
    variance at every sample. Returns (index of first knot, (4, n) weights, number of knots)."""
    p = (np.arange(n) + 0.5) / cell + phase
    i = np.floor(p).astype(np.intp)
    t = p - i
    t2 = t * t
    t3 = t2 * t
    u = 1.0 - t
    w = np.stack([u * u * u, 3.0 * t3 - 6.0 * t2 + 4.0, -3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0, t3]) / 6.0
    w /= np.sqrt((w * w).sum(axis=0))
    return i, w, int(i[-1]) + 4


class _Noise:
    """A smooth, stationary, unit-variance Gaussian field with correlation length ~`cell` pixels
    (a scalar, or a (rows, columns) pair for a field stretched along one image axis).

    Knots are drawn once (iid N(0, 1) on a coarse grid); any window of the h x w scene can then be
    evaluated by separable cubic B-spline interpolation, so sub-windows cost only their own area."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, cell: float | tuple[float, float]):
        cell_y, cell_x = (cell, cell) if np.isscalar(cell) else cell  # (rows, columns): anisotropic
        py, px = rng.random(2)
        self._iy, self._wy, ny = _bspline_weights(h, max(float(cell_y), 1.0), py)
        self._ix, self._wx, nx = _bspline_weights(w, max(float(cell_x), 1.0), px)
        self._knots = rng.standard_normal((ny, nx))

    def __call__(self, y0: int = 0, y1: int | None = None, x0: int = 0, x1: int | None = None) -> np.ndarray:
        iy, wy = self._iy[y0:y1], self._wy[:, y0:y1]
        ix, wx = self._ix[x0:x1], self._wx[:, x0:x1]
        k = self._knots[:, ix[0] : ix[-1] + 4] if len(ix) else self._knots[:, :0]
        ix = ix - (ix[0] if len(ix) else 0)
        rows = (
            wy[0, :, None] * k[iy]
            + wy[1, :, None] * k[iy + 1]
            + wy[2, :, None] * k[iy + 2]
            + wy[3, :, None] * k[iy + 3]
        )
        out = rows.take(ix, axis=1)
        out *= wx[0]
        for j in (1, 2, 3):  # in place, same summation order as the plain expression
            term = rows.take(ix + j, axis=1)
            term *= wx[j]
            out += term
        return out


def _fractal_noise(
    rng: np.random.Generator,
    h: int,
    w: int,
    cell: float,
    octaves: int = 3,
    gain: float = 0.5,
    stretch: tuple[float, float] = (1.0, 1.0),
    window: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Sum of `octaves` smooth fields with halving cell size and amplitude `gain` ** k; unit variance.
    `stretch` multiplies the (rows, columns) correlation lengths; `window` = (y0, y1, x0, x1) evaluates
    only that part of the h x w field (same random draws either way)."""
    window = window or (0, h, 0, w)
    total = None
    norm = 0.0
    for k in range(octaves):
        amp = gain**k
        octave = amp * _Noise(rng, h, w, (cell * stretch[0] / 2**k, cell * stretch[1] / 2**k))(*window)
        total = octave if total is None else total + octave
        norm += amp * amp
    return total / math.sqrt(norm)


def _smooth_curve(rng: np.random.Generator, n_knots: int, n: int = 257) -> np.ndarray:
    """n samples over [-1, 1] of a smooth unit-variance 1-D random function with ~n_knots wiggles."""
    i, w, nk = _bspline_weights(n, (n - 1) / max(n_knots, 1), rng.random())
    k = rng.standard_normal(nk)
    return w[0] * k[i] + w[1] * k[i + 1] + w[2] * k[i + 2] + w[3] * k[i + 3]


# ----------------------------------------------------------------------------------------------
# Sea
# ----------------------------------------------------------------------------------------------
def _sea_db(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Wind-driven sea sigma0 (dB): CMOD-like log-wind law + incidence gradient across range (columns)."""
    s = min(h, w)
    u0 = rng.uniform(2.5, 11.0)  # scene-mean wind speed, m/s
    log_wind_std = rng.uniform(0.04, 0.12)  # low-frequency wind variability (log10 units)
    log_wind = math.log10(u0) + log_wind_std * _fractal_noise(rng, h, w, cell=0.6 * s, octaves=2)
    sea = -16.0 + 17.0 * (log_wind - math.log10(5.0))
    # incidence angle across range: theta_near .. theta_near + span, left->right or right->left
    theta_near = rng.uniform(30.0, 40.0)
    span = rng.uniform(2.0, 8.0)
    ramp = (np.arange(w) + 0.5) / w
    if rng.random() < 0.5:
        ramp = ramp[::-1]
    sea = sea - 0.25 * (theta_near + span * ramp - 35.0)[None, :]
    # faint wind streaks / long-wave texture
    sea = sea + rng.uniform(0.2, 0.6) * _Noise(rng, h, w, cell=max(2.0, s / 24))()
    return np.clip(sea, -24.0, -6.0)


# ----------------------------------------------------------------------------------------------
# Land
# ----------------------------------------------------------------------------------------------
def _land(rng: np.random.Generator, h: int, w: int, probability: float = 0.4):
    """Land entering from an edge/corner: returns (mask bool (h, w), land sigma0 dB) or (None, None)."""
    if rng.random() >= probability:
        return None, None
    s = min(h, w)
    # coastline: ramp along a random direction, perturbed by fractal noise, thresholded
    phi = rng.uniform(0.0, 2.0 * math.pi)
    if rng.random() < 0.6:  # most coasts roughly parallel to a scene edge
        phi = round(phi / (math.pi / 2)) * (math.pi / 2) + rng.uniform(-0.3, 0.3)
    c, sn = math.cos(phi), math.sin(phi)
    proj = c * (np.arange(w) + 0.5)[None, :] + sn * (np.arange(h) + 0.5)[:, None]
    corners = [c * x + sn * y for x in (0, w) for y in (0, h)]
    u = (proj - min(corners)) / (max(corners) - min(corners))
    cover = rng.uniform(0.12, 0.4)
    rough = rng.uniform(0.05, 0.12)
    mask = u + rough * _fractal_noise(rng, h, w, cell=0.35 * s, octaves=3, gain=0.55) < cover
    if not mask.any():
        return None, None
    # bright textured terrain: base level + mid-scale relief + fine texture + built-up patches,
    # evaluated on the bounding box of the land only
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    win = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    relief = _Noise(rng, h, w, cell=max(2.0, s / 10))(*win)
    fine = _Noise(rng, h, w, cell=max(1.0, s / 60))(*win)
    land_db = np.zeros((h, w))
    texture = rng.uniform(-6.5, -2.5) + 1.8 * relief + 1.6 * fine + 5.0 * _smoothstep((relief - 1.2) / 0.6)
    land_db[win[0] : win[1], win[2] : win[3]] = np.clip(texture, -14.0, 4.0)
    return mask, land_db


# ----------------------------------------------------------------------------------------------
# Elongated slicks (oil, and natural slicks among the look-alikes)
# ----------------------------------------------------------------------------------------------
def _width_profile(rng: np.random.Generator, t: np.ndarray, kind: str) -> np.ndarray:
    """Relative half-width (0..~1) along the slick axis t in [-1, 1]."""
    if kind == "comet":  # narrow at t = -1 (source, e.g. a ship), spreading towards t = +1
        t8 = np.square(np.square(t * t))
        prof = _scalar_pow((t + 1.0) / 2.0, 0.6) * np.sqrt(np.clip(1.0 - t8, 0.0, None))
    elif kind == "fragments":  # a chain of pieces along one line
        n = int(rng.integers(2, 5))
        centres = np.linspace(-1.0, 1.0, 2 * n + 1)[1::2] + rng.uniform(-0.3, 0.3, n) / n
        half = rng.uniform(0.35, 0.8, n) / n
        prof = np.zeros_like(t)
        for c0, hw in zip(centres, half):
            z = (t - c0) / hw
            prof = np.maximum(prof, np.sqrt(np.clip(1.0 - z * z, 0.0, None)))
    else:  # "lens": blunt or pointed ends
        p = rng.uniform(1.5, 4.0)
        prof = np.sqrt(np.clip(1.0 - _scalar_pow(np.abs(t), p), 0.0, None))
    wobble = np.clip(1.0 + rng.uniform(0.15, 0.45) * _smooth_curve(rng, int(rng.integers(3, 8)), len(t)), 0.25, 2.0)
    return prof * wobble


def _slick(
    rng: np.random.Generator,
    h: int,
    w: int,
    cy: float,
    cx: float,
    angle: float,
    length: float,
    half_width: float,
    kind: str,
    edge_noise: _Noise,
):
    """Normalised depth of one elongated slick in its bounding box.

    Depth is 1 on the (curved) centre line, 0 on the boundary, negative outside; the boundary is
    roughened with `edge_noise`. Returns ((y0, y1, x0, x1), depth) or None when off-scene."""
    t = np.linspace(-1.0, 1.0, 257)
    bend = length * (rng.normal(0.0, 0.12) * t * t + rng.normal(0.0, 0.06) * t * t * t)
    meander = rng.uniform(0.3, 1.2) * half_width * _smooth_curve(rng, int(rng.integers(2, 6)), len(t))
    centre = bend + meander
    width = half_width * _width_profile(rng, t, kind)
    rough = rng.uniform(0.1, 0.3)
    ca, sa = math.cos(angle), math.sin(angle)
    ext = float(np.abs(centre).max() + width.max()) + 2.0
    half_len = length / 2.0 + 1.0
    xs = [cx + a * ca - b * sa for a in (-half_len, half_len) for b in (-ext, ext)]
    ys = [cy + a * sa + b * ca for a in (-half_len, half_len) for b in (-ext, ext)]
    x0, x1 = max(0, int(min(xs))), min(w, int(max(xs)) + 2)
    y0, y1 = max(0, int(min(ys))), min(h, int(max(ys)) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
    a = (dx * ca + dy * sa) * (2.0 / length)
    b = dy * ca - dx * sa
    ww = np.interp(a, t, width, left=0.0, right=0.0)
    depth = 1.0 - np.abs(b - np.interp(a, t, centre)) / np.maximum(ww, 0.05)
    depth = depth + rough * edge_noise(y0, y1, x0, x1)
    return (y0, y1, x0, x1), depth


def _stamp_slick(damping: np.ndarray, mask: np.ndarray, placed, strength_db: float, inner: _Noise) -> None:
    """Burn a slick's core into `mask` and its feathered, darker-cored damping into `damping` (max)."""
    if placed is None:
        return
    (y0, y1, x0, x1), depth = placed
    feather = 0.2
    d = strength_db * _smoothstep((depth + feather) / (2.0 * feather))
    d = d * (0.8 + 0.2 * np.clip(depth / 0.5, 0.0, 1.0)) * (1.0 + 0.08 * inner(y0, y1, x0, x1))
    np.maximum(damping[y0:y1, x0:x1], d, out=damping[y0:y1, x0:x1])
    mask[y0:y1, x0:x1] |= depth > 0.0


def _oil(rng: np.random.Generator, h: int, w: int, ships: list, probability: float = 0.72):
    """Oil slicks (free-floating, fragmented, and trails behind ships): (damping dB, core mask)."""
    s = min(h, w)
    damping = np.zeros((h, w))
    mask = np.zeros((h, w), dtype=bool)
    free_slicks = rng.random() < probability
    trail = bool(ships) and rng.random() < 0.4  # illegal discharge behind one ship
    if not (free_slicks or trail):
        return damping, mask
    edge, inner = _Noise(rng, h, w, cell=max(1.5, s / 25)), _Noise(rng, h, w, cell=max(2.0, s / 15))

    def strength() -> float:
        return rng.uniform(4.0, 6.0) if rng.random() < 0.1 else rng.uniform(5.5, 10.0)

    if free_slicks:
        for _ in range(int(rng.choice([1, 2, 2, 3]))):
            kind = str(rng.choice(["lens", "lens", "comet", "fragments"]))
            length = s * rng.uniform(0.3, 0.9)
            half_width = max(1.0, s * rng.uniform(0.025, 0.07) * (0.6 if kind == "fragments" else 1.0))
            placed = _slick(
                rng,
                h,
                w,
                rng.uniform(0.1, 0.9) * h,
                rng.uniform(0.1, 0.9) * w,
                rng.uniform(0.0, math.pi),
                length,
                half_width,
                kind,
                edge,
            )
            _stamp_slick(damping, mask, placed, strength(), inner)
    if trail:  # narrow at the ship, spreading behind it
        cy, cx, heading, ship_len, _, _ = ships[int(rng.integers(len(ships)))]
        length = s * rng.uniform(0.25, 0.7)
        back = heading + math.pi
        off = length / 2.0 + ship_len / 2.0
        placed = _slick(
            rng,
            h,
            w,
            cy + off * math.sin(back),
            cx + off * math.cos(back),
            back,
            length,
            max(1.0, s * rng.uniform(0.015, 0.04)),
            "comet",
            edge,
        )
        _stamp_slick(damping, mask, placed, strength(), inner)
    return damping, mask


# ----------------------------------------------------------------------------------------------
# Look-alikes
# ----------------------------------------------------------------------------------------------
def _blob(rng: np.random.Generator, h: int, w: int, radius: float, aspect: float, reach: float):
    """Random elliptical bump at a random position: returns (window, r2) where r2 is the squared
    normalised elliptical distance on the window (y0, y1, x0, x1) covering r <= reach."""
    cy, cx = rng.uniform(0.0, h), rng.uniform(0.0, w)
    ang = rng.uniform(0.0, math.pi)
    ca, sa = math.cos(ang), math.sin(ang)
    ra, rb = radius * aspect, radius
    ey = reach * math.sqrt((ra * sa) ** 2 + (rb * ca) ** 2) + 1.0  # half extents of the rotated ellipse
    ex = reach * math.sqrt((ra * ca) ** 2 + (rb * sa) ** 2) + 1.0
    y0, y1 = max(0, int(cy - ey)), min(h, int(cy + ey) + 1)
    x0, x1 = max(0, int(cx - ex)), min(w, int(cx + ex) + 1)
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
    a = (dx * ca + dy * sa) / ra
    b = (dy * ca - dx * sa) / rb
    return (y0, y1, x0, x1), a * a + b * b


def _low_wind_area(rng: np.random.Generator, h: int, w: int, strength_db: float):
    """Broad irregular low-wind patch with diffuse edges: (window, damping dB, core mask) on the window."""
    s = min(h, w)
    win, r2 = _blob(rng, h, w, s * rng.uniform(0.12, 0.3), rng.uniform(1.0, 1.8), reach=1.8)
    field = 1.0 - r2 + rng.uniform(0.4, 0.7) * _fractal_noise(rng, h, w, 0.15 * s, octaves=3, gain=0.6, window=win)
    field = field - 10.0 * _smoothstep((r2 - 2.25) / 0.9)  # fade out before the window edge (r = 1.5..1.8)
    level, feather = rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.3)
    return win, strength_db * _smoothstep((field - level + feather) / (2.0 * feather)), field > level


def _filaments(rng: np.random.Generator, h: int, w: int, strength_db: float):
    """Thin sinuous biogenic films: a band around the zero contours of a smooth noise field n, inside a
    patch. The distance to the contour is |n| / |grad n|, so lines keep their pixel width at any
    scale. Isotropic noise gives eddy-like loops, stretched noise streaks along one image axis.
    Returns (window, damping dB, core mask) on the window."""
    s = min(h, w)
    win, r2 = _blob(rng, h, w, s * rng.uniform(0.2, 0.4), rng.uniform(1.0, 2.0), reach=1.5)
    patch = 1.0 - r2 + 0.3 * _Noise(rng, h, w, cell=0.15 * s)(*win)
    patch = np.clip(patch / 0.3, 0.0, 1.0) * (1.0 - _smoothstep((r2 - 1.44) / 0.81))  # zero for r >= 1.5
    stretch = [1.0, 1.0]
    if rng.random() < 0.5:
        stretch[int(rng.integers(2))] = rng.uniform(1.5, 2.5)
    cell = max(6.0, s * rng.uniform(0.06, 0.12))
    n = _fractal_noise(rng, h, w, cell, octaves=2, gain=0.4, stretch=(stretch[0], stretch[1]), window=win)
    p = np.pad(n, 1, mode="edge")
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) * 0.5
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) * 0.5
    dist = np.abs(n) / (np.sqrt(gx * gx + gy * gy) + 1e-6)  # px to the zero contour
    half_width = max(0.6, s * rng.uniform(0.003, 0.008)) * patch
    d = strength_db * _smoothstep((half_width + 0.75 - dist) / 1.5) * (patch > 0.0)
    return win, d, dist < half_width


def _lookalikes(rng: np.random.Generator, h: int, w: int, probability: float = 0.72):
    """Low-wind areas, biogenic filament networks and natural elongated slicks: (damping dB, mask)."""
    s = min(h, w)
    damping = np.zeros((h, w))
    mask = np.zeros((h, w), dtype=bool)
    if rng.random() >= probability:
        return damping, mask

    def strength() -> float:
        return rng.uniform(4.5, 6.5) if rng.random() < 0.1 else rng.uniform(2.0, 5.0)

    for _ in range(int(rng.choice([1, 1, 2, 2, 3]))):
        kind = rng.random()
        if kind < 0.45:
            (y0, y1, x0, x1), d, core = _low_wind_area(rng, h, w, strength())
        elif kind < 0.8:  # thin filaments need a little more contrast to show
            (y0, y1, x0, x1), d, core = _filaments(rng, h, w, strength() + 1.0)
        else:  # natural elongated slick: same shape model as oil, weaker damping
            edge = _Noise(rng, h, w, cell=max(1.5, s / 25))
            placed = _slick(
                rng,
                h,
                w,
                rng.uniform(0.1, 0.9) * h,
                rng.uniform(0.1, 0.9) * w,
                rng.uniform(0.0, math.pi),
                s * rng.uniform(0.3, 0.8),
                max(1.0, s * rng.uniform(0.02, 0.05)),
                "lens",
                edge,
            )
            _stamp_slick(damping, mask, placed, strength(), _Noise(rng, h, w, cell=max(2.0, s / 15)))
            continue
        np.maximum(damping[y0:y1, x0:x1], d, out=damping[y0:y1, x0:x1])
        mask[y0:y1, x0:x1] |= core
    return damping, mask


# ----------------------------------------------------------------------------------------------
# Ships
# ----------------------------------------------------------------------------------------------
def _place_ships(rng: np.random.Generator, h: int, w: int, land, probability: float = 0.5) -> list:
    """Ship list [(cy, cx, heading, length, width, contrast_dB)], centres on sea only."""
    if rng.random() >= probability:
        return []
    s = min(h, w)
    ships = []
    for _ in range(int(rng.integers(1, 6))):
        for _attempt in range(10):
            cy, cx = rng.uniform(0.05, 0.95) * h, rng.uniform(0.05, 0.95) * w
            if land is None or not land[int(cy), int(cx)]:
                break
        else:
            continue
        length = max(2.5, s * rng.uniform(0.035, 0.08))
        width = max(1.2, length * rng.uniform(0.25, 0.45))
        ships.append((cy, cx, rng.uniform(0.0, 2.0 * math.pi), length, width, rng.uniform(15.0, 25.0)))
    return ships


def _render_ships(ships: list, sea_db: np.ndarray, land) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ship backscatter (dB, -inf off-ship), ship mask, and linear side-lobe cross intensity."""
    h, w = sea_db.shape
    ship_db = np.full((h, w), -np.inf)
    mask = np.zeros((h, w), dtype=bool)
    lobes = np.zeros((h, w))
    for cy, cx, heading, length, width, contrast in ships:
        r = length / 2.0 + 1.0
        y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 2)
        dx = (np.arange(x0, x1) + 0.5 - cx)[None, :]
        dy = (np.arange(y0, y1) + 0.5 - cy)[:, None]
        ca, sa = math.cos(heading), math.sin(heading)
        a = (dx * ca + dy * sa) / (length / 2.0 + 0.5)
        b = (dy * ca - dx * sa) / (width / 2.0 + 0.5)
        rr = a * a + b * b
        body = rr <= 1.0
        body[min(int(cy), h - 1) - y0, min(int(cx), w - 1) - x0] = True  # never vanish
        peak = float(sea_db[min(int(cy), h - 1), min(int(cx), w - 1)]) + contrast
        level = np.where(body, peak - 6.0 * np.clip(rr, 0.0, 1.0), -np.inf)
        np.maximum(ship_db[y0:y1, x0:x1], level, out=ship_db[y0:y1, x0:x1])
        mask[y0:y1, x0:x1] |= body
        # side lobes: a faint cross along range (columns) and azimuth (rows) through the ship
        lobe_len = int(2 * length) + 2
        iy, ix = min(int(cy), h - 1), min(int(cx), w - 1)
        off = np.arange(-lobe_len, lobe_len + 1)
        lobe = np.array([10.0 ** ((peak - 16.0 - 14.0 * abs(float(o)) / lobe_len) / 10.0) for o in off])
        keep = (ix + off >= 0) & (ix + off < w)
        np.maximum(lobes[iy, ix + off[keep]], lobe[keep], out=lobes[iy, ix + off[keep]])
        keep = (iy + off >= 0) & (iy + off < h)
        np.maximum(lobes[iy + off[keep], ix], lobe[keep], out=lobes[iy + off[keep], ix])
    if land is not None:
        mask &= ~land
        ship_db[land] = -np.inf
        lobes[land] = 0.0
    return ship_db, mask, lobes


# ----------------------------------------------------------------------------------------------
# Sensor
# ----------------------------------------------------------------------------------------------
def _speckle(rng: np.random.Generator, sigma0: np.ndarray, looks: int) -> np.ndarray:
    """Fully developed multiplicative speckle: I = sigma0 * G, G ~ Gamma(shape=L, scale=1/L)."""
    return sigma0 * (rng.standard_gamma(float(looks), size=sigma0.shape) / looks)


def _simulate(rng: np.random.Generator, h: int, w: int, looks: int | None = None) -> dict:
    """Full scene: returns dict(image, mask, sigma0 (speckle-free linear), looks)."""
    if h < 1 or w < 1:
        raise ValueError(f"scene size must be positive, got {h}x{w}")
    looks = int(rng.integers(1, 5)) if looks is None else int(looks)
    sea_db = _sea_db(rng, h, w)
    land, land_db = _land(rng, h, w)
    ships = _place_ships(rng, h, w, land)
    la_damp, la_mask = _lookalikes(rng, h, w)
    oil_damp, oil_mask = _oil(rng, h, w, ships)
    ship_db, ship_mask, lobes = _render_ships(ships, sea_db, land)

    db = sea_db - np.maximum(la_damp, oil_damp)
    db = np.maximum(db, ship_db)
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[la_mask] = LOOKALIKE
    mask[oil_mask] = OIL
    mask[ship_mask] = SHIP
    if land is not None:
        db[land] = land_db[land]
        mask[land] = LAND
    nesz = 10.0 ** (rng.uniform(-30.0, -26.0) / 10.0)
    sigma0 = _db_to_linear(db) + lobes + nesz
    image = _to_uint8(_speckle(rng, sigma0, looks))
    return {"image": image, "mask": mask, "sigma0": sigma0, "looks": looks}


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------
def simulate_scene(seed: int, height: int = 128, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image uint8 (H, W), mask uint8 (H, W) with class ids 0..4). Deterministic from seed:
    same seed and size -> byte-identical arrays, on any machine (one PCG64 Generator per scene, no
    global RNG, IEEE-exact per-pixel arithmetic)."""
    out = _simulate(np.random.Generator(np.random.PCG64(int(seed))), int(height), int(width))
    return out["image"], out["mask"]


def _stream_seed(entropy: list[int], low_bits: int, n_low: int) -> int:
    """64-bit seed from a SeedSequence, with its `n_low` lowest bits replaced by `low_bits`."""
    state = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
    return (state >> n_low << n_low) | low_bits


def scene_seed(base_seed: int, split: str, index: int) -> int:
    """Seed of scene `index` in a split ('train' or 'test'). Independent streams per split via
    np.random.SeedSequence([base_seed, split_code, index]); the split code is also written into the
    lowest bit of the 64-bit seed, so train and test scenes can never share a seed."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    code = _SPLIT_CODES[split]
    return _stream_seed([int(base_seed), code, int(index)], code, 1)


def _satellite_seed(base_seed: int, split: str, satellite: str, index: int) -> int:
    """Seed for the SOS layout: one stream per (split, satellite); low two bits hold both codes."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    code = 2 * _SPLIT_CODES[split] + _SATELLITE_CODES[satellite]
    return _stream_seed([int(base_seed), _SPLIT_CODES[split], int(index), 1 + _SATELLITE_CODES[satellite]], code, 2)


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="scene")


def write_osd_layout(
    root, n_train: int, n_test: int, height: int = 650, width: int = 1250, seed: int = 0, progress: bool = True
) -> None:
    """Write scenes in the OSD dataset layout:
       root/{train,test}/images/{i:05d}.jpg   3-channel grayscale JPEG (same gray value in R, G, B), quality 95
       root/{train,test}/labels/{i:05d}.png   RGB colour mask using OSD_COLOURS
       root/{train,test}/labels_1D/{i:05d}.png  single-channel class-index PNG (values 0..4)
    using scene_seed(seed, split, i)."""
    from PIL import Image

    root = Path(root)
    bar = _progress(n_train + n_test, progress, "synthetic OSD")
    try:
        for split, n in (("train", n_train), ("test", n_test)):
            dirs = {k: root / split / k for k in ("images", "labels", "labels_1D")}
            for d in dirs.values():
                d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                image, mask = simulate_scene(scene_seed(seed, split, i), height, width)
                Image.fromarray(np.repeat(image[:, :, None], 3, axis=2)).save(
                    dirs["images"] / f"{i:05d}.jpg", quality=95
                )
                Image.fromarray(colour_mask(mask)).save(dirs["labels"] / f"{i:05d}.png")
                Image.fromarray(mask).save(dirs["labels_1D"] / f"{i:05d}.png")
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def write_sos_layout(root, n_train: int, n_test: int, size: int = 256, seed: int = 0, progress: bool = True) -> None:
    """Write binary (oil vs background) scenes in the SOS layout:
       root/{train,test}/{palsar,sentinel}/{i}_sat.jpg  (grayscale JPEG, mode L)
       root/{train,test}/{palsar,sentinel}/{i}_mask.png (0 = background, 255 = oil; single-channel)
    Each count is split half/half (palsar gets n // 2, sentinel the rest), one seed stream per
    (split, satellite). Oil = class 1 of the simulated scene; everything else is background."""
    from PIL import Image

    root = Path(root)
    bar = _progress(n_train + n_test, progress, "synthetic SOS")
    try:
        for split, n in (("train", n_train), ("test", n_test)):
            for satellite, m in (("palsar", n // 2), ("sentinel", n - n // 2)):
                d = root / split / satellite
                d.mkdir(parents=True, exist_ok=True)
                for i in range(m):
                    image, mask = simulate_scene(_satellite_seed(seed, split, satellite, i), size, size)
                    Image.fromarray(image).save(d / f"{i}_sat.jpg", quality=95)
                    Image.fromarray(np.where(mask == OIL, 255, 0).astype(np.uint8)).save(d / f"{i}_mask.png")
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
