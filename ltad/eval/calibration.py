"""Decision thresholds calibrated on normal images, without test labels (pure numpy + scipy.special).

One rule, used by the training job's evaluation (held-out normals) and by `ltad calibrate` (normal
images of a changed line), with a stated guarantee for each threshold:

Per class, from the n normal scores of the images the model *predicts* to be of that class (the key
the decision uses, so the rate holds even when the class prediction errs): the threshold is the k-th
largest score with the largest k whose false-positive bound is <= `target_fpr`. The bound: for n
exchangeable normal scores (continuous) and the threshold at the k-th largest, the rate at which a
new normal image scores >= the threshold is distributed Beta(k, n - k + 1) over the calibration draw,
so with probability `CONFIDENCE` (90 %) it is at most that Beta's 90 % quantile, the Clopper-Pearson
upper bound for k - 1 exceedances in n (`fpr_bound`). The target is thus met at 90 % confidence, not
only on average. It needs n >= `min_heldout` normals (45 at target 0.05: even the maximum of 44
normals only bounds the rate by 5.1 %).

A class with fewer is **uncovered**: it falls back to the larger of the pooled threshold and its own
highest score (when it has any), and states the bound its own normals give, 1 - 0.1^(1/n) (1.0 with
none): the pooled threshold assumes its scores have the other classes' scale, which a tail class's
often do not.

Pooled threshold (the fallback, and the single threshold of readers that ignore `calibration`): the
same rule over every class's scores, each class weighted to the deployment mix (`mix`, uniform over
the classes that have normals by default), not to how many normals each happened to have. Its bound
is that of the weighted mix of per-class rates, by the Fay-Feuer gamma interval (conservative; for a
single class the exact Poisson bound, a little above the binomial one); when even the pool's maximum
does not reach the target, the pooled threshold is that maximum and `pooled_covered` is false.

The decision is `score >= threshold` (the project's convention; with continuous scores a tie has
probability 0). With no normal score at all (data prepared before the validation split existed)
there is no calibration: `calibrate` returns None and the caller falls back to the diagnostic
F1-on-test threshold, saying so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import betaincinv, gammaincinv

CONFIDENCE = 0.9
"""The confidence of every stated false-positive bound (over the draw of the calibration normals)."""
RULE = (
    "per-class split-conformal order statistic of normal scores: the lowest with false-positive rate "
    "<= target_fpr at 90 % confidence (Clopper-Pearson)"
)
FALLBACK = "uncovered: max(pooled threshold weighted to the deployment mix, class's highest normal score)"
POOLED_BOUND = "Fay-Feuer gamma upper bound of the mix-weighted per-class rates"


def fpr_bound(n: int, k: int = 1, confidence: float = CONFIDENCE) -> float:
    """Upper `confidence` bound on the false-positive rate of a threshold at the k-th largest of n
    exchangeable normal scores: the `confidence` quantile of Beta(k, n - k + 1) (Clopper-Pearson for
    k - 1 exceedances in n). 1.0 without normals; k < 1 is treated as 1 (a threshold above them all)."""
    if n < 1:
        return 1.0
    k = min(max(int(k), 1), n)
    return float(betaincinv(k, n - k + 1, confidence))


def min_heldout(target_fpr: float, confidence: float = CONFIDENCE) -> int:
    """Fewest normals whose maximum bounds the rate by `target_fpr`: 1 - (1 - c)^(1/n) <= a."""
    return max(1, math.ceil(math.log(1.0 - confidence) / math.log(1.0 - target_fpr) - 1e-9))


def order_threshold(
    scores: np.ndarray, target_fpr: float, confidence: float = CONFIDENCE
) -> tuple[float, int, float, bool]:
    """(threshold, k, bound, covered): the k-th largest score with the largest k whose `fpr_bound` is
    <= `target_fpr`; when none is (n < min_heldout), the maximum (k = 1) and covered False. Needs n >= 1."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    n = len(s)
    if n == 0:
        raise ValueError("order_threshold needs at least one score")
    ks = np.arange(1, n + 1)
    bounds = betaincinv(ks, n - ks + 1, confidence)  # increasing in k
    ok = np.flatnonzero(bounds <= target_fpr)
    k = int(ok[-1]) + 1 if len(ok) else 1
    return float(s[k - 1]), k, float(bounds[k - 1]), bool(len(ok))


