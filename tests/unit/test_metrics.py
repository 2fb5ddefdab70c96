"""Metrics against scikit-learn, brute force and an independent AUPRO reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.measure import label as sk_label
from sklearn.metrics import roc_auc_score

from ltad.eval.metrics import (
    PixelMetricAccumulator,
    StreamingPixelAccumulator,
    f1_max_threshold,
    image_auroc,
    image_f1_max,
    pixel_aupro,
    pixel_auroc,
)


def reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Threshold sweep: every distinct score from the top, skimage components, explicit segment clipping."""
    region_masks = []
    for i, image_mask in enumerate(masks.astype(bool)):
        lab = sk_label(image_mask, connectivity=2)
        for r in range(1, lab.max() + 1):
            region = np.zeros(masks.shape, dtype=bool)
            region[i] = lab == r
            region_masks.append(region)
    normal = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fpr = pred[normal].mean()
        pro = np.mean([pred[r].mean() for r in region_masks])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_at) / 2
    return area / limit


def brute_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = np.sum(pred & (labels == 1))
        fp = np.sum(pred & (labels == 0))
        fn = np.sum(~pred & (labels == 1))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn)
        if precision + recall:
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def blob_maps(rng: np.random.Generator, n: int, size: int, defect_share: float = 0.5):
    """Realistic maps: smooth noisy background, elliptic defects of several sizes with raised scores."""
    maps = gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2)) * 3
    masks = np.zeros((n, size, size), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        if rng.random() > defect_share:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(2, size // 4, 2)
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            masks[i][blob] = 1
            maps[i][blob] += rng.uniform(0.5, 3.0)
    return maps.astype(np.float32), masks


# --- image AUROC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_image_auroc_matches_sklearn_on_random_scores_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
    if seed % 2:
        scores = np.round(scores, 1)  # many ties
    assert abs(image_auroc(scores, labels) - roc_auc_score(labels, scores)) < 1e-6


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),  # inverted: reported as is, never flipped
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # constant scores: a real 0.5
        ([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1], 0.875),  # one tie across classes counts half
        ([0.3, 0.1, 0.7, 0.2, 0.4], [0, 0, 1, 0, 0], 1.0),  # one positive
        ([0.3, 0.1, 0.2, 0.2, 0.4], [0, 0, 1, 0, 0], 0.375),  # one positive tied with a negative
    ],
)
def test_image_auroc_hand_built(scores, labels, expected):
    assert image_auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_image_auroc_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    scores, labels = rng.normal(size=100), rng.integers(0, 2, 100)
    expected = roc_auc_score(labels, scores)
    assert image_auroc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(
        expected, abs=1e-12
    )
    half = torch.from_numpy(scores).to(torch.bfloat16)
    assert image_auroc(half, torch.from_numpy(labels).bool()) == pytest.approx(
        roc_auc_score(labels, half.float().numpy()), abs=1e-12
    )


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1], []])
def test_image_auroc_undefined_is_nan_not_half(labels):
    assert math.isnan(image_auroc(np.arange(len(labels), dtype=float), labels))


def test_bad_inputs_raise_one_clear_error():
    with pytest.raises(ValueError, match="only 0 and 1"):
        image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="differ in length"):
        image_auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        image_auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="N x H x W"):
        pixel_auroc(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="fpr_limit"):
        pixel_aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), fpr_limit=0.0)


# --- F1-max --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_image_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 120))
    labels = rng.integers(0, 2, n)
    labels[0] = 1
    scores = np.round(rng.normal(size=n) + labels, 1 if seed % 2 else 6)
    assert image_f1_max(scores, labels) == pytest.approx(brute_f1_max(scores, labels), abs=1e-12)
    t = f1_max_threshold(scores, labels)
    pred = scores >= t
    tp = np.sum(pred & (labels == 1))
    assert 2 * tp / (pred.sum() + labels.sum()) == pytest.approx(image_f1_max(scores, labels), abs=1e-12)


