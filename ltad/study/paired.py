"""Paired differences with a 95 % t-interval, and target verdicts worded to them.

A study's mean ± std per method hides that both methods ran on the same split and seed: the paired
difference (same seed, or same class cell) removes the shared split-to-split spread. With 3 seeds a
+1.9 point mean gain whose per-seed values spread by 3 points is not evidence of a gain, so a target
is called met only when the whole interval clears it, not met only when the whole interval misses it,
and "not shown" otherwise. Pure: no torch, no files.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass


def _t_pdf(x: float, df: int) -> float:
    c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(c - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf_above_zero(x: float, df: int, steps: int = 4000) -> float:
    """P(0 <= T <= x) by Simpson's rule (the density is smooth and x is a few units at most)."""
    h = x / steps
    s = _t_pdf(0.0, df) + _t_pdf(x, df)
    s += sum((4 if i % 2 else 2) * _t_pdf(i * h, df) for i in range(1, steps))
    return s * h / 3


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p in (0.5, 1)) of Student's t with `df` >= 1 degrees of freedom."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    lo, hi = 0.0, 1.0
    while 0.5 + _t_cdf_above_zero(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 + _t_cdf_above_zero(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Paired:
    """Mean of paired differences `a - b` and its two-sided t-interval."""

    mean: float
    low: float
    high: float
    n: int
    diffs: tuple[float, ...]
    confidence: float = 0.95

    def verdict(self, target: float, strict: bool = False) -> str:
        """'met' if the interval clears `target` (above it; `strict`: > rather than >=), 'not met' if
        the interval lies below it, else 'not shown' (the data cannot tell)."""
        if math.isnan(self.low):
            return "not shown"
        if self.low > target or (not strict and self.low >= target):
            return "met"
        if self.high < target or (strict and self.high <= target):
            return "not met"
        return "not shown"

    def describe(self, scale: float = 100.0, unit: str = "points") -> str:
        """E.g. '+1.9 points, 95 % CI -2.6 to +6.4 (3 pairs)'."""
        pct = f"{100 * self.confidence:g} %"
        if self.n < 2:
            return f"{scale * self.mean:+.1f} {unit} (1 pair: no interval)"
        return (
            f"{scale * self.mean:+.1f} {unit}, {pct} CI {scale * self.low:+.1f} to "
            f"{scale * self.high:+.1f} ({self.n} pairs)"
        )


def paired_interval(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Paired:
    """Paired differences a[i] - b[i] with a two-sided t-interval of their mean (NaN bounds for n < 2)."""
    if len(a) != len(b):
        raise ValueError(f"paired_interval needs equal lengths, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired_interval needs at least one pair")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b))
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return Paired(mean, math.nan, math.nan, n, diffs, confidence)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Paired(mean, mean - half, mean + half, n, diffs, confidence)


def paired_rows(rows: Sequence[dict], level: str, first: str, second: str, figure: str) -> Paired | None:
    """`first - second` on `figure` at `level`, paired by seed (rows of a study); None if no seed has both."""
    by: dict[tuple[str, int], float] = {
        (r["method"], r["seed"]): float(r[figure])
        for r in rows
        if r["level"] == level and r.get(figure) is not None and not math.isnan(r[figure])
    }
    seeds = sorted(s for (m, s) in by if m == first and (second, s) in by)
    if not seeds:
        return None
    return paired_interval([by[(first, s)] for s in seeds], [by[(second, s)] for s in seeds])


def paired_class_cells(
    rows: Sequence[dict], level: str, first: str, second: str, group: str = "tail"
) -> Paired | None:
    """`first - second` per-class image AUROC over the (seed, class) cells of one `group` at `level`
    (rows carrying `class_group`); None if no cell has both. Cells of one seed share a training run,
    so the interval is narrower than a per-seed one would be."""
    by: dict[tuple[str, int, str], float] = {}
    for r in rows:
        groups, per_class = r.get("class_group"), r.get("per_class_image_AUROC")
        if r["level"] != level or not groups or not per_class:
            continue
        for c, auroc in per_class.items():
            if groups.get(c) == group and auroc is not None and not math.isnan(auroc):
                by[(r["method"], r["seed"], c)] = float(auroc)
    cells = sorted((s, c) for (m, s, c) in by if m == first and (second, s, c) in by)
    if not cells:
        return None
    return paired_interval([by[(first, s, c)] for s, c in cells], [by[(second, s, c)] for s, c in cells])