def conformal_threshold(scores: np.ndarray, target_fpr: float) -> tuple[float, float]:
    """(threshold, bound at 90 % confidence) of `order_threshold` (kept for older callers)."""
    t, _, bound, _ = order_threshold(scores, target_fpr)
    return t, bound


def mix_weights(classes: list[str], counts: Mapping[str, int], mix: Mapping[str, float] | None) -> np.ndarray:
    """The deployment share of each class, normalised over the classes that have normals (`counts` > 0):
    `mix` (class -> weight; classes it leaves out weigh 0), or uniform when None."""
    w = np.array(
        [(1.0 if mix is None else float(mix.get(c, 0.0))) if counts.get(c, 0) > 0 else 0.0 for c in classes]
    )
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError(f"deployment mix weights must be finite and >= 0, got {dict(mix or {})}")
    if w.sum() <= 0:
        raise ValueError("the deployment mix gives no weight to any class that has normal images")
    return w / w.sum()


def weighted_bound(
    y: np.ndarray | float, v: np.ndarray | float, w_max: float, confidence: float = CONFIDENCE
) -> np.ndarray:
    """Fay-Feuer gamma upper `confidence` bound on a weighted sum of rates sum_c w_c p_c: with unit
    weights u_c = w_c / n_c, y = sum_c u_c x_c, v = sum_c u_c^2 x_c for x_c exceedances in n_c, and
    w_max = max_c u_c. One class (u = 1/n): the exact Poisson bound for x in n."""
    y, v = np.asarray(y, dtype=np.float64), np.asarray(v, dtype=np.float64)
    shape = (y + w_max) ** 2 / (v + w_max**2)
    scale = (v + w_max**2) / (y + w_max)
    return np.asarray(gammaincinv(shape, confidence) * scale, dtype=np.float64)


def pooled_threshold(
    scores: np.ndarray,
    cls: np.ndarray,
    weights: np.ndarray,
    target_fpr: float,
    confidence: float = CONFIDENCE,
) -> tuple[float, float, bool]:
    """(threshold, bound, covered): the lowest pooled score whose mix-weighted bound (`weighted_bound`,
    exceedances = scores strictly above it) is <= `target_fpr`, else the pool's maximum. `weights`
    per class id, 0 for classes without scores."""
    order = np.argsort(scores, kind="stable")
    asc, ids = scores[order], cls[order]
    n = np.bincount(ids, minlength=len(weights))
    unit = np.where(n > 0, weights / np.maximum(n, 1), 0.0)
    u = unit[ids]
    tail = np.concatenate([np.cumsum(u[::-1])[::-1], [0.0]])  # tail[i]: sum of u over index >= i
    tail2 = np.concatenate([np.cumsum((u**2)[::-1])[::-1], [0.0]])
    above = np.searchsorted(asc, asc, side="right")  # first index strictly greater than asc[i]
    bounds = weighted_bound(tail[above], tail2[above], float(unit.max()), confidence)
    ok = np.flatnonzero(bounds <= target_fpr)
    i = int(ok[0]) if len(ok) else len(asc) - 1
    return float(asc[i]), float(bounds[i]), bool(len(ok))


