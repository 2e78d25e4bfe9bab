"""SAR image statistics of a set of 8-bit images: equivalent number of looks and the intensity histogram.

* ENL = mean^2 / var of linear intensity over homogeneous sea windows (speckle with L looks has
  ENL L there). Grey levels become linear intensity through the 8-bit dB window of the built-in
  data (``osd.uint8_to_linear``). A set's ENL is the median over all its sea windows.
* The 8-bit grey-level histogram, compared by total variation and 1-Wasserstein (grey levels).

Both are kept as additive counts so that a shard's done marker can carry them and a set's value is
read from the summed counts (``SarCounts``): the grey-level histogram (256 counts) and the window
ENLs binned on a log scale (``ENL_BINS``), whose median is exact to a fraction of a bin (a bin is
5 % wide). The training images' counts are recorded in the model folder (diffusion/train.py), the
generated ones per shard (synth/worker.py); data/shardset/health.py compares them (the divergence check).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dakter_scale.data.osd import uint8_to_linear

SAR = "sar"  # the key of SarCounts as JSON in a shard marker, a dataset.json and a model folder's training record
SEA_CLASS = 0  # class 0 is the sea surface (OSD, the simulator) or the background sea (SOS)
ENL_LOG10_MIN, ENL_LOG10_MAX, ENL_BINS_PER_DECADE = -2.0, 4.0, 48
ENL_BINS = int((ENL_LOG10_MAX - ENL_LOG10_MIN) * ENL_BINS_PER_DECADE)


def enl_window(resolution: int) -> int:
    """Window side for ENL: small enough to sit inside one sea patch at this image size."""
    return 4 if resolution <= 64 else 8


def window_enl(
    images: np.ndarray, masks: np.ndarray | None = None, window: int = 8, sea_class: int = SEA_CLASS
) -> np.ndarray:
    """ENL of every non-overlapping window x window patch that is all sea (all patches when masks is
    None) and not constant, over uint8 images (N, H, W) and class maps (N, H, W)."""
    lin = uint8_to_linear(images).astype(np.float64)
    n, h, w = lin.shape
    gh, gw = h // window, w // window
    patches = lin[:, : gh * window, : gw * window].reshape(n, gh, window, gw, window)
    mean, var = patches.mean(axis=(2, 4)), patches.var(axis=(2, 4))
    keep = var > 0
    if masks is not None:
        sea = (
            (np.asarray(masks)[:, : gh * window, : gw * window] == sea_class)
            .reshape(n, gh, window, gw, window)
            .all(axis=(2, 4))
        )
        keep &= sea
    return mean[keep] ** 2 / var[keep]


def enl_bin_counts(values: np.ndarray) -> np.ndarray:
    """Window ENLs binned on the log scale of ENL_BINS (values outside fall into the end bins)."""
    pos = (np.log10(np.maximum(values, 1e-300)) - ENL_LOG10_MIN) * ENL_BINS_PER_DECADE
    return np.bincount(np.clip(pos.astype(np.int64), 0, ENL_BINS - 1), minlength=ENL_BINS)


def enl_from_counts(counts: np.ndarray | list) -> float:
    """The median window ENL from binned counts (log-linear within the median's bin); nan when empty."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return float("nan")
    cum = np.cumsum(c)
    i = int(np.searchsorted(cum, total / 2))
    below = cum[i] - c[i]
    frac = (total / 2 - below) / c[i] if c[i] > 0 else 0.5
    return float(10 ** (ENL_LOG10_MIN + (i + frac) / ENL_BINS_PER_DECADE))


def histogram(images: np.ndarray) -> np.ndarray:
    """Grey-level counts (256) of uint8 images."""
    return np.bincount(np.asarray(images).reshape(-1).astype(np.int64), minlength=256)


def histogram_distance_counts(a: np.ndarray | list, b: np.ndarray | list) -> dict[str, float]:
    """Total variation and 1-Wasserstein (grey levels) between two grey-level count vectors."""
    ha, hb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ha, hb = ha / ha.sum(), hb / hb.sum()
    return {"tv": float(0.5 * np.abs(ha - hb).sum()), "w1": float(np.abs(np.cumsum(ha) - np.cumsum(hb)).sum())}


def histogram_distance(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """histogram_distance_counts of two image sets (N, H, W) uint8."""
    return histogram_distance_counts(histogram(a), histogram(b))


@dataclass
class SarCounts:
    """Additive SAR statistics of a set of images: grey-level counts and binned window ENLs."""

    window: int
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    enl: np.ndarray = field(default_factory=lambda: np.zeros(ENL_BINS, dtype=np.int64))

    def add(self, images: np.ndarray, masks: np.ndarray | None) -> "SarCounts":
        """Count uint8 images (N, H, W) with their class maps (N, H, W)."""
        self.histogram += histogram(images)
        self.enl += enl_bin_counts(window_enl(images, masks, self.window))
        return self

    def merge(self, other: "SarCounts") -> "SarCounts":
        assert other.window == self.window, "ENL windows differ"
        return SarCounts(self.window, self.histogram + other.histogram, self.enl + other.enl)

    def to_json(self) -> dict:
        return {"window": self.window, "histogram": self.histogram.tolist(), "enl_counts": self.enl.tolist()}

    @classmethod
    def from_json(cls, obj: dict) -> "SarCounts":
        return cls(
            int(obj["window"]),
            np.asarray(obj["histogram"], dtype=np.int64),
            np.asarray(obj["enl_counts"], dtype=np.int64),
        )

    @staticmethod
    def problem(obj) -> str | None:
        """What makes a recorded SarCounts unusable (a marker or dakter.json field), or None."""
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("window"), int)
            or isinstance(obj.get("window"), bool)
            or obj["window"] < 1
        ):
            return "not an object with a window >= 1"
        for name, size in (("histogram", 256), ("enl_counts", ENL_BINS)):
            v = obj.get(name)
            if (
                not isinstance(v, list)
                or len(v) != size
                # below 2**53: a count numpy's int64 sums and float means hold exactly (a hostile 2**70 overflowed)
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**53 for x in v)
            ):
                return f"{name} is not {size} counts (integers in [0, 2**53))"
        return None

    def summary(self) -> dict:
        """The set's ENL (None without a sea window: JSON has no NaN), windows and pixels counted."""
        return {
            "enl": finite_or_none(enl_from_counts(self.enl)),
            "enl_windows": int(self.enl.sum()),
            "pixels": int(self.histogram.sum()),
        }


def finite_or_none(value: float) -> float | None:
    """A number for a JSON record: None where it is not finite (the shard set's readers refuse NaN)."""
    return float(value) if np.isfinite(value) else None
