"""Decision thresholds calibrated on held-out normal images, without test labels (pure numpy).

Rule (split-conformal, conservative order statistic): for n held-out normal scores and a target
false-positive rate a, the threshold is the k-th smallest score with k = ceil((n + 1) * (1 - a)).
For a new normal image exchangeable with the held-out ones, P(score > threshold) <= a on average
over the held-out draw. The decision is `score >= threshold` (the project's convention; with continuous
scores a tie has probability 0, so the bound is the same).
The order statistic exists only when k <= n, i.e. n >= ceil(1/a - 1) (19 at a = 0.05): `min_heldout`.

Per class: scores differ in scale by class, so each class gets its own threshold, computed from the
held-out images the model *predicts* to be of that class (the key the decision uses at test time,
so the rate holds even when the class prediction errs).

Fallback for a class with fewer than `min_heldout` held-out images (the long tail): the larger of
  - the pooled threshold: the same rule over every class's held-out scores together, and
  - the class's own highest held-out score (when it has any),
so a class whose scores run higher than the pool's is not flagged wholesale; its own bound is then
1/(n_c + 1) at worst. When even the pool is smaller than `min_heldout`, the pooled threshold is the
highest held-out score (bound 1/(n + 1), recorded as `pooled_bound`). With no held-out image at all
(data prepared before the validation split existed) there is no calibration: `calibrate` returns
None and the caller falls back to the diagnostic F1-on-test threshold, saying so.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RULE = "per-class split-conformal quantile of held-out normal scores at 1 - target_fpr"
FALLBACK = "max(pooled held-out quantile, class's highest held-out score)"


def min_heldout(target_fpr: float) -> int:
    """Fewest held-out scores for which the conservative order statistic at `target_fpr` exists."""
    return max(1, math.ceil((1.0 - target_fpr) / target_fpr - 1e-9))


def conformal_threshold(scores: np.ndarray, target_fpr: float) -> tuple[float, float]:
    """(threshold, guaranteed rate): the k-th smallest score, k = ceil((n+1)(1-a)) capped at n.

    The rate is `target_fpr` when k <= n, else 1/(n+1) (the maximum's bound). Needs n >= 1.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    if n == 0:
        raise ValueError("conformal_threshold needs at least one score")
    k = math.ceil((n + 1) * (1.0 - target_fpr) - 1e-9)
    if k > n:
        return float(s[-1]), 1.0 / (n + 1)
    return float(s[k - 1]), float(target_fpr)


def calibrate(
    scores: np.ndarray, pred_classes: np.ndarray, classes: list[str], target_fpr: float
) -> dict[str, Any] | None:
    """Per-class thresholds from held-out normal scores grouped by predicted class (None if no scores).

    Returns the record written to export.json and metrics.json: rule, target, pooled threshold and,
    per class, the threshold, its source ('class' or 'fallback') and the number of held-out images;
    `low` is the lowest held-out score (0 of the exported normalisation).
    """
    scores = np.asarray(scores, dtype=np.float64)
    pred_classes = np.asarray(pred_classes, dtype=np.int64)
    if len(scores) == 0:
        return None
    need = min_heldout(target_fpr)
    pooled, pooled_bound = conformal_threshold(scores, target_fpr)
    per_class: dict[str, dict[str, Any]] = {}
    for cid, name in enumerate(classes):
        own = scores[pred_classes == cid]
        if len(own) >= need:
            t, _ = conformal_threshold(own, target_fpr)
            per_class[name] = {"threshold": t, "n_heldout": len(own), "source": "class"}
        else:
            t = max(pooled, float(own.max())) if len(own) else pooled
            per_class[name] = {"threshold": t, "n_heldout": len(own), "source": "fallback"}
    return {
        "rule": RULE,
        "target_fpr": float(target_fpr),
        "min_heldout_per_class": need,
        "fallback": FALLBACK,
        "n_heldout": len(scores),
        "pooled_threshold": pooled,
        "pooled_bound": pooled_bound,
        "per_class": per_class,
        "low": float(scores.min()),
    }


def thresholds_of(calibration: dict[str, Any], classes: list[str]) -> np.ndarray:
    """The per-class thresholds in class-id order."""
    return np.array([calibration["per_class"][c]["threshold"] for c in classes], dtype=np.float64)


def rates(
    scores: np.ndarray, labels: np.ndarray, pred_classes: np.ndarray, thresholds: np.ndarray
) -> dict[str, float | None]:
    """False-positive rate on normal and true-positive rate on anomalous images, per-class thresholds."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    flagged = scores >= np.asarray(thresholds)[np.asarray(pred_classes, dtype=np.int64)]
    normal, bad = labels == 0, labels == 1
    return {
        "fpr": float(flagged[normal].mean()) if normal.any() else None,
        "tpr": float(flagged[bad].mean()) if bad.any() else None,
        "n_normal": int(normal.sum()),
        "n_anomalous": int(bad.sum()),
    }


def describe(calibration: dict[str, Any]) -> str:
    """One line per class: the calibrated rule as `make demo` prints it."""
    lines = [
        f"threshold rule: {calibration['rule']} (target_fpr {calibration['target_fpr']:g}); classes with "
        f"fewer than {calibration['min_heldout_per_class']} held-out images: {calibration['fallback']}; "
        f"pooled threshold {calibration['pooled_threshold']:.4g} over {calibration['n_heldout']} held-out "
        f"normals (guaranteed rate {calibration['pooled_bound']:.3g})"
    ]
    for name, row in calibration["per_class"].items():
        lines.append(
            f"  {name}: threshold {row['threshold']:.4g} ({row['source']}, {row['n_heldout']} held-out)"
        )
    fallback = [name for name, row in calibration["per_class"].items() if row["source"] != "class"]
    if fallback:
        lines.append(
            f"  not guaranteed for the {len(fallback)} fallback classes: the pooled threshold assumes their "
            "scores have the other classes' scale, and a tail class's normals often score higher; hold out "
            "more of their normal images (`ltad split --val-fraction`) to calibrate them"
        )
    return "\n".join(lines)


UNCALIBRATED = (
    "no held-out normal images in the prepared data (prepared before the validation split existed, "
    "or with --val-fraction 0): decisions use the F1-max threshold on the test set, which is fitted on "
    "test labels and may not hold on new images; re-run `ltad prepare` to calibrate"
)


def calibration_metrics(
    calibration: dict[str, Any] | None,
    scores: np.ndarray,
    labels: np.ndarray,
    pred_classes: np.ndarray,
    classes: list[str],
    fallback_threshold: float,
) -> dict[str, Any]:
    """metrics.json `calibration`: the record plus the false/true-positive rates its decisions give on
    the test set (by the predicted class's threshold); without one, why, and the fallback's rates."""
    if calibration is None:
        thresholds = np.full(len(classes), float(fallback_threshold))
        return {
            "calibrated": False,
            "reason": UNCALIBRATED,
            "test": rates(scores, labels, pred_classes, thresholds),
        }
    thresholds = thresholds_of(calibration, classes)
    return {"calibrated": True, **calibration, "test": rates(scores, labels, pred_classes, thresholds)}