def calibrate(
    scores: np.ndarray,
    pred_classes: np.ndarray,
    classes: list[str],
    target_fpr: float,
    *,
    mix: Mapping[str, float] | None = None,
    confidence: float = CONFIDENCE,
) -> dict[str, Any] | None:
    """Per-class thresholds from normal scores grouped by predicted class (None if no scores).

    Returns the record written to export.json and metrics.json: rule, target, confidence, pooled
    threshold, its bound and the mix it is weighted to, and per class the threshold, its source
    ('class' or 'fallback'), n (`n_heldout`), the rank k of the order statistic, `fpr_bound` and
    `covered`; `uncovered` lists the fallback classes; `low` is the lowest normal score (0 of the
    exported normalisation).
    """
    scores = np.asarray(scores, dtype=np.float64)
    pred_classes = np.asarray(pred_classes, dtype=np.int64)
    if len(scores) == 0:
        return None
    need = min_heldout(target_fpr, confidence)
    counts = np.bincount(pred_classes, minlength=len(classes))
    weights = mix_weights(classes, dict(zip(classes, counts.tolist())), mix)
    pooled, pooled_bound, pooled_covered = pooled_threshold(
        scores, pred_classes, weights, target_fpr, confidence
    )
    per_class: dict[str, dict[str, Any]] = {}
    for cid, name in enumerate(classes):
        own = scores[pred_classes == cid]
        if len(own) >= need:
            t, k, bound, _ = order_threshold(own, target_fpr, confidence)
            row = {"threshold": t, "n_heldout": len(own), "source": "class", "k": k}
            per_class[name] = {**row, "fpr_bound": bound, "covered": True}
        else:
            t = max(pooled, float(own.max())) if len(own) else pooled
            row = {"threshold": t, "n_heldout": len(own), "source": "fallback", "k": 1 if len(own) else 0}
            per_class[name] = {**row, "fpr_bound": fpr_bound(len(own), 1, confidence), "covered": False}
    return {
        "rule": RULE,
        "target_fpr": float(target_fpr),
        "confidence": float(confidence),
        "min_heldout_per_class": need,
        "fallback": FALLBACK,
        "n_heldout": len(scores),
        "pooled_threshold": pooled,
        "pooled_bound": pooled_bound,
        "pooled_bound_method": POOLED_BOUND,
        "pooled_covered": pooled_covered,
        "mix": {c: float(w) for c, w in zip(classes, weights)},
        "uncovered": [c for c, row in per_class.items() if not row["covered"]],
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


def _pct(rate: float) -> str:
    return f"{100 * rate:.3g} %"


def describe(calibration: dict[str, Any]) -> str:
    """The calibrated rule, one line per class: threshold, n, the false-positive bound it guarantees
    (at `confidence`) and whether the class is covered by the target. Older records (without bounds)
    print what they have."""
    conf = calibration.get("confidence")
    at = f" at {100 * conf:.0f} % confidence" if conf else ""
    pooled = f"pooled threshold {calibration['pooled_threshold']:.4g} over {calibration['n_heldout']} normals"
    if "pooled_covered" in calibration:
        mix = (
            "uniform over classes" if len(set(calibration["mix"].values()) - {0.0}) <= 1 else "the given mix"
        )
        pooled += (
            f", weighted to the deployment mix ({mix}): false-positive rate <= "
            f"{_pct(calibration['pooled_bound'])}{at}"
            + ("" if calibration["pooled_covered"] else " (the pool's maximum: uncovered)")
        )
    else:
        pooled += f" (guaranteed rate {calibration['pooled_bound']:.3g})"
    lines = [
        f"threshold rule: {calibration['rule']} (target_fpr {calibration['target_fpr']:g}); classes with "
        f"fewer than {calibration['min_heldout_per_class']} normals: {calibration['fallback']}; {pooled}"
    ]
    for name, row in calibration["per_class"].items():
        if "fpr_bound" not in row:
            lines.append(
                f"  {name}: threshold {row['threshold']:.4g} ({row['source']}, {row['n_heldout']} held-out)"
            )
            continue
        status = "covered" if row["covered"] else "UNCOVERED"
        lines.append(
            f"  {name}: threshold {row['threshold']:.4g}, n {row['n_heldout']}, false-positive rate <= "
            f"{_pct(row['fpr_bound'])}{at} ({status}, {row['source']})"
        )
    fallback = [name for name, row in calibration["per_class"].items() if row["source"] != "class"]
    if fallback:
        lines.append(
            f"  not guaranteed for the {len(fallback)} fallback classes: the pooled threshold assumes their "
            "scores have the other classes' scale, and a tail class's normals often score higher; give them "
            f"at least {calibration['min_heldout_per_class']} normal images each (hold out more with "
            "`ltad split --val-fraction`, or recalibrate with `ltad calibrate --normals`)"
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
