"""Thresholds calibrated on held-out normals: the order-statistic rule, the fallback, the decision."""

from __future__ import annotations

import numpy as np
import pytest

from ltad.eval.calibration import calibrate, conformal_threshold, describe, min_heldout, rates, thresholds_of
from ltad.inference.export import class_normalisation, decide, normalise


def test_min_heldout_is_where_the_order_statistic_exists():
    assert min_heldout(0.05) == 19 and min_heldout(0.1) == 9 and min_heldout(0.5) == 1
    for a in (0.05, 0.1, 0.2, 0.5):
        n = min_heldout(a)
        assert conformal_threshold(np.arange(n, dtype=float), a)[1] == a  # exists at n
        assert conformal_threshold(np.arange(n - 1, dtype=float) if n > 1 else np.zeros(1), a)[1] >= a


def test_conformal_threshold_is_the_ceil_n_plus_1_order_statistic():
    scores = np.arange(1.0, 40.0)  # 39 scores 1..39: k = ceil(40 * 0.95) = 38
    assert conformal_threshold(scores[::-1], 0.05) == (38.0, 0.05)
    # too few: the maximum, with its weaker bound 1/(n+1)
    assert conformal_threshold(np.array([3.0, 1.0, 2.0]), 0.05) == (3.0, 0.25)


def test_conformal_rate_holds_on_fresh_normals():
    """Averaged over many calibration draws, the fresh-normal flag rate is <= target (+ MC noise)."""
    rng = np.random.default_rng(0)
    flagged = []
    for _ in range(400):
        t, _ = conformal_threshold(rng.normal(size=30), 0.1)
        flagged.append(np.mean(rng.normal(size=200) >= t))
    assert np.mean(flagged) <= 0.1 + 3 * np.std(flagged) / np.sqrt(400)
    assert np.mean(flagged) > 0.05  # and not absurdly conservative


def test_per_class_thresholds_follow_each_class_scale_and_small_classes_fall_back():
    rng = np.random.default_rng(1)
    # class 0: 200 held-out at scale ~0, class 1: 200 at ~10, class 2: 3 at ~20 (tail), class 3: none
    scores = np.concatenate([rng.normal(0, 1, 200), rng.normal(10, 1, 200), rng.normal(20, 1, 3)])
    pred = np.array([0] * 200 + [1] * 200 + [2] * 3)
    cal = calibrate(scores, pred, ["a", "b", "c", "d"], 0.05)
    assert cal is not None and cal["n_heldout"] == 403 and cal["min_heldout_per_class"] == 19
    rows = cal["per_class"]
    assert rows["a"]["source"] == rows["b"]["source"] == "class"
    assert 1.0 < rows["a"]["threshold"] < 3.0 and 11.0 < rows["b"]["threshold"] < 13.0
    # tail: above its own maximum (the pool's quantile sits near class b's scale, below class c's)
    assert rows["c"] == {"threshold": float(scores[-3:].max()), "n_heldout": 3, "source": "fallback"}
    assert rows["d"] == {"threshold": cal["pooled_threshold"], "n_heldout": 0, "source": "fallback"}
    assert cal["pooled_threshold"] == conformal_threshold(scores, 0.05)[0]
    # per-class rates on fresh normals of each class are near the target
    fresh = np.concatenate([rng.normal(0, 1, 4000), rng.normal(10, 1, 4000)])
    fresh_pred = np.array([0] * 4000 + [1] * 4000)
    r = rates(fresh, np.zeros(8000), fresh_pred, thresholds_of(cal, ["a", "b", "c", "d"]))
    assert r["fpr"] < 0.05 + 3 * np.sqrt(0.05 * 0.95 * (1 / 8000 + 1 / 200)) and r["tpr"] is None
    assert "target_fpr 0.05" in describe(cal) and "c: threshold" in describe(cal)
    assert "not guaranteed for the 2 fallback classes" in describe(cal)


def test_no_heldout_scores_means_no_calibration():
    assert calibrate(np.array([]), np.array([]), ["a"], 0.05) is None


def test_decide_uses_the_predicted_class_threshold_and_normalises_to_half_there():
    from ltad.inference.export import _calibrated

    scores = np.array([0.0, 1.0, 2.0, 10.0, 11.0])
    cal = calibrate(scores, np.array([0, 0, 0, 1, 1]), ["a", "b"], 0.5)
    meta = {"classes": ["a", "b"], "calibration": _calibrated(cal), "normalisation": {}}
    t_a, t_b = cal["per_class"]["a"]["threshold"], cal["per_class"]["b"]["threshold"]
    assert t_a < 5 < t_b
    assert decide(meta, 5.0, "a") and not decide(meta, 5.0, "b") and decide(meta, 5.0, 0)
    for cls, t in (("a", t_a), ("b", t_b)):
        norm = class_normalisation(meta, cls)
        assert normalise(np.float64(t), norm) == pytest.approx(0.5)
        for raw in (t - 1, t + 1e-6, t + 3):
            assert decide(meta, raw, cls) == (normalise(np.float64(raw), norm) >= 0.5)
    # an uncalibrated (older) export: one global threshold
    old = {"classes": ["a", "b"], "normalisation": {"threshold": 1.0, "min": 0.0, "max": 2.0}}
    assert decide(old, 1.0, "b") and not decide(old, 0.99, "a")


@pytest.mark.parametrize("value", [0.0, 0.6, -0.1])
def test_target_fpr_outside_0_to_half_is_a_config_error(value):
    from ltad.config import LTADConfig
    from ltad.errors import ConfigError

    assert LTADConfig().eval.target_fpr == 0.05
    with pytest.raises(ConfigError, match=r"eval.target_fpr' must be a float in \(0, 0.5\]"):
        LTADConfig.from_dict({"eval": {"target_fpr": value}})
