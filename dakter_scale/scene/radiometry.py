"""A student sees scenes the way it saw its training data: the radiometric convention and the scale.

Conventions a student folder records (``student.json`` "radiometry", written by student/train.py from
the training source, ``data.real.Source.convention``):

- ``sigma0_db8``: 8-bit codes of sigma-nought in dB over a known window [db_min, db_max]
  (code = round((dB - db_min) * 255 / (db_max - db_min)), clipped): the built-in simulator's
  convention, window ``osd.DB_MIN, DB_MAX`` = [-35, +5] dB.
- ``db8``: 8-bit dB-scaled codes as delivered, window unknown (the OSD / SOS JPEGs).

What a scene's pixels are (``read.Scene.radiometry``): ``dn`` (uint16 digital numbers, with a
sigma-nought LUT: sigma0 = DN^2 / A^2, bilinear in (line, pixel) between the LUT's vectors), ``sigma0``
(linear), ``sigma0_db``, ``db8`` (8-bit codes: taken to be in the student's window; that cannot be
checked from the pixels, so the record says "assumed").

``plan_conversion`` decides the steps or refuses, naming what differs; ``--db-window`` picks the window
(the default is the student's) and ``--allow-radiometry-mismatch`` accepts an unconvertible pair
explicitly. Pure numpy: the tables of the 8-bit window come from data.osd, the one owner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dakter_scale.data.osd import DB_MAX, DB_MIN
from dakter_scale.errors import UserError

KINDS = ("sigma0_db8", "db8")
SAME_SCALE = 0.01  # spacings closer than 1 % are the same: resampling by less would only blur
SCENE_KINDS = ("dn", "sigma0", "sigma0_db", "db8")


class RadiometryError(UserError, ValueError):
    """A scene whose radiometry cannot be brought to the student's; the message says what differs."""


def default_convention(info: dict) -> dict:
    """A student folder's convention; folders written before it was recorded get the one their
    training data had: the simulator's window for ``synthetic:`` data, 8-bit as delivered otherwise."""
    conv = info.get("radiometry")
    if conv is None:
        real = str(info.get("real") or "")
        return (
            {"kind": "sigma0_db8", "db_min": DB_MIN, "db_max": DB_MAX}
            if real.startswith("synthetic")
            else {"kind": "db8"}
        )
    if not isinstance(conv, dict) or conv.get("kind") not in KINDS:
        raise RadiometryError(
            f"student.json: unknown radiometric convention {conv!r}; expected one of {', '.join(KINDS)}"
        )
    if conv["kind"] == "sigma0_db8":
        lo, hi = conv.get("db_min"), conv.get("db_max")
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
            raise RadiometryError(f"student.json: radiometry sigma0_db8 needs db_min < db_max, got {lo!r}, {hi!r}")
    return dict(conv)


@dataclass(frozen=True)
class Conversion:
    """How scene pixels become the student's 8-bit codes."""

    scene: str  # dn | sigma0 | sigma0_db | db8
    student: dict
    window: tuple[float, float] | None  # the dB window of the codes (None: 8-bit input passed through)
    steps: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict:
        return {
            "scene": self.scene,
            "student": self.student,
            "window_db": list(self.window) if self.window else None,
            "steps": list(self.steps),
            "notes": list(self.notes),
        }


