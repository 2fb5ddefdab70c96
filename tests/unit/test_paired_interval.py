"""Paired t-intervals and the verdicts the study's targets are worded with."""

import math

import pytest

from ltad.study.claims import goal_claims
from ltad.study.paired import paired_class_cells, paired_interval, paired_rows, t_quantile


@pytest.mark.parametrize(
    ("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452), (200, 1.9719)]
)
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def test_interval_of_three_seeds_matches_hand_computation():
    # step100 ltad - knn in the committed study: -0.1, +2.5, +3.4 points
    p = paired_interval([0.5, 0.525, 0.534], [0.501, 0.5, 0.5])
    diffs = [-0.001, 0.025, 0.034]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    assert p.n == 3 and p.mean == pytest.approx(mean)
    assert (p.low, p.high) == pytest.approx((mean - half, mean + half), abs=1e-6)
    assert p.verdict(0.0, strict=True) == "not shown"


def test_verdicts():
    clear = paired_interval([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    assert clear.verdict(0.0, strict=True) == "met"
    assert clear.verdict(0.5) == "not met"
    assert paired_interval([0.5], [0.4]).verdict(0.0) == "not shown"  # one pair: no interval


def test_describe_and_errors():
    p = paired_interval([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    assert p.describe().startswith("+10.7 points, 95 % CI ")
    with pytest.raises(ValueError, match="equal lengths"):
        paired_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="0.5 < p < 1"):
        t_quantile(0.2, 3)


def test_paired_rows_pairs_by_seed_and_skips_missing():
    rows = [
        {"level": "x", "method": "a", "seed": 0, "f": 0.8},
        {"level": "x", "method": "b", "seed": 0, "f": 0.7},
        {"level": "x", "method": "a", "seed": 1, "f": 0.9},
        {"level": "x", "method": "b", "seed": 1, "f": 0.7},
        {"level": "x", "method": "a", "seed": 2, "f": 0.9},  # no b at seed 2
        {"level": "y", "method": "b", "seed": 2, "f": 0.1},
    ]
    p = paired_rows(rows, "x", "a", "b", "f")
    assert p is not None and p.n == 2 and p.diffs == pytest.approx((0.1, 0.2))
    assert paired_rows(rows, "x", "a", "c", "f") is None


def _cell_row(method, seed, per_class, level="exp100"):
    groups = {"a": "head", "b": "tail", "c": "tail"}
    return {
        "level": level,
        "method": method,
        "seed": seed,
        "image_AUROC": sum(per_class.values()) / len(per_class),
        "per_class_image_AUROC": per_class,
        "class_group": groups,
    }


def test_tail_cells_pair_each_tail_class_of_each_seed_and_skip_head_classes():
    rows = [
        _cell_row("ltad", 0, {"a": 0.9, "b": 0.80, "c": 0.70}),
        _cell_row("rec_only", 0, {"a": 0.1, "b": 0.70, "c": 0.65}),
        _cell_row("ltad", 1, {"a": 0.9, "b": 0.90, "c": float("nan")}),
        _cell_row("rec_only", 1, {"a": 0.1, "b": 0.85, "c": 0.60}),
    ]
    p = paired_class_cells(rows, "exp100", "ltad", "rec_only")
    assert p is not None and p.n == 3  # (0, b), (0, c), (1, b); the head class and the NaN are left out
    assert sorted(p.diffs) == pytest.approx([0.05, 0.05, 0.1])
    assert paired_class_cells(rows, "exp10", "ltad", "rec_only") is None
    no_groups = [{k: v for k, v in r.items() if k != "class_group"} for r in rows]
    assert paired_class_cells(no_groups, "exp100", "ltad", "rec_only") is None


def test_goal_claims_cover_every_level_against_knn_and_the_tail_at_ratio_100():
    rows = []
    for lv in ("balanced", "exp100"):
        for seed, gain in enumerate((0.02, 0.03, 0.025)):
            rows.append(_cell_row("ltad", seed, {"a": 0.9, "b": 0.8 + gain, "c": 0.7 + gain}, lv))
            rows.append(_cell_row("rec_only", seed, {"a": 0.9, "b": 0.8, "c": 0.7}, lv))
            rows.append({**_cell_row("knn", seed, {"a": 0.5, "b": 0.5, "c": 0.5}, lv)})
    claims = goal_claims(rows, ["balanced", "exp100"], methods=("ltad",))
    assert [(c.level, c.second, c.figure) for c in claims] == [
        ("balanced", "knn", "image_AUROC"),
        ("exp100", "knn", "image_AUROC"),
        ("exp100", "rec_only", "tail_cells"),
    ]
    assert claims[0].verdict == "met"
    tail = claims[2]
    assert tail.paired.n == 6 and tail.verdict == "not met"  # +2.5 points on average, under the +3 bar
    assert "per tail class" in tail.sentence() and "target ≥ +3" in tail.sentence()