def test_image_f1_max_edge_cases():
    assert math.isnan(image_f1_max([0.1, 0.2], [0, 0]))
    assert image_f1_max([0.1, 0.2], [1, 1]) == 1.0
    assert image_f1_max([0.9, 0.1], [0, 1]) == pytest.approx(2 / 3)  # flag both: P=1/2, R=1


# --- pixel AUROC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_pixel_auroc_matches_sklearn(seed):
    maps, masks = blob_maps(np.random.default_rng(seed), 4, 24)
    masks[0, :3, :3] = 1
    if seed % 2:
        maps = np.round(maps, 1)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert abs(pixel_auroc(maps, masks) - expected) < 1e-6
    # N x 1 x H x W torch tensors as the evaluation stream yields them
    tm = torch.from_numpy(maps)[:, None]
    assert abs(pixel_auroc(tm, torch.from_numpy(masks).float()[:, None]) - expected) < 1e-6


def test_pixel_metrics_undefined_without_defect_pixels():
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert math.isnan(pixel_auroc(maps, np.zeros((2, 8, 8))))
    assert math.isnan(pixel_aupro(maps, np.zeros((2, 8, 8))))
    assert math.isnan(pixel_aupro(maps, np.ones((2, 8, 8))))


# --- AUPRO ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_aupro_matches_reference_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    maps, masks = blob_maps(rng, 3, 16, defect_share=0.7)
    masks[0, 5:9, 5:8] = 1
    masks[1, 0, 0] = 1
    if seed % 2:
        maps = np.round(maps, 1)
    limit = [0.3, 0.05, 1.0, 0.5][seed % 4]
    assert abs(pixel_aupro(maps, masks, limit) - reference_aupro(maps, masks, limit)) < 1e-6


def test_aupro_perfect_and_inverted_maps():
    masks = np.zeros((2, 10, 10), dtype=np.uint8)
    masks[0, 2:4, 2:4] = 1
    masks[1, 5:9, 1:9] = 1
    assert pixel_aupro(masks.astype(float), masks) == pytest.approx(1.0, abs=1e-12)
    assert pixel_aupro(1.0 - masks, masks) == pytest.approx(0.0, abs=1e-12)
    assert pixel_aupro(1.0 - masks, masks) == pytest.approx(
        reference_aupro(1.0 - masks, masks, 0.3), abs=1e-12
    )


def test_aupro_one_region_partly_found():
    masks = np.zeros((1, 10, 10), dtype=np.uint8)
    masks[0, 2:6, 2:6] = 1
    maps = np.zeros((1, 10, 10))
    maps[0, 2:4, 2:6] = 1.0  # half of the region above every normal pixel
    # curve (0,0) -> (0,0.5) -> (1,1): area to 0.3 is 0.3*0.5 + 0.3**2*0.5/2
    assert pixel_aupro(maps, masks) == pytest.approx((0.15 + 0.0225) / 0.3, abs=1e-12)


def test_aupro_regions_of_different_sizes_weigh_equally():
    masks = np.zeros((1, 20, 20), dtype=np.uint8)
    masks[0, 0:2, 0:2] = 1  # small region, found
    masks[0, 8:18, 8:18] = 1  # large region, missed (scored like normal pixels)
    maps = np.zeros((1, 20, 20))
    maps[0, 0:2, 0:2] = 1.0
    assert pixel_aupro(maps, masks) == pytest.approx((0.15 + 0.0225) / 0.3, abs=1e-12)
    assert pixel_aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks, 0.3), abs=1e-12)


