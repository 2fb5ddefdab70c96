"""The summary's PNG plots, from plain numbers (fractions; NaN = undefined), drawn on matplotlib's Agg canvas.

`Figure` is used without pyplot, so no global figure state or GUI backend is involved: safe in Ray
workers and tests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

GROUP_SHADE = {"head": "#d8e8f8", "medium": "#eeeeee", "tail": "#f8dede"}


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")


def plot_ratio(path: Path, lines: Mapping[str, Sequence[tuple[float, float, float]]]) -> None:
    """Test image AUROC vs imbalance ratio (log x): per line label, points (ratio, class mean, tail mean)."""
    fig, ax = _figure()
    for i, (label, points) in enumerate(sorted(lines.items())):
        x, mean, tail = (np.array(v, dtype=float) for v in zip(*sorted(points)))
        ax.plot(x, 100 * mean, "o-", color=f"C{i}", label=f"{label}: class mean")
        ax.plot(x, 100 * tail, "s:", color=f"C{i}", alpha=0.7, label=f"{label}: tail classes")
    ax.set_xscale("log")
    ax.set_xlabel("imbalance ratio (head / tail training images)")
    ax.set_ylabel("test image AUROC (%)")
    ax.set_title("Test image AUROC of the setting chosen by validation, per level", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_heatmap(
    path: Path, title: str, lengths: Sequence[int], ratios: Sequence[float], grid: np.ndarray
) -> None:
    """Image AUROC over prompt length (rows) x synthesis ratio (columns); NaN cells (no result: e.g. a
    trial ASHA stopped) read 'n/a' in black on the blank cell."""
    pct = 100 * np.asarray(grid, dtype=float)
    fig, ax = _figure(1.6 + 1.2 * len(ratios), 1.4 + 0.8 * len(lengths))
    image = ax.imshow(np.ma.masked_invalid(pct), cmap="viridis", aspect="auto")
    mid = np.nanmean(pct) if np.isfinite(pct).any() else 0.0
    for (i, j), v in np.ndenumerate(pct):
        ink = "k" if math.isnan(v) or v > mid else "w"  # readable on viridis' light top and dark bottom
        ax.text(j, i, "n/a" if math.isnan(v) else f"{v:.1f}", ha="center", va="center", color=ink, fontsize=9)
    ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_xlabel("synthesis ratio")
    ax.set_ylabel("prompt length")
    ax.set_title(f"{title}: test image AUROC (%)", fontsize=10)
    fig.colorbar(image, ax=ax)
    _save(fig, path)


def plot_per_class(path: Path, title: str, per_class: Mapping[str, Mapping[str, Any]]) -> None:
    """Per-class image and pixel AUROC, classes sorted by training count (head first), groups shaded."""
    names = sorted(per_class, key=lambda c: (-int(per_class[c]["train_count"]), c))
    x = np.arange(len(names))
    fig, ax = _figure(max(6.4, 0.55 * len(names) + 2), 4.4)
    for offset, metric, label in ((-0.2, "image_AUROC", "image AUROC"), (0.2, "pixel_AUROC", "pixel AUROC")):
        values = [per_class[c][metric] for c in names]
        ax.bar(x + offset, [np.nan if v is None else 100 * v for v in values], width=0.4, label=label)
    for i, c in enumerate(names):
        ax.axvspan(i - 0.5, i + 0.5, color=GROUP_SHADE.get(per_class[c]["group"], "w"), zorder=0)
    labels = [f"{c} ({per_class[c]['train_count']})" for c in names]
    ax.set_xticks(x, labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_ylabel("AUROC (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{title}: per class (training images; shade = head / medium / tail)", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)
