"""Study rows by class size: per-class image AUROCs grouped by how many training images a class had."""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import pairwise

SIZE_BUCKETS = (1, 3, 10, 30)
"""Lower bounds of the by-class-size table's buckets of training images per class: 1-2 (the extreme
tail), 3-9, 10-29, 30+."""
SIZE_PAIRS = (("ltad", "rec_only"), ("ltad", "no_vae"), ("no_vae", "rec_only"))
"""Paired differences in that table: the tail target, what synthesis adds, what fusion adds."""
BUCKET_LABELS = (*(f"{lo}-{hi - 1}" for lo, hi in pairwise(SIZE_BUCKETS)), f"{SIZE_BUCKETS[-1]}+")


def _bucket(n: int) -> str:
    """Label of the bucket holding a class with `n` >= 1 training images."""
    return BUCKET_LABELS[sum(n >= lo for lo in SIZE_BUCKETS) - 1]


def by_class_size(
    rows: list[dict], methods: list[str], pairs: tuple[tuple[str, str], ...] = SIZE_PAIRS
) -> dict[str, dict[str, list[float]]]:
    """bucket -> method -> per-class image AUROCs over the long-tailed levels' (level, seed, class) cells.

    Also bucket -> "a - b" -> paired differences (same level, seed and class) for each pair in
    `pairs` (default SIZE_PAIRS), so a gain on the smallest classes can be told from the seed-to-seed spread. Rows
    without `train_counts` (studies run before rows carried them), balanced levels and classes with no
    training images are left out.
    """
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    cell: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        counts, per_class = r.get("train_counts"), r.get("per_class_image_AUROC")
        if not counts or not per_class or r.get("profile") == "full" or r["method"] not in methods:
            continue
        for c, auroc in per_class.items():
            if counts.get(c, 0) >= 1 and auroc is not None and not math.isnan(auroc):
                b = _bucket(int(counts[c]))
                out[b][r["method"]].append(float(auroc))
                cell[(b, r["level"], r["seed"], c)][r["method"]] = float(auroc)
    for (b, *_), by_method in cell.items():
        for first, second in pairs:
            if first in by_method and second in by_method:
                out[b][f"{first} - {second}"].append(by_method[first] - by_method[second])
    return out
