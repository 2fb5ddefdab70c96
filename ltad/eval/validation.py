"""The validation metric: image AUROC of held-out normals vs their synthetic pseudo-anomalies.

What chooses settings (the sweep summary's best setting, ASHA) without test labels. The held-out
(val) normals are scored exactly as for the threshold calibration; each also as a copy with one
synthetic defect (ltad/data/pseudo_defects.py), scored the same way. `val_image_AUROC` ranks all of
them together (normals label 0, pseudo-anomalies label 1); per class where a class has both.
Pure: plain scores in, numbers out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ltad.eval.metrics import image_auroc

VAL_METRIC = "val_image_AUROC"
"""Key of the validation AUROC in metrics.json, Tune results and the summary."""
RULE = "image AUROC of held-out normals vs synthetic pseudo-anomalies (no test label)"


def _auroc(normal: np.ndarray, pseudo: np.ndarray) -> float:
    if len(normal) == 0 or len(pseudo) == 0:
        return float("nan")
    scores = np.concatenate([normal, pseudo])
    labels = np.concatenate([np.zeros(len(normal), np.int64), np.ones(len(pseudo), np.int64)])
    return float(image_auroc(scores, labels))


def validation_metrics(
    normal_scores: Sequence[float],
    normal_classes: Sequence[int],
    pseudo_scores: Sequence[float],
    pseudo_classes: Sequence[int],
    classes: Sequence[str],
) -> dict[str, Any]:
    """metrics.json's `validation` block: the pooled AUROC (NaN without both kinds), per class, counts."""
    normal, pseudo = np.asarray(normal_scores, np.float64), np.asarray(pseudo_scores, np.float64)
    nc, pc = np.asarray(normal_classes, np.int64), np.asarray(pseudo_classes, np.int64)
    if len(normal) != len(nc) or len(pseudo) != len(pc):
        raise ValueError("validation_metrics: one class id per score is required")
    per_class = {}
    for cid, name in enumerate(classes):
        value = _auroc(normal[nc == cid], pseudo[pc == cid])
        if not math.isnan(value):
            per_class[name] = value
    return {
        "image_AUROC": _auroc(normal, pseudo),
        "per_class": per_class,
        "n_normal": int(len(normal)),
        "n_pseudo": int(len(pseudo)),
        "rule": RULE,
    }


def validation_value(metrics: dict[str, Any]) -> float | None:
    """A metrics.json's validation AUROC; None when it has none (older runs, or no held-out images)."""
    v = metrics.get(VAL_METRIC)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
