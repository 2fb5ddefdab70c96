"""Anomaly detection metrics: exact image/pixel AUROC, AUPRO, F1-max and a binned pixel accumulator.

Conventions (shared by every function here):
- Higher score = more anomalous; a sample is predicted anomalous at threshold t when score >= t.
- Ties are one ROC step: the curve runs straight between the points of distinct thresholds (trapezoid),
  exactly like scikit-learn's ``roc_auc_score``. A value below 0.5 is reported as is, never flipped.
- Undefined metrics return ``float("nan")``, never 0.5: image AUROC needs both normal and anomalous
  images; pixel AUROC and AUPRO need both defect and normal pixels; F1-max needs one anomalous image.
  The aggregator excludes NaN classes from means and names them.
- AUPRO follows the MVTec AD definition: regions are the 8-connected components of each ground-truth
  mask (never connected across images); at each threshold the per-region overlap (PRO) is the mean over
  regions of the share of the region's pixels at or above it, plotted against the global FPR over all
  normal pixels (every pixel outside the masks, normal images included); the curve is integrated from
  FPR 0 to ``fpr_limit`` (linear interpolation at the limit) and divided by ``fpr_limit``.

Binned pixel metrics (``PixelMetricAccumulator``): scores fall into ``bins`` equal-width bins over a
value range, either fixed by the caller (values outside are clipped into the edge bins) or found by a
first pass (``observe`` every batch, then ``update`` every batch). Each bin is a monotone slice of the
score axis, so the curve points at bin edges are exact; only the path inside a bin is replaced by a
straight chord. Both curves are monotone inside the box [F_k, F_k+1] x [Y_k, Y_k+1] of bin k, and the
area between a monotone path and the chord of its box (also over a part of the box, as at the FPR limit)
is at most half the box, so:
    |binned AUROC - exact| <= sum_k dF_k * dTPR_k / 2
    |binned AUPRO - exact| <= sum_{k: F_k < limit} dF_k * dPRO_k / 2 / limit
``PixelMetricAccumulator.error_bounds`` returns these figures (computed from the histograms). Clipping
keeps the bound valid: it only widens the edge bins (so it loosens the bound, which then says so).
tests/unit/test_metrics.py checks the bound and the actual error on realistic maps.
Which range: a fixed one needs a single pass over the test set (good when scores are standardised with
training statistics); two passes give the tightest bins but need the maps twice (recomputed or cached).
``StreamingPixelAccumulator`` (what the evaluation stage uses) needs neither: one pass, no range known
beforehand, no map kept. Its bins have power-of-two widths on a grid anchored at 0 and double (adjacent
bins added, exact because the grids nest) whenever a value falls outside its window of 2 x ``bins``
bins, so the final width is about (max - min) / ``bins`` or finer, like a fixed-range accumulator over
the global min..max, and the same bound holds (``error_bounds``). It bins the float32 maps themselves.
State is O(bins): per bin, the normal pixel count, the defect pixel count and the sum over regions of
the region's share in that bin (the PRO curve only needs that sum), so accumulators of workers merge by
addition.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

NAN = float("nan")
# 8-connectivity inside each image, none across the image axis of an N x H x W stack.
_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array, list or torch tensor (any device; half floats widened)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def as_scores(x: Any, name: str) -> np.ndarray:
    """Finite float scores as numpy; integer or bool input becomes float64."""
    arr = to_numpy(x)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}.")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; scores must be finite.")
    return arr


def as_binary(x: Any, name: str) -> np.ndarray:
    """A bool array from 0/1 labels or masks (bool, int or float); anything else is an error."""
    arr = to_numpy(x)
    if arr.dtype != bool:
        if arr.size and not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must hold only 0 and 1 (normal / anomalous); binarise it first.")
        arr = arr == 1
    return arr


def _image_inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s, y = as_scores(scores, "scores").ravel(), as_binary(labels, "labels").ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.size} vs {y.size}.")
    return s, y


def _stack(x: np.ndarray, name: str) -> np.ndarray:
    """N x H x W from N x H x W or N x 1 x H x W."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name} must be shaped N x H x W (or N x 1 x H x W), got {tuple(x.shape)}.")
    return x


