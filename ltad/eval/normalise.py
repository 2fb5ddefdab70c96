"""Normalised anomaly scores: 0.5 at the decision threshold, 0 and 1 at the lowest and highest test
scores (clipped), so `normalised >= 0.5` is the decision whatever the raw scale.

Evaluation (`scores.csv`) and the exported model (`export.json` `normalisation`, used by `ltad
predict`) compute it from the same three numbers, here, so both files agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def normalisation(scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The `export.json` record: the threshold and the range of the evaluation's image scores."""
    return {"threshold": float(threshold), "min": float(np.min(scores)), "max": float(np.max(scores))}


def calibrated_normalisation(threshold: float, low: float) -> dict[str, float]:
    """A calibrated class's record: 0.5 at its threshold, 0 at the lowest held-out normal score `low`,
    1 as far above the threshold as `low` is below it (export.json `calibration`, evaluate's scores.csv)."""
    t = float(threshold)
    return {"threshold": t, "min": float(low), "max": t + (t - float(low))}


def normalise(scores: Any, norm: dict[str, float]) -> Any:
    """Raw scores or maps (numpy or torch) -> [0, 1] with the threshold at 0.5 (see the module docstring)."""
    t, lo, hi = norm["threshold"], norm["min"], norm["max"]
    below = (scores - t) / max(t - lo, 1e-12) * 0.5 + 0.5
    above = (scores - t) / max(hi - t, 1e-12) * 0.5 + 0.5
    out = below * (scores < t) + above * (scores >= t)
    return out.clip(0.0, 1.0)