def test_aupro_uses_8_connectivity_within_images_only():
    masks = np.zeros((2, 6, 6), dtype=np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = 1  # one region by 8-connectivity (two by 4)
    maps = np.zeros((2, 6, 6))
    maps[0, 0, 0] = 1.0
    p = 1 / 3  # PRO after the first threshold
    assert pixel_aupro(maps, masks) == pytest.approx(p + 0.15 * (1 - p), abs=1e-12)
    # the same region in two images is two regions, not one across the stack
    masks[1] = masks[0]
    maps[1] = maps[0]
    maps[1, 0, 0] = 0.0
    assert pixel_aupro(maps, masks) == pytest.approx(1 / 6 + 0.15 * (5 / 6), abs=1e-12)


# --- binned accumulator --------------------------------------------------------------------------------


def feed(acc: PixelMetricAccumulator, maps, masks, batch: int = 4, observe: bool = False):
    if observe:
        for i in range(0, len(maps), batch):
            acc.observe(maps[i : i + batch])
    for i in range(0, len(maps), batch):
        acc.update(maps[i : i + batch], masks[i : i + batch])


@pytest.mark.parametrize("seed", range(3))
def test_binned_metrics_within_bound_of_exact(seed):
    rng = np.random.default_rng(seed)
    maps, masks = blob_maps(rng, 24, 64)
    exact = {"pixel_AUROC": pixel_auroc(maps, masks), "pixel_AUPRO": pixel_aupro(maps, masks)}
    two_pass = PixelMetricAccumulator(bins=1000)
    feed(two_pass, maps, masks, observe=True)
    lo, hi = np.quantile(maps, [0.001, 0.995])  # a caller's range that clips values at both ends
    fixed = PixelMetricAccumulator(bins=1000, value_range=(lo, hi))
    feed(fixed, torch.from_numpy(maps), torch.from_numpy(masks), batch=5)
    for acc in (two_pass, fixed):
        got, bound = acc.compute(), acc.error_bounds()
        for key, value in exact.items():
            assert abs(got[key] - value) <= bound[key] + 1e-12
            assert abs(got[key] - value) < 1e-3
            assert bound[key] < 5e-3


def test_binned_bound_holds_with_few_bins_and_ties():
    rng = np.random.default_rng(7)
    maps, masks = blob_maps(rng, 8, 32)
    maps = np.round(maps, 1)
    acc = PixelMetricAccumulator(bins=12)
    feed(acc, maps, masks, observe=True)
    got, bound = acc.compute(), acc.error_bounds()
    assert abs(got["pixel_AUROC"] - pixel_auroc(maps, masks)) <= bound["pixel_AUROC"] + 1e-12
    assert abs(got["pixel_AUPRO"] - pixel_aupro(maps, masks)) <= bound["pixel_AUPRO"] + 1e-12
    assert bound["pixel_AUPRO"] > 1e-3  # coarse bins: the bound is not vacuously small


def test_binned_is_exact_when_each_distinct_score_has_its_own_bin():
    rng = np.random.default_rng(3)
    maps, masks = blob_maps(rng, 6, 16)
    maps = np.round(maps).clip(-3, 6) + 0.5  # values x.5 in [-2.5, 6.5]
    acc = PixelMetricAccumulator(bins=10, value_range=(-3.0, 7.0))
    feed(acc, maps, masks)
    got = acc.compute()
    assert got["pixel_AUROC"] == pytest.approx(pixel_auroc(maps, masks), abs=1e-12)
    assert got["pixel_AUPRO"] == pytest.approx(pixel_aupro(maps, masks), abs=1e-12)


def test_accumulators_merge_and_report_undefined():
    rng = np.random.default_rng(1)
    maps, masks = blob_maps(rng, 8, 32)
    whole, a, b = (PixelMetricAccumulator(bins=100, value_range=(-5, 8)) for _ in range(3))
    feed(whole, maps, masks)
    feed(a, maps[:3], masks[:3])
    feed(b, maps[3:], masks[3:])
    a.merge(b)
    assert a.compute() == pytest.approx(whole.compute(), abs=1e-12)
    empty = PixelMetricAccumulator(bins=100, value_range=(0, 1))
    empty.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))
    assert all(math.isnan(v) for v in empty.compute().values())
    with pytest.raises(ValueError, match="no value range"):
        PixelMetricAccumulator().update(maps, masks)
    with pytest.raises(ValueError, match="observe"):
        whole.observe(maps)
    with pytest.raises(ValueError, match="value_range"):
        PixelMetricAccumulator(value_range=(1.0, 1.0))