def _pixel_inputs(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    m = _stack(as_scores(maps, "maps"), "maps")
    g = _stack(as_binary(masks, "masks"), "masks")
    if m.shape != g.shape:
        raise ValueError(f"maps and masks differ in shape: {m.shape} vs {g.shape}.")
    return m, g


def _steps(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending sort order, and the last sorted position of each distinct score (one ROC point each)."""
    order = np.argsort(scores, kind="stable")[::-1]
    ends = np.flatnonzero(np.diff(scores[order]))
    return order, np.append(ends, scores.size - 1)


def _area(x: np.ndarray, y: np.ndarray, limit: float = 1.0) -> float:
    """Trapezoid area under a curve with non-decreasing x from x=0 to x=limit (interpolated at limit)."""
    inside = int(np.searchsorted(x, limit, side="right"))
    xs, ys = x[:inside], y[:inside]
    area = float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2.0))
    if inside < x.size and xs[-1] < limit:
        t = (limit - xs[-1]) / (x[inside] - xs[-1])
        y_limit = ys[-1] + t * (y[inside] - ys[-1])
        area += (limit - xs[-1]) * (ys[-1] + y_limit) / 2.0
    return float(area)


def _roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return NAN
    order, ends = _steps(scores)
    tps = np.cumsum(positive[order], dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return _area(np.append(0.0, fps / n_neg), np.append(0.0, tps / n_pos))


def image_auroc(scores: Any, labels: Any) -> float:
    """Image AUROC; NaN when the images are all normal or all anomalous (undefined, not 0.5)."""
    return _roc_auc(*_image_inputs(scores, labels))


def pixel_auroc(maps: Any, masks: Any) -> float:
    """Pixel AUROC over every pixel of N x H x W maps; NaN without defect pixels or without normal ones."""
    m, g = _pixel_inputs(maps, masks)
    return _roc_auc(m.ravel(), g.ravel())


def _f1_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s, y = _image_inputs(scores, labels)
    order, ends = _steps(s)
    tps = np.cumsum(y[order], dtype=np.int64)[ends]
    fps = ends + 1 - tps
    f1 = 2.0 * tps / (tps + fps + int(y.sum()))  # 2TP / (2TP + FP + FN)
    return f1, s[order][ends]


def image_f1_max(scores: Any, labels: Any) -> float:
    """Best F1 over all thresholds (anomalous = score >= t); NaN when no image is anomalous.

    With only anomalous images it is 1.0 (flag everything): defined, if uninformative.
    """
    if not as_binary(labels, "labels").any():
        return NAN
    return float(_f1_curve(scores, labels)[0].max())


def f1_max_threshold(scores: Any, labels: Any) -> float:
    """The threshold at which ``image_f1_max`` is reached (lowest such score); NaN when undefined."""
    if not as_binary(labels, "labels").any():
        return NAN
    f1, thresholds = _f1_curve(scores, labels)
    return float(thresholds[np.flatnonzero(f1 == f1.max())[-1]])


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected-component ids (0 = normal) of an N x H x W bool stack, 8-connected within each image."""
    return ndimage.label(masks, structure=_IN_PLANE_8)


def pixel_aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Exact normalised AUPRO up to ``fpr_limit`` (MVTec AD definition, see the module docstring).

    NaN when there is no defect region or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
    m, g = _pixel_inputs(maps, masks)
    ids, n_regions = _regions(g)
    ids = ids.ravel()
    normal = ids == 0
    n_normal = int(normal.sum())
    if n_regions == 0 or n_normal == 0:
        return NAN
    sizes = np.bincount(ids)
    weight = np.where(normal, 0.0, 1.0 / (sizes[ids] * n_regions))
    order, ends = _steps(m.ravel())
    fpr = np.cumsum(normal[order], dtype=np.int64)[ends] / n_normal
    pro = np.cumsum(weight[order])[ends]
    return _area(np.append(0.0, fpr), np.append(0.0, pro), fpr_limit) / fpr_limit


class PixelMetricAccumulator:
    """Binned pixel AUROC and AUPRO over batches, in O(bins) memory (bound: see the module docstring).

    ``value_range=(lo, hi)`` fixes the bins up front (e.g. from training statistics; outside values are
    clipped into the edge bins). Without it, call ``observe`` on every batch first (pass one), then
    ``update`` on every batch (pass two); the range freezes at the first ``update``.
    """

    def __init__(
        self, bins: int = 1000, fpr_limit: float = 0.3, value_range: tuple[float, float] | None = None
    ):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}.")
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
        self.bins, self.fpr_limit = int(bins), float(fpr_limit)
        self._lo: float | None = None  # the value range: both None or both set
        self._hi: float | None = None
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"value_range must be two finite numbers lo < hi, got {value_range}.")
            self._lo, self._hi = lo, hi
        self._frozen = value_range is not None
        self.normal = np.zeros(self.bins, dtype=np.int64)
        self.defect = np.zeros(self.bins, dtype=np.int64)
        self.region_share = np.zeros(self.bins, dtype=np.float64)
        self.n_regions = 0

    @property
    def value_range(self) -> tuple[float, float] | None:
        return None if self._lo is None or self._hi is None else (self._lo, self._hi)

    def observe(self, maps: Any) -> None:
        """Pass one of the two-pass mode: widen the value range to cover these maps."""
        if self._frozen:
            raise ValueError(
                "observe() must come before the first update(), and not with a fixed value_range."
            )
        m = as_scores(maps, "maps")
        if m.size:
            lo, hi = float(m.min()), float(m.max())
            self._lo = lo if self._lo is None else min(self._lo, lo)
            self._hi = hi if self._hi is None else max(self._hi, hi)

    def _bin(self, values: np.ndarray) -> np.ndarray:
        assert self._lo is not None and self._hi is not None, "update() checks the value range first"
        scale = self.bins / (self._hi - self._lo)
        return np.clip(np.floor((values - self._lo) * scale), 0, self.bins - 1).astype(np.intp)

    def update(self, maps: Any, masks: Any) -> None:
        """Add a batch of N x H x W maps and binary masks."""
        if self._lo is None or self._hi is None:
            raise ValueError(
                "PixelMetricAccumulator has no value range: pass value_range or observe() every batch first."
            )
        if not self._frozen:
            self._frozen = True
            if self._hi <= self._lo:  # constant maps: any width holds them in one bin
                self._hi = self._lo + 1.0
        m, g = _pixel_inputs(maps, masks)
        normal, defect, share, n_regions = _add_batch(self._bin(m.ravel()), g, self.bins)
        self.normal += normal
        self.defect += defect
        self.region_share += share
        self.n_regions += n_regions

    def merge(self, other: PixelMetricAccumulator) -> None:
        """Add another accumulator's counts (e.g. from another worker); bins and range must match."""
        if (self.bins, self.value_range, self.fpr_limit) != (other.bins, other.value_range, other.fpr_limit):
            raise ValueError("Cannot merge accumulators with different bins, value ranges or fpr limits.")
        self.normal += other.normal
        self.defect += other.defect
        self.region_share += other.region_share
        self.n_regions += other.n_regions

    def compute(self) -> dict[str, float]:
        """{"pixel_AUROC", "pixel_AUPRO"} from the histograms; NaN when undefined."""
        return _histogram_metrics(self.normal, self.defect, self.region_share, self.n_regions, self.fpr_limit)

    def error_bounds(self) -> dict[str, float]:
        """Upper bounds of |binned - exact| for the values of ``compute`` (derivation: module docstring)."""
        return _histogram_bounds(self.normal, self.defect, self.region_share, self.n_regions, self.fpr_limit)


