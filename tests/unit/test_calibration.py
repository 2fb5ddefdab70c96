"""Thresholds calibrated on held-out normals: the order-statistic rule, the fallback, the decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ltad.eval.calibration import (
    CONFIDENCE,
    calibrate,
    describe,
    fpr_bound,
    min_heldout,
    order_threshold,
    pooled_threshold,
    rates,
    thresholds_of,
    weighted_bound,
)
from ltad.inference.export import class_normalisation, decide, normalise


def _binomial_cdf(x: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(x + 1))


def _brute_force_bound(n: int, k: int, confidence: float = 0.9) -> float:
    """Clopper-Pearson upper bound for k - 1 exceedances in n by bisection on the binomial sum:
    the p at which P(Bin(n, p) <= k - 1) = 1 - confidence."""
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if _binomial_cdf(k - 1, n, mid) > 1 - confidence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@pytest.mark.parametrize(
    ("n", "k"), [(1, 1), (5, 1), (19, 1), (45, 1), (50, 1), (50, 2), (200, 5), (300, 11)]
)
def test_fpr_bound_is_the_clopper_pearson_bound_of_a_brute_force_binomial_sum(n, k):
    assert fpr_bound(n, k) == pytest.approx(_brute_force_bound(n, k), abs=1e-9)
    if k == 1:  # the maximum: P(all n below the (1 - p) quantile) = (1 - p)^n = 0.1
        assert fpr_bound(n, 1) == pytest.approx(1 - 0.1 ** (1 / n))
    assert fpr_bound(0) == 1.0 and CONFIDENCE == 0.9


def test_min_heldout_is_where_the_maximum_first_meets_the_target():
    assert min_heldout(0.05) == 45 and min_heldout(0.1) == 22 and min_heldout(0.5) == 4
    for a in (0.01, 0.05, 0.1, 0.2, 0.5):
        n = min_heldout(a)
        assert fpr_bound(n, 1) <= a < fpr_bound(n - 1, 1)
        assert order_threshold(np.arange(n, dtype=float), a)[3]  # covered at n
        t, k, bound, covered = order_threshold(np.arange(n - 1, dtype=float), a)
        assert (t, k, covered) == (n - 2, 1, False) and bound > a  # the maximum, with its own bound


def test_order_threshold_is_the_largest_k_whose_bound_meets_the_target():
    scores = np.arange(1.0, 301.0)[::-1]  # 300 scores 1..300
    t, k, bound, covered = order_threshold(scores, 0.05)
    assert covered and bound <= 0.05 < fpr_bound(300, k + 1)
    assert t == 300 - k + 1 and bound == pytest.approx(_brute_force_bound(300, k), abs=1e-9)
    assert k == 10  # 9 of 300 above the threshold still bound the rate by 5 % at 90 %


def test_the_bound_holds_in_at_least_90_percent_of_calibration_draws():
    """Normal scores N(0, 1): a threshold t flags fresh normals at exactly 1 - Phi(t). Over many
    calibration draws the true rate exceeds the stated bound in at most 10 % of them (+ MC noise)."""
    rng = np.random.default_rng(0)
    draws, missed, above_target = 2000, 0, 0
    for _ in range(draws):
        t, _, bound, covered = order_threshold(rng.normal(size=60), 0.05)
        true_rate = 0.5 * math.erfc(t / math.sqrt(2))
        missed += true_rate > bound
        above_target += true_rate > 0.05
        assert covered
    sd = math.sqrt(0.1 * 0.9 / draws)
    assert missed / draws <= 0.1 + 3 * sd and above_target / draws <= 0.1 + 3 * sd
    assert missed / draws > 0.1 - 3 * sd  # k = 1 of 60: the Beta bound is exact, not loose


def test_weighted_bound_of_one_class_is_the_exact_poisson_bound_and_covers_a_mix():
    from scipy.special import gammaincinv

    for n, x in ((50, 0), (100, 3), (20, 7)):
        got = float(weighted_bound(x / n, x / n**2, 1 / n))
        assert got == pytest.approx(gammaincinv(x + 1, 0.9) / n)
        assert got >= _brute_force_bound(n, x + 1) - 1e-12  # conservative against the binomial one
    # a uniform mix of a 400-normal and a 30-normal class with true rates 2 % and 8 %: true mix 5 %
    rng = np.random.default_rng(3)
    n, p, w = np.array([400, 30]), np.array([0.02, 0.08]), np.array([0.5, 0.5])
    x = rng.binomial(n, p, size=(5000, 2))
    u = w / n
    bounds = weighted_bound((x * u).sum(1), (x * u**2).sum(1), float(u.max()))
    assert np.mean(bounds < float(w @ p)) <= 0.1  # covers the true mix in >= 90 % of draws


def test_pooled_threshold_is_weighted_to_the_deployment_mix_not_the_training_mix():
    rng = np.random.default_rng(2)
    # the head class has 2000 normals at scale 0, the other 100 at scale 3
    scores = np.concatenate([rng.normal(0, 1, 2000), rng.normal(3, 1, 100)])
    pred = np.array([0] * 2000 + [1] * 100)
    uniform = calibrate(scores, pred, ["head", "tail"], 0.05)
    training = calibrate(scores, pred, ["head", "tail"], 0.05, mix={"head": 2000, "tail": 100})
    assert uniform is not None and training is not None
    assert uniform["mix"] == {"head": 0.5, "tail": 0.5} and training["mix"]["head"] == pytest.approx(
        2000 / 2100
    )
    # weighted to the training mix, the pool's threshold follows the head; uniform, half the weight is
    # on the tail's higher scores, so the pool's threshold is higher
    assert uniform["pooled_threshold"] > training["pooled_threshold"] + 1.0
    assert uniform["pooled_covered"] and uniform["pooled_bound"] <= 0.05
    # the rate the uniform pool gives the uniform mix (true rates of N(0, 1) and N(3, 1)) meets the target
    t = uniform["pooled_threshold"]
    mix_rate = 0.5 * (0.5 * math.erfc(t / math.sqrt(2)) + 0.5 * math.erfc((t - 3) / math.sqrt(2)))
    assert mix_rate <= 0.05
    t = training["pooled_threshold"]  # the training mix's pool flags far more of the tail
    assert 0.5 * math.erfc((t - 3) / math.sqrt(2)) > 0.2
    # with every weight on one class the pool is that class's threshold with the Poisson bound
    t_one, b_one, covered = pooled_threshold(scores, pred, np.array([1.0, 0.0]), 0.05)
    assert covered and t_one == pytest.approx(np.quantile(scores[:2000], 0.96), abs=0.15)
    with pytest.raises(ValueError, match="no weight"):
        calibrate(scores, pred, ["head", "tail"], 0.05, mix={"other": 1})


def test_per_class_thresholds_state_n_and_bound_and_small_classes_are_uncovered():
    rng = np.random.default_rng(1)
    # class a: 200 normals at scale ~0, b: 60 at ~10, c: 3 at ~20 (tail), d: none
    scores = np.concatenate([rng.normal(0, 1, 200), rng.normal(10, 1, 60), rng.normal(20, 1, 3)])
    pred = np.array([0] * 200 + [1] * 60 + [2] * 3)
    cal = calibrate(scores, pred, ["a", "b", "c", "d"], 0.05)
    assert cal is not None and cal["n_heldout"] == 263 and cal["min_heldout_per_class"] == 45
    assert cal["confidence"] == 0.9 and cal["uncovered"] == ["c", "d"]
    rows = cal["per_class"]
    for name, n in (("a", 200), ("b", 60)):
        t, k, bound, _ = order_threshold(scores[pred == "ab".index(name)], 0.05)
        assert rows[name] == {
            "threshold": t, "n_heldout": n, "source": "class", "k": k, "fpr_bound": bound, "covered": True
        }  # fmt: skip
        assert bound <= 0.05
    assert 1.0 < rows["a"]["threshold"] < 3.5 and 11.0 < rows["b"]["threshold"] < 13.5
    # tail: above its own maximum, with the bound its 3 normals give; no normals: bound 1
    assert rows["c"] == {
        "threshold": float(scores[-3:].max()), "n_heldout": 3, "source": "fallback", "k": 1,
        "fpr_bound": pytest.approx(1 - 0.1 ** (1 / 3)), "covered": False,
    }  # fmt: skip
    assert rows["d"]["threshold"] == cal["pooled_threshold"] and rows["d"]["fpr_bound"] == 1.0
    assert cal["mix"] == {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3, "d": 0.0}
    # the pool holds a class of 3 normals at a third of the mix: its maximum cannot meet 5 %
    assert (
        not cal["pooled_covered"] and cal["pooled_threshold"] == scores.max() and cal["pooled_bound"] > 0.05
    )
    # fresh normals of the covered classes are flagged at most at their bounds (+ sampling noise)
    for cid, mu in ((0, 0.0), (1, 10.0)):
        fresh = rng.normal(mu, 1, 20000)
        r = rates(fresh, np.zeros(20000), np.full(20000, cid), thresholds_of(cal, ["a", "b", "c", "d"]))
        assert r["fpr"] <= rows["ab"[cid]]["fpr_bound"] + 3 * math.sqrt(0.05 / 20000) and r["tpr"] is None
    text = describe(cal)
    assert "target_fpr 0.05" in text and "a: threshold" in text and "n 200" in text
    assert "c: threshold" in text and "UNCOVERED" in text and "at 90 % confidence" in text
    assert "not guaranteed for the 2 fallback classes" in text


def test_describe_reads_an_older_record_without_bounds():
    old = {
        "rule": "per-class split-conformal quantile", "target_fpr": 0.05, "min_heldout_per_class": 19,
        "fallback": "max(...)", "n_heldout": 20, "pooled_threshold": 1.0, "pooled_bound": 0.05,
        "per_class": {"a": {"threshold": 1.0, "n_heldout": 20, "source": "class"}}, "low": 0.0,
    }  # fmt: skip
    assert "a: threshold 1 (class, 20 held-out)" in describe(old)


def test_no_heldout_scores_means_no_calibration():
    assert calibrate(np.array([]), np.array([]), ["a"], 0.05) is None


def test_decide_uses_the_predicted_class_threshold_and_normalises_to_half_there():
    from ltad.inference.export import _calibrated

    scores = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0])  # 4 a class: min_heldout(0.5)
    cal = calibrate(scores, np.array([0, 0, 0, 0, 1, 1, 1, 1]), ["a", "b"], 0.5)
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
