"""The Oil Spill Detection (OSD) dataset's conventions, which the toolkit's data follow: five classes
and their mask colours, and the 8-bit image as 10 log10(sigma0) in a [-35, +5] dB window. The real-data
reader (data/real.py), the simulator (data/synthetic_sar.py), the SAR statistics (data/sar_stats.py)
and scene inference (scene/) read them here.

The dB -> linear table is built with scalar Python arithmetic, so uint8_to_linear is the same on every
platform (no SIMD power function decides a value)."""

from __future__ import annotations

import numpy as np

CLASSES = ("sea", "oil", "look-alike", "ship", "land")
OSD_COLOURS = ((0, 0, 0), (0, 255, 255), (255, 0, 0), (153, 76, 0), (0, 153, 0))  # RGB, index = class id
SEA, OIL, LOOKALIKE, SHIP, LAND = range(5)

DB_MIN, DB_MAX = -35.0, 5.0  # 8-bit display window
CODE_STEP_DB = (DB_MAX - DB_MIN) / 255.0  # dB per 8-bit code
_CODE_TO_LINEAR = np.array([10.0 ** ((DB_MIN + k * CODE_STEP_DB) / 10.0) for k in range(256)])


def uint8_to_linear(image: np.ndarray) -> np.ndarray:
    """Inverse of the 8-bit mapping: code -> linear intensity at the code's dB centre."""
    return _CODE_TO_LINEAR[np.asarray(image, dtype=np.uint8)]


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """Class-index mask (H, W) -> RGB uint8 (H, W, 3) using OSD_COLOURS."""
    return np.asarray(OSD_COLOURS, dtype=np.uint8)[mask]