def plan_conversion(
    scene: str,
    calibrated: bool,
    student: dict,
    db_window: tuple[float, float] | None = None,
    allow_mismatch: bool = False,
) -> Conversion:
    """The steps from a scene's radiometry to the student's convention, or a RadiometryError saying
    what differs. ``calibrated``: a ``dn`` scene has a sigma-nought LUT."""
    if scene not in SCENE_KINDS:
        raise RadiometryError(f"unknown scene radiometry {scene!r}; expected one of {', '.join(SCENE_KINDS)}")
    if db_window is not None and not (
        math.isfinite(db_window[0]) and math.isfinite(db_window[1]) and db_window[0] < db_window[1]
    ):
        raise RadiometryError(f"--db-window needs finite MIN < MAX, got {db_window[0]:g},{db_window[1]:g}")
    kind = student["kind"]
    notes: list[str] = []
    if scene == "db8":
        if db_window is not None:
            notes.append("--db-window ignored: the scene is already 8-bit codes")
        notes.append(f"assumed: the scene's 8-bit codes are in the student's convention ({_describe(student)})")
        return Conversion(scene, student, None, ("8-bit codes as read",), tuple(notes))
    steps: list[str] = []
    if scene == "dn":
        if not calibrated:
            if not allow_mismatch:
                raise RadiometryError(
                    "the scene holds digital numbers without a calibration LUT, the student expects "
                    + _describe(student)
                    + ": give the product with its calibration, or --allow-radiometry-mismatch to use DN^2 as sigma0"
                )
            notes.append("--allow-radiometry-mismatch: DN^2 used as sigma0 without calibration")
            steps.append("sigma0 = DN^2 (uncalibrated)")
        else:
            steps.append("sigma0 = DN^2 / A_sigma^2 (calibration LUT, bilinear)")
    if scene != "sigma0_db":
        steps.append("dB = 10 log10(sigma0)")
    if kind == "sigma0_db8":
        window = (float(student["db_min"]), float(student["db_max"]))
        if db_window is not None and tuple(db_window) != window:
            notes.append(
                f"--db-window {db_window[0]:g},{db_window[1]:g} differs from the student's training window {window[0]:g},{window[1]:g}"
            )
            window = (float(db_window[0]), float(db_window[1]))
    else:  # db8: the student's window is unknown
        if db_window is not None:
            window = (float(db_window[0]), float(db_window[1]))
            notes.append(
                f"the student's 8-bit window is unknown; --db-window {window[0]:g},{window[1]:g} chosen by the user"
            )
        elif allow_mismatch:
            window = (DB_MIN, DB_MAX)
            notes.append(
                f"--allow-radiometry-mismatch: the student's 8-bit window is unknown; the simulator's [{DB_MIN:g}, {DB_MAX:g}] dB used"
            )
        else:
            raise RadiometryError(
                f"the scene is {scene}, the student was trained on {_describe(student)}: no window to convert with; give --db-window MIN,MAX (dB) or --allow-radiometry-mismatch"
            )
    steps.append(f"code = round((dB - {window[0]:g}) * 255 / {window[1] - window[0]:g}), clipped to 0..255")
    return Conversion(scene, student, window, tuple(steps), tuple(notes))


def _describe(conv: dict) -> str:
    if conv["kind"] == "sigma0_db8":
        return f"8-bit sigma0 dB codes over [{conv['db_min']:g}, {conv['db_max']:g}] dB"
    return "8-bit dB-scaled images as delivered (window unknown)"


# -- the maths --------------------------------------------------------------------------------------