def _add_batch(
    idx: np.ndarray, masks: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(normal, defect, region share) counts per bin and the region count of one batch; `idx` holds each
    pixel's bin (flattened like `masks`), regions are 8-connected within each image."""
    ids, n_regions = _regions(masks)
    ids = ids.ravel()
    normal = ids == 0
    share: np.ndarray = np.zeros(bins, dtype=np.float64)
    if n_regions:
        sizes = np.bincount(ids)
        share = np.bincount(idx[~normal], weights=1.0 / sizes[ids[~normal]], minlength=bins)
    return (
        np.bincount(idx[normal], minlength=bins),
        np.bincount(idx[~normal], minlength=bins),
        share,
        int(n_regions),
    )


def _histogram_curves(
    normal: np.ndarray, defect: np.ndarray, region_share: np.ndarray, n_regions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(FPR, TPR, PRO) at the bin edges from the top bin down, starting at (0, 0, 0); None if undefined."""
    n_normal, n_defect = int(normal.sum()), int(defect.sum())
    if n_normal == 0 or n_defect == 0 or n_regions == 0:
        return None

    def rate(counts: np.ndarray, total: float) -> np.ndarray:
        return np.append(0.0, np.cumsum(counts[::-1]) / total)

    return rate(normal, n_normal), rate(defect, n_defect), rate(region_share, n_regions)


def _histogram_metrics(normal, defect, region_share, n_regions: int, fpr_limit: float) -> dict[str, float]:
    curves = _histogram_curves(normal, defect, region_share, n_regions)
    if curves is None:
        return {"pixel_AUROC": NAN, "pixel_AUPRO": NAN}
    fpr, tpr, pro = curves
    return {"pixel_AUROC": _area(fpr, tpr), "pixel_AUPRO": _area(fpr, pro, fpr_limit) / fpr_limit}


def _histogram_bounds(normal, defect, region_share, n_regions: int, fpr_limit: float) -> dict[str, float]:
    curves = _histogram_curves(normal, defect, region_share, n_regions)
    if curves is None:
        return {"pixel_AUROC": NAN, "pixel_AUPRO": NAN}
    fpr, tpr, pro = curves
    d_fpr = np.diff(fpr)
    below = fpr[:-1] < fpr_limit
    return {
        "pixel_AUROC": float(np.sum(d_fpr * np.diff(tpr)) / 2.0),
        "pixel_AUPRO": float(np.sum((d_fpr * np.diff(pro))[below]) / 2.0 / fpr_limit),
    }


class StreamingPixelAccumulator:
    """Binned pixel AUROC and AUPRO in one pass, without knowing the value range (see the module docstring).

    Bins have width 2**exp on a grid anchored at 0 (bin i holds [i * 2**exp, (i + 1) * 2**exp)), at most
    ``2 * bins`` of them. The first batch picks the finest exp whose bins cover its values; a later
    value (or a merged accumulator) outside the window doubles the width (adjacent bins are added, which
    is exact: the grids nest) until everything fits. So any batch order, and accumulators of any
    workers, merge by addition, and the final width is about (max - min) / bins of all values seen or
    finer: no coarser than a fixed-range accumulator of ``bins`` bins over the global min..max. Memory is
    O(bins) whatever the number of maps.
    """

    def __init__(self, bins: int = 1000, fpr_limit: float = 0.3):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}.")
        if not 0.0 < fpr_limit <= 1.0:
            raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}.")
        self.bins, self.fpr_limit = int(bins), float(fpr_limit)
        self.capacity = 2 * self.bins
        self.exp: int | None = None  # bin width 2**exp; None until the first non-empty update
        self.start = 0  # grid index of the first bin
        self.normal = np.zeros(self.capacity, dtype=np.int64)
        self.defect = np.zeros(self.capacity, dtype=np.int64)
        self.region_share = np.zeros(self.capacity, dtype=np.float64)
        self.n_regions = 0

    @property
    def bin_width(self) -> float | None:
        return None if self.exp is None else math.ldexp(1.0, self.exp)

    def _used(self) -> tuple[int, int] | None:
        """(first, last) grid index of the non-empty bins, None when empty."""
        nz = np.flatnonzero(self.normal + self.defect)
        return None if nz.size == 0 else (self.start + int(nz[0]), self.start + int(nz[-1]))

    def _fit(self, exp: int, lo: int, hi: int) -> None:
        """Re-frame so that grid indices lo..hi at width 2**exp (and every bin held now) fit the window."""
        used = self._used()
        if used is not None and self.exp is not None:
            shift = exp - self.exp
            lo, hi = min(lo, used[0] >> shift), max(hi, used[1] >> shift)
        while hi - lo + 1 > self.capacity:
            exp, lo, hi = exp + 1, lo >> 1, hi >> 1
        if self.exp == exp and self.start <= lo and hi < self.start + self.capacity:
            return
        old = self.start + np.arange(self.capacity, dtype=np.int64)
        moved = (old >> (exp - self.exp)) - lo if self.exp is not None else None
        for name in ("normal", "defect", "region_share"):
            counts = getattr(self, name)
            fresh = np.zeros_like(counts)
            if moved is not None:
                keep = counts != 0
                np.add.at(fresh, moved[keep], counts[keep])
            setattr(self, name, fresh)
        self.exp, self.start = exp, lo

    def _index(self, values: np.ndarray, exp: int) -> np.ndarray:
        return np.floor(np.ldexp(values.astype(np.float64), -exp)).astype(np.int64)

    def update(self, maps: Any, masks: Any) -> None:
        """Add a batch of N x H x W maps and binary masks."""
        m, g = _pixel_inputs(maps, masks)
        if m.size == 0:
            return
        lo_v, hi_v = float(m.min()), float(m.max())
        exp = self.exp
        if exp is None:
            span = hi_v - lo_v
            if span > 0:
                exp = math.ceil(math.log2(span / self.capacity))
            else:  # constant so far: a width far below the value (a later batch widens it)
                exp = math.frexp(abs(lo_v))[1] - 40 if lo_v else -40
        lo, hi = (int(i) for i in self._index(np.array([lo_v, hi_v]), exp))
        self._fit(exp, lo, hi)
        assert self.exp is not None
        idx = self._index(m.ravel(), self.exp) - self.start
        normal, defect, share, n_regions = _add_batch(idx, g, self.capacity)
        self.normal += normal
        self.defect += defect
        self.region_share += share
        self.n_regions += n_regions

    def merge(self, other: StreamingPixelAccumulator) -> None:
        """Add another accumulator's counts (e.g. from another worker); bins and fpr limit must match."""
        if (self.bins, self.fpr_limit) != (other.bins, other.fpr_limit):
            raise ValueError("Cannot merge accumulators with different bins or fpr limits.")
        used = other._used()
        if used is not None and other.exp is not None:
            exp = other.exp if self.exp is None else max(self.exp, other.exp)
            shift = exp - other.exp
            self._fit(exp, used[0] >> shift, used[1] >> shift)
            assert self.exp is not None
            moved = (
                (other.start + np.arange(other.capacity, dtype=np.int64)) >> (self.exp - other.exp)
            ) - self.start
            keep = (other.normal + other.defect) != 0
            np.add.at(self.normal, moved[keep], other.normal[keep])
            np.add.at(self.defect, moved[keep], other.defect[keep])
            np.add.at(self.region_share, moved[keep], other.region_share[keep])
        self.n_regions += other.n_regions

    def compute(self) -> dict[str, float]:
        """{"pixel_AUROC", "pixel_AUPRO"} from the histograms; NaN when undefined."""
        return _histogram_metrics(self.normal, self.defect, self.region_share, self.n_regions, self.fpr_limit)

    def error_bounds(self) -> dict[str, float]:
        """Upper bounds of |binned - exact| for the values of ``compute`` (derivation: module docstring)."""
        return _histogram_bounds(self.normal, self.defect, self.region_share, self.n_regions, self.fpr_limit)
