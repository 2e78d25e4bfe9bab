"""SAR statistics (data/sar_stats.py): hand-computed windows, speckle of L looks has ENL L, the
binned median against the exact one, histogram distances; and the divergence check that compares a
generated set's ENL and grey-level histogram with the training images' recorded in the model folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dakter_scale.data import sar_stats, shardset
from dakter_scale.data.osd import uint8_to_linear
from dakter_scale.data.sar_stats import (
    SarCounts,
    enl_bin_counts,
    enl_from_counts,
    histogram_distance_counts,
    window_enl,
)
from dakter_scale.data.synthetic_sar import _to_uint8


def speckled(looks: float, n: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 images of a homogeneous sea (-15 dB) with gamma speckle of `looks` looks."""
    rng = np.random.default_rng(seed)
    return _to_uint8(10**-1.5 * rng.gamma(looks, 1 / looks, size=(n, size, size)))


def test_window_enl_hand_computed_and_sea_only():
    image = np.full((1, 4, 8), 100, dtype=np.uint8)
    image[0, :2, :4] = 110  # the left window: half its 16 pixels at each of two levels
    lo, hi = uint8_to_linear(np.array([100, 110]))
    mean, var = (lo + hi) / 2, ((hi - lo) / 2) ** 2
    got = window_enl(image, None, window=4)
    assert got.size == 1 and got[0] == pytest.approx(mean**2 / var)  # the right window is constant: skipped
    image[0, 0, 4] = 110  # the right window: 1 of 16 pixels high
    p = 1 / 16
    mean_r, var_r = lo + p * (hi - lo), p * (1 - p) * (hi - lo) ** 2
    assert window_enl(image, None, window=4)[1] == pytest.approx(mean_r**2 / var_r)
    masks = np.zeros((1, 4, 8), dtype=np.int64)
    masks[0, 3, 3] = 1  # the left window is not all sea
    assert window_enl(image, masks, window=4) == pytest.approx([mean_r**2 / var_r])


@pytest.mark.parametrize("looks", [1, 4, 16])
def test_speckle_of_l_looks_has_enl_near_l(looks):
    enl = enl_from_counts(enl_bin_counts(window_enl(speckled(looks, n=32), None, window=8)))
    # a median over 64-pixel windows of an 8-bit dB-quantised image: within 35 % of L
    assert 0.65 * looks < enl < 1.35 * looks


def test_binned_median_matches_the_exact_median_and_counts_add():
    values = window_enl(speckled(3, n=16), None, window=4)
    assert enl_from_counts(enl_bin_counts(values)) == pytest.approx(np.median(values), rel=0.05)
    a, b = SarCounts(4).add(speckled(3, seed=1), None), SarCounts(4).add(speckled(3, seed=2), None)
    both = SarCounts(4).add(np.concatenate([speckled(3, seed=1), speckled(3, seed=2)]), None)
    merged = a.merge(b)
    assert np.array_equal(merged.histogram, both.histogram) and np.array_equal(merged.enl, both.enl)
    assert SarCounts.from_json(json.loads(json.dumps(merged.to_json()))).to_json() == merged.to_json()
    assert SarCounts.problem(merged.to_json()) is None and SarCounts.problem(
        {"window": 4, "histogram": [1], "enl_counts": []}
    ).startswith("histogram is not 256 counts")
    # a hostile count past int64 (a marker from elsewhere) is refused when read, not an OverflowError when summed
    huge = dict(merged.to_json(), histogram=[2**70] + [0] * 255)
    assert SarCounts.problem(huge) == "histogram is not 256 counts (integers in [0, 2**53))"


def test_histogram_distance_hand_computed():
    a, b = np.zeros(256), np.zeros(256)
    a[10], b[10], b[14] = 4, 2, 2
    d = histogram_distance_counts(a, b)
    assert d["tv"] == pytest.approx(0.5) and d["w1"] == pytest.approx(0.5 * 4)