def lut_at(lines: np.ndarray, pixels: np.ndarray, values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a LUT given on the grid lines x pixels at the (row, col) pixel
    positions: (len(rows), len(cols)). Outside the grid the edge values hold (np.interp).

    Only the vectors that bracket the rows are interpolated along the columns: a tile costs the same
    with 30 vectors as with thousands (all of them, 80,000, made one 512-pixel tile take 1.6 s)."""
    if len(rows):
        first = max(0, int(np.searchsorted(lines, np.min(rows), side="right")) - 1)
        last = min(len(lines), int(np.searchsorted(lines, np.max(rows), side="left")) + 1)
        lines, values = lines[first:last], values[first:last]
    along = np.stack([np.interp(cols, pixels, v) for v in values])  # (L, C)
    r = np.clip(np.asarray(rows, dtype=np.float64), lines[0], lines[-1])
    i = (
        np.clip(np.searchsorted(lines, r, side="right") - 1, 0, len(lines) - 2)
        if len(lines) > 1
        else np.zeros(len(r), dtype=np.intp)
    )
    if len(lines) == 1:
        return np.repeat(along, len(r), axis=0)
    t = ((r - lines[i]) / (lines[i + 1] - lines[i]))[:, None]
    return (1.0 - t) * along[i] + t * along[i + 1]


def dn_to_sigma0(dn: np.ndarray, a_sigma: np.ndarray | None) -> np.ndarray:
    """sigma0 = DN^2 / A^2 (Sentinel-1 Level-1 calibration); without a LUT, DN^2."""
    power = np.square(dn.astype(np.float64))
    return power if a_sigma is None else power / np.square(a_sigma)


def sigma0_to_db(sigma0: np.ndarray) -> np.ndarray:
    # Zero DN (no data, the product's border) maps far below any window: code 0.
    return 10.0 * np.log10(np.maximum(sigma0, 1e-12))


def db_to_codes(db: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """dB -> 8-bit code over the window (the simulator's rule: round half up, clip); NaN -> 0."""
    lo, hi = window
    code = np.floor((np.nan_to_num(db, nan=lo - 1000.0) - lo) * (255.0 / (hi - lo)) + 0.5)
    return np.clip(code, 0, 255).astype(np.uint8)


def decimation(scene: str) -> str:
    """How a window of scene pixels is averaged into one model pixel (Scene.read's resampling): digital
    numbers by their root mean square, so that DN^2 / A^2 is the mean sigma-nought (the multilook average
    of intensity); linear sigma-nought by its mean; dB and 8-bit codes by their mean, as before GDAL
    decimated them (averaging the codes)."""
    if scene not in SCENE_KINDS:
        raise RadiometryError(f"unknown scene radiometry {scene!r}; expected one of {', '.join(SCENE_KINDS)}")
    return "rms" if scene == "dn" else "average"


def to_codes(raw: np.ndarray, conversion: Conversion, a_sigma: np.ndarray | None = None) -> np.ndarray:
    """Scene pixels (native dtype) -> the student's 8-bit codes."""
    if conversion.window is None:
        return raw.astype(np.uint8, copy=False)
    if conversion.scene == "dn":
        db = sigma0_to_db(dn_to_sigma0(raw, a_sigma))
    elif conversion.scene == "sigma0":
        db = sigma0_to_db(raw.astype(np.float64))
    else:
        db = raw.astype(np.float64)
    return db_to_codes(db, conversion.window)


# -- scale ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """The model grid: ``factor`` scene pixels per model pixel (> 1: the scene is resampled coarser);
    ``axes``, where the scene's pixels are not square on the ground, the factor along rows and along
    columns that make the model's pixels square."""

    factor: float
    scene_spacing_m: float | None
    model_spacing_m: float | None
    notes: tuple[str, ...] = ()
    axes: tuple[float, float] | None = None

    @property
    def factors(self) -> tuple[float, float]:
        """(scene pixels per model pixel down a column, along a row)."""
        return self.axes if self.axes is not None else (self.factor, self.factor)

    def to_json(self) -> dict:
        return {
            "factor": self.factor,
            "factors": list(self.factors),
            "scene_spacing_m": self.scene_spacing_m,
            "model_spacing_m": self.model_spacing_m,
            "notes": list(self.notes),
        }


def plan_scale(scene_spacing: float | None, info: dict, pixel_spacing: float | None = None) -> Scale:
    """Scene pixels per model pixel. The student saw training pixels at (training spacing) x (crop /
    resolution) metres (a random crop resized to the resolution; crop 0: whole images as they were).
    ``pixel_spacing`` (--pixel-spacing) gives the training data's spacing when the folder has none."""
    zoom = int(info.get("crop") or 0) / int(info["resolution"]) if int(info.get("crop") or 0) > 0 else 1.0
    recorded = info.get("pixel_spacing_m")
    notes = []
    train = recorded
    if pixel_spacing is not None:
        if recorded is not None and abs(pixel_spacing - recorded) > 1e-6 * recorded:
            notes.append(f"--pixel-spacing {pixel_spacing:g} m overrides the recorded training spacing {recorded:g} m")
        train = pixel_spacing
    if train is None or scene_spacing is None:
        why = (
            "the training data's pixel spacing is unknown (give --pixel-spacing)"
            if train is None
            else "the scene has no georeferencing"
        )
        notes.append(f"{why}: scene pixels are taken as training pixels")
        return Scale(zoom, scene_spacing, None if train is None else train * zoom, tuple(notes))
    model = train * zoom
    factor = model / scene_spacing
    if abs(factor - 1.0) < SAME_SCALE:
        notes.append(f"scene and training spacing within {100 * SAME_SCALE:g} %: no resampling")
        factor = 1.0
    return Scale(factor, scene_spacing, model, tuple(notes))