def test_constant_maps_give_a_real_half_in_both_paths():
    maps = np.full((2, 8, 8), 0.7, dtype=np.float32)
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[1, 2:5, 2:5] = 1
    acc = PixelMetricAccumulator(bins=50)
    feed(acc, maps, masks, observe=True)
    assert pixel_auroc(maps, masks) == pytest.approx(0.5, abs=1e-12)
    assert acc.compute()["pixel_AUROC"] == pytest.approx(0.5, abs=1e-12)
    # one tie group: PRO rises along the chord from (0, 0) to (1, 1), so AUPRO(0.3) = 0.15
    assert pixel_aupro(maps, masks) == pytest.approx(0.15, abs=1e-12)
    assert acc.compute()["pixel_AUPRO"] == pytest.approx(0.15, abs=1e-12)


# --- streaming accumulator (one pass, no range known beforehand) -------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_streaming_within_bound_of_exact_and_of_the_fixed_range_path(seed):
    rng = np.random.default_rng(seed)
    maps, masks = blob_maps(rng, 24, 64)
    maps[: len(maps) // 2] *= 0.1  # the first batches see a narrow range: the bins must widen later
    exact = {"pixel_AUROC": pixel_auroc(maps, masks), "pixel_AUPRO": pixel_aupro(maps, masks)}
    stream = StreamingPixelAccumulator(bins=1000)
    feed(stream, maps, masks, batch=3)
    # the earlier evaluation path: fp16 maps kept, then bins over their global min..max
    half = maps.astype(np.float16).astype(np.float32)
    fixed = PixelMetricAccumulator(bins=1000, value_range=(float(half.min()), float(half.max())))
    feed(fixed, half, masks)
    got, bound = stream.compute(), stream.error_bounds()
    old, old_bound = fixed.compute(), fixed.error_bounds()
    assert stream.bin_width <= 1.02 * (maps.max() - maps.min()) / 1000
    for key, value in exact.items():
        assert abs(got[key] - value) <= bound[key] + 1e-12
        assert bound[key] < 5e-3
        # today's figure (fp16 maps, fixed range) within both bounds plus the fp16 rounding effect
        assert abs(got[key] - old[key]) <= bound[key] + old_bound[key] + 1e-3


def test_streaming_merge_in_any_order_equals_one_accumulator():
    rng = np.random.default_rng(5)
    maps, masks = blob_maps(rng, 12, 32)
    maps[6:] = maps[6:] * 40 + 100  # the second worker's values lie far from the first one's
    whole = StreamingPixelAccumulator(bins=200)
    feed(whole, maps, masks)
    a, b, empty = (StreamingPixelAccumulator(bins=200) for _ in range(3))
    feed(a, maps[:6], masks[:6])
    feed(b, maps[6:], masks[6:])
    empty.merge(b)
    empty.merge(a)
    assert empty.compute() == pytest.approx(whole.compute(), abs=1e-12)
    assert empty.exp == whole.exp
    assert int(empty.normal.sum() + empty.defect.sum()) == maps.size
    a.merge(StreamingPixelAccumulator(bins=200))  # an idle worker's empty accumulator
    with pytest.raises(ValueError, match="different bins"):
        a.merge(StreamingPixelAccumulator(bins=100))


def test_streaming_memory_is_bounded_and_constant_maps_work():
    maps = np.full((2, 8, 8), 0.7, dtype=np.float32)
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[1, 2:5, 2:5] = 1
    acc = StreamingPixelAccumulator(bins=50)
    feed(acc, maps, masks)
    assert acc.compute()["pixel_AUROC"] == pytest.approx(0.5, abs=1e-12)
    assert acc.compute()["pixel_AUPRO"] == pytest.approx(0.15, abs=1e-12)
    rng = np.random.default_rng(2)
    for _ in range(20):  # many batches over a growing range: the state never grows
        acc.update(rng.normal(size=(2, 8, 8)) * rng.uniform(1, 1e4), masks)
    assert acc.normal.size == acc.defect.size == acc.region_share.size == 100
    assert int(acc.normal.sum() + acc.defect.sum()) == 21 * maps.size
    assert all(math.isnan(v) for v in StreamingPixelAccumulator().compute().values())