def test_divergence_warns_on_enl_and_histogram_drift_and_notes_a_missing_record():
    real = SarCounts(4).add(speckled(1.4), None).to_json()
    smooth = SarCounts(4).add(speckled(12.7), None).to_json()
    base = {"class_fractions": [0.9, 0.1], "mean_confidence": 0.9}
    div, warnings = shardset.divergence(
        {**base, "sar": smooth}, [0.9, 0.1], 0.1, real, histogram_tv=1.0
    )  # the ENL alone
    assert (
        len(warnings) == 1
        and "equivalent number of looks" in warnings[0]
        and "smoothed away" in warnings[0]
        and div["diverged"]
    )
    assert div["sar"]["enl_generated"] > 5 * div["sar"]["enl_training"]
    div, warnings = shardset.divergence(
        {**base, "sar": SarCounts(4).add(speckled(1.4, seed=3), None).to_json()}, [0.9, 0.1], 0.1, real
    )
    assert warnings == [] and 0.8 < div["sar"]["enl_generated"] / div["sar"]["enl_training"] < 1.25
    bright = SarCounts(4).add(np.clip(speckled(1.4, seed=3).astype(int) + 60, 0, 255).astype(np.uint8), None).to_json()
    div, warnings = shardset.divergence({**base, "sar": bright}, [0.9, 0.1], 0.1, real)
    assert len(warnings) == 1 and "grey-level histogram" in warnings[0]
    div, warnings = shardset.divergence({**base, "sar": smooth}, [0.9, 0.1], 0.1, None)
    assert warnings == [] and div["sar"]["note"].startswith("not checked: the model folder records no")


# -- through a synthesis run ------------------------------------------------------------------------


def _with_train_sar(model, folder, sar):
    shutil.copytree(model, folder)
    info = json.loads((folder / "dakter.json").read_text())
    if sar is None:
        info["train_stats"].pop("sar", None)
    else:
        info["train_stats"]["sar"] = sar
    (folder / "dakter.json").write_text(json.dumps(info))
    return str(folder)


def test_synthesis_warns_when_the_recorded_training_enl_is_far_from_the_generated(model, tmp_path, monkeypatch):
    from test_synth import synthesize

    from dakter_scale.diffusion.sample import Samples
    from dakter_scale.synth import worker

    sample_pairs = worker.sample_pairs

    def all_sea(*args, **kw):
        """The tiny model's pairs with every pixel labelled sea: its noisy labels leave no all-sea window."""
        out = sample_pairs(*args, **kw)
        q = torch.zeros_like(out.q)
        q[:, 0] = 1
        return Samples(out.images, q)

    monkeypatch.setattr(worker, "sample_pairs", all_sea)
    assert "sar" in json.loads(open(f"{model}/dakter.json").read())["train_stats"]  # train_diffusion recorded it
    first = synthesize(model, tmp_path / "own")
    generated = first.dataset["generated_stats"]["sar"]
    assert generated["window"] == sar_stats.enl_window(32) and generated["pixels"] == 8 * 32 * 32
    assert (
        sum(json.loads((tmp_path / "own" / shardset.shard_name(0, "json")).read_text())["sar"]["histogram"])
        == 4 * 32 * 32
    )

    matched = _with_train_sar(
        model, tmp_path / "matched", {k: generated[k] for k in ("window", "histogram", "enl_counts")}
    )
    summary = synthesize(matched, tmp_path / "m")
    assert not any("looks" in w or "histogram" in w for w in summary.dataset["warnings"])
    assert summary.dataset["divergence"]["sar"]["enl_generated"] == pytest.approx(
        summary.dataset["divergence"]["sar"]["enl_training"]
    )

    far = SarCounts(generated["window"])
    far.histogram = np.asarray(generated["histogram"])
    far.enl = np.roll(np.asarray(generated["enl_counts"]), sar_stats.ENL_BINS_PER_DECADE)  # every window ENL x 10
    summary = synthesize(_with_train_sar(model, tmp_path / "far", far.to_json()), tmp_path / "f")
    assert any("equivalent number of looks" in w for w in summary.dataset["warnings"])
    assert any("ENL (sea windows)" in line for line in summary.lines())

    old = synthesize(_with_train_sar(model, tmp_path / "old", None), tmp_path / "o")
    assert (
        old.ok
        and "note" in old.dataset["divergence"]["sar"]
        and any("SAR statistics: not checked" in line for line in old.lines())
    )
