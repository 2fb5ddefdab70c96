"""The aggregator on a hand-built 7-class case, the group rule and the JSON output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ltad.data.splits import Split
from ltad.eval.aggregate import METRICS, aggregate, json_safe, split_groups, to_json

NAMES = ["a", "b", "c", "d", "e", "f", "g"]
TRAIN = {"a": 50, "b": 5, "c": 200, "d": 5, "e": 20, "f": 1, "g": 20}
# class -> (labels, scores); expected image AUROC / F1max worked out by hand
IMAGES = {
    "a": ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]),  # 1.0 / 1.0
    "b": ([0, 1], [0.9, 0.1]),  # 0.0 (not flipped) / 2/3
    "c": ([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]),  # 0.875 / 0.8
    "d": ([0, 0, 0], [0.3, 0.2, 0.1]),  # only normal test images: undefined / undefined
    "e": ([0, 1], [0.2, 0.6]),  # 1.0 / 1.0
    "f": ([0, 1, 1], [0.5, 0.4, 0.6]),  # 0.5 / 0.8
    # g: no test images at all
}
PIXEL = {
    "a": {"pixel_AUROC": 0.9, "pixel_AUPRO": 0.8},
    "b": {"pixel_AUROC": 0.7, "pixel_AUPRO": 0.6},
    "c": {"pixel_AUROC": 0.95, "pixel_AUPRO": 0.9},
    "d": {"pixel_AUROC": float("nan"), "pixel_AUPRO": float("nan")},
    "e": {"pixel_AUROC": 0.85, "pixel_AUPRO": None},
    "f": {"pixel_AUROC": 0.6, "pixel_AUPRO": 0.5},
}


def build() -> dict:
    labels, scores, ids = [], [], []
    for name, (y, s) in IMAGES.items():
        labels += y
        scores += s
        ids += [NAMES.index(name)] * len(y)
    order = np.random.default_rng(0).permutation(len(labels))  # sample order must not matter
    return aggregate(
        np.array(scores)[order], np.array(labels)[order], np.array(ids)[order], NAMES, TRAIN, PIXEL
    )


def test_per_class_values_and_undefined_classes():
    report = build()
    pc = report["per_class"]
    assert [pc[c]["image_AUROC"] for c in "abcef"] == pytest.approx([1.0, 0.0, 0.875, 1.0, 0.5])
    assert [pc[c]["image_F1max"] for c in "abcef"] == pytest.approx([1.0, 2 / 3, 0.8, 1.0, 0.8])
    assert math.isnan(pc["d"]["image_AUROC"]) and math.isnan(pc["g"]["image_AUROC"])
    assert (pc["d"]["n_test"], pc["d"]["n_test_anomalous"], pc["g"]["n_test"]) == (3, 0, 0)
    assert report["undefined"]["image_AUROC"] == {"classes": ["d", "g"], "count": 2}
    assert report["undefined"]["pixel_AUPRO"] == {"classes": ["d", "e", "g"], "count": 3}
    assert report["undefined"]["pixel_AUROC"]["count"] == 2


def test_class_means_exclude_undefined_classes():
    report = build()
    assert report["image_AUROC"] == pytest.approx((1.0 + 0.0 + 0.875 + 1.0 + 0.5) / 5)
    assert report["image_F1max"] == pytest.approx((1.0 + 2 / 3 + 0.8 + 1.0 + 0.8) / 5)
    assert report["pixel_AUROC"] == pytest.approx((0.9 + 0.7 + 0.95 + 0.85 + 0.6) / 5)
    assert report["pixel_AUPRO"] == pytest.approx((0.8 + 0.6 + 0.9 + 0.5) / 4)
    assert report["n_classes"] == 7


def test_groups_and_gap_on_seven_classes():
    report = build()
    groups = report["groups"]
    # ranked by count: c 200, a 50, e 20, g 20 (tie: class order), b 5, d 5, f 1 -> 3 / 2 / 2
    assert groups["head"]["classes"] == ["c", "a", "e"]
    assert groups["medium"]["classes"] == ["g", "b"]
    assert groups["tail"]["classes"] == ["d", "f"]
    assert groups["head"]["image_AUROC"] == pytest.approx((0.875 + 1.0 + 1.0) / 3)
    assert groups["medium"]["image_AUROC"] == pytest.approx(0.0)  # g undefined, b = 0.0
    assert groups["tail"]["image_AUROC"] == pytest.approx(0.5)  # d undefined
    assert report["gap"]["image_AUROC"] == pytest.approx((0.875 + 2.0) / 3 - 0.5)
    assert report["gap"]["pixel_AUPRO"] == pytest.approx((0.9 + 0.8) / 2 - 0.5)
    assert report["per_class"]["f"]["group"] == "tail"


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        (1, (1, 0, 0)),
        (2, (1, 1, 0)),
        (5, (2, 2, 1)),
        (7, (3, 2, 2)),
        (8, (3, 3, 2)),
        (10, (4, 3, 3)),
        (15, (5, 5, 5)),
    ],
)
def test_group_sizes(n, sizes):
    names = [f"c{i}" for i in range(n)]
    groups = split_groups(names, {c: n - i for i, c in enumerate(names)})
    assert tuple(len(groups[g]) for g in ("head", "medium", "tail")) == sizes
    assert groups["head"] + groups["medium"] + groups["tail"] == names


@pytest.mark.parametrize("n", [2, 5, 7, 8, 12, 15])
def test_groups_match_the_split_file_rule_with_ties(n):
    names = [f"c{i:02d}" for i in range(n)]
    order = list(np.random.default_rng(n).permutation(names))  # a seeded head-first order, as a split has
    counts = {c: (100 if rank < n // 2 else 10) for rank, c in enumerate(order)}  # step profile: many ties
    split = Split("synth", "step", 10.0, 0, tuple(order), counts, {c: () for c in order})
    groups = split_groups(names, counts, class_order=order)
    assert {c: g for g, cs in groups.items() for c in cs} == {c: split.group_of(c) for c in names}
    assert groups["head"] == order[: len(groups["head"])]  # ties follow class_order, not names


def test_json_writes_nan_as_null():
    report = build()
    text = to_json(report)
    data = json.loads(text)
    assert data["per_class"]["d"]["image_AUROC"] is None
    assert data["image_AUROC"] == pytest.approx(report["image_AUROC"])
    assert set(METRICS) <= set(data) and {"per_class", "groups", "gap", "undefined"} <= set(data)
    assert json_safe({"x": (np.float32(0.5), float("inf"))}) == {"x": [0.5, None]}


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="train_counts has no entry"):
        aggregate([0.1], [0], [0], ["a", "b"], {"a": 1}, {})
    with pytest.raises(ValueError, match="class_ids must lie"):
        aggregate([0.1], [0], [2], ["a", "b"], {"a": 1, "b": 1}, {})
    with pytest.raises(ValueError, match="must list exactly"):
        split_groups(["a", "b"], {"a": 1, "b": 1}, class_order=["a"])
    with pytest.raises(ValueError, match="not in class_names"):
        aggregate([0.1], [0], [0], ["a"], {"a": 1}, {"z": {"pixel_AUROC": 0.5}})
