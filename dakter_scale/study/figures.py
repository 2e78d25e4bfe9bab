"""Figures and markdown tables for reports: generated samples, metric tables, curves."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """A PNG of 256 colours: the figures that docs cite are committed, and a palette PNG of a plot is
    a third the size of the RGBA one with no visible loss."""
    from PIL import Image

    from dakter_scale.study.folder import StudyFolder

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    drawn, palette = io.BytesIO(), io.BytesIO()
    fig.savefig(drawn, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    drawn.seek(0)
    Image.open(drawn).convert("RGB").quantize(256, Image.Quantize.MAXCOVERAGE).save(palette, "PNG", optimize=True)
    StudyFolder.write_bytes(path, palette.getvalue())  # whole: a runner sharing the folder may copy it now
    return path


def sample_figure(images: np.ndarray, q: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """One row per generated pair: the SAR image, then the probability map of each class (as the
    paper's Figure 2). images: (N, H, W) uint8; q: (N, K, H, W) probabilities."""
    plt = _plt()
    n, k = len(images), q.shape[1]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.6 * (k + 1), 1.6 * n + (0.4 if title else 0)), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i], cmap="gray", vmin=0, vmax=255)
        for c in range(k):
            im = axes[i, c + 1].imshow(q[i, c], cmap="viridis", vmin=0, vmax=1)
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    axes[0, 0].set_title("SAR", fontsize=9)
    for c, name in enumerate(classes):
        axes[0, c + 1].set_title(f"p({name})", fontsize=9)
    fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def pct(v: float | None, std: float | None = None) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{100 * v:.2f}" if std is None else f"{100 * v:.2f} ± {100 * std:.2f}"


def metrics_table(rows: Sequence[tuple[str, dict]], classes: Sequence[str]) -> str:
    """Markdown: one row per method with mIoU, mean F1, pixel accuracy and per-class IoU (%)."""
    head = "| method | mIoU | mF1 | acc | " + " | ".join(f"IoU {c}" for c in classes) + " |"
    sep = "|" + "---|" * (4 + len(classes))
    lines = [head, sep]
    for name, m in rows:
        lines.append(
            f"| {name} | {pct(m['miou'])} | {pct(m['mean_f1'])} | {pct(m['pixel_accuracy'])} | "
            + " | ".join(pct(v) for v in m["iou"])
            + " |"
        )
    return "\n".join(lines)


def curve_figure(
    series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]],
    path: str | Path,
    xlabel: str,
    ylabel: str,
    title: str = "",
) -> Path:
    """Line plot with optional error bars: {label: (x, y, yerr or None)}."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label, (x, y, err) in series.items():
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def panel_figure(
    panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]],
    path: str | Path,
    xlabel: str,
    logx: bool = True,
    title: str = "",
) -> Path:
    """One panel per metric {panel title: {label: (x, y)}}, side by side, a shared legend."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.3), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items()):
        for label, (x, y) in series.items():
            ax.plot(x, y, marker="o", markersize=3, label=label)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 1.02))
    if title:
        fig.suptitle(title, fontsize=10, y=1.09)
    return _save(fig, path)


def bar_figure(
    groups: Sequence[str],
    series: dict[str, tuple[Sequence[float], Sequence[float] | None]],
    path: str | Path,
    ylabel: str,
    title: str = "",
) -> Path:
    """Grouped bars: x = groups (e.g. classes), one bar per series (e.g. method)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(groups) * max(1, len(series)) / 2), 3.8))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, (y, err)) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, y, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
