"""Per-class metrics, the unweighted class mean and the long-tail view (head / medium / tail, gap).

Groups: classes ranked by training image count, most first, ties broken by ``class_order`` (pass the
split's head-first ``Split.class_order``; default: the order of ``class_names``). The class at rank r
(0-based) of C is in group floor(3r / C) of (head, medium, tail), the rule of ``Split.group_of``, so
head = ceil(C/3), medium = ceil(2C/3) - ceil(C/3), tail = floor(C/3) classes: C=15 -> 5/5/5,
12 -> 4/4/4, 10 -> 4/3/3, 8 -> 3/3/2, 7 -> 3/2/2, 5 -> 2/2/1, 2 -> 1/1/0 (no tail: the gap is NaN).

Undefined values: a metric that is undefined for a class (NaN: e.g. image AUROC of a class whose test
images are all normal, pixel metrics of a class without defect pixels, a class without test images) is
left out of every mean of that metric; ``undefined[metric]`` names those classes and counts them. A mean
over no defined class is NaN. ``json_safe`` writes NaN as null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ltad.eval.metrics import as_binary, as_scores, image_auroc, image_f1_max, to_numpy

METRICS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1max")
PIXEL_METRICS = ("pixel_AUROC", "pixel_AUPRO")
GROUPS = ("head", "medium", "tail")


def split_groups(
    class_names: Sequence[str], train_counts: Mapping[str, int], class_order: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Head / medium / tail class names, each list in rank order (rule in the module docstring)."""
    missing = [c for c in class_names if c not in train_counts]
    if missing:
        raise ValueError(f"train_counts has no entry for classes {missing}; expected one count per class.")
    order = list(class_names if class_order is None else class_order)
    if sorted(order) != sorted(class_names):
        raise ValueError(f"class_order {order} must list exactly the classes {list(class_names)}.")
    ranked = sorted(order, key=lambda c: -int(train_counts[c]))  # stable: ties keep class_order
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    for rank, name in enumerate(ranked):
        groups[GROUPS[3 * rank // len(ranked)]].append(name)
    return groups


def _value(v: float | None) -> float:
    """A metric value as float; None (null in JSON) means undefined."""
    return float("nan") if v is None else float(v)


def _mean(values: Sequence[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


def aggregate(
    scores: Any,
    labels: Any,
    class_ids: Any,
    class_names: Sequence[str],
    train_counts: Mapping[str, int],
    pixel_metrics: Mapping[str, Mapping[str, float | None]],
    class_order: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build the metrics report from per-image results and per-class pixel metrics.

    ``scores``, ``labels`` (0/1) and ``class_ids`` (indices into ``class_names``) hold one entry per test
    image; ``pixel_metrics[name]`` holds ``pixel_AUROC`` and ``pixel_AUPRO`` of a class (e.g. from its
    ``PixelMetricAccumulator``); a class missing there gets NaN pixel metrics, listed as undefined.
    ``class_order`` breaks ties of ``train_counts`` when ranking the groups.
    """
    s, y = as_scores(scores, "scores").ravel(), as_binary(labels, "labels").ravel()
    ids = to_numpy(class_ids).ravel().astype(np.int64)
    if not s.size == y.size == ids.size:
        raise ValueError(f"scores, labels and class_ids differ in length: {s.size}, {y.size}, {ids.size}.")
    if ids.size and (ids.min() < 0 or ids.max() >= len(class_names)):
        raise ValueError(f"class_ids must lie in [0, {len(class_names)}), got {ids.min()}..{ids.max()}.")
    unknown = sorted(set(pixel_metrics) - set(class_names))
    if unknown:
        raise ValueError(f"pixel_metrics names classes {unknown} that are not in class_names.")
    groups = split_groups(class_names, train_counts, class_order)
    group_of = {name: g for g, names in groups.items() for name in names}

    per_class: dict[str, dict[str, Any]] = {}
    for cid, name in enumerate(class_names):
        sel = ids == cid
        pixel = pixel_metrics.get(name, {})
        per_class[name] = {
            "image_AUROC": image_auroc(s[sel], y[sel]),
            **{m: _value(pixel.get(m)) for m in PIXEL_METRICS},
            "image_F1max": image_f1_max(s[sel], y[sel]),
            "train_count": int(train_counts[name]),
            "n_test": int(sel.sum()),
            "n_test_anomalous": int(y[sel].sum()),
            "group": group_of[name],
        }

    report: dict[str, Any] = {m: _mean([per_class[c][m] for c in class_names]) for m in METRICS}
    report["n_classes"] = len(class_names)
    report["per_class"] = per_class
    report["groups"] = {
        g: {"classes": names, **{m: _mean([per_class[c][m] for c in names]) for m in METRICS}}
        for g, names in groups.items()
    }
    report["gap"] = {m: report["groups"]["head"][m] - report["groups"]["tail"][m] for m in METRICS}
    report["undefined"] = {}
    for m in METRICS:
        names = [c for c in class_names if math.isnan(per_class[c][m])]
        report["undefined"][m] = {"classes": names, "count": len(names)}
    return report


def json_safe(obj: Any) -> Any:
    """Plain JSON data: NaN and infinities become None (null), numpy scalars Python numbers, tuples lists."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def to_json(obj: Any) -> str:
    """Strict JSON text (NaN written as null) of a metrics report."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)
