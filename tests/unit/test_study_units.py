"""Study plumbing: spec parsing, feature normalisation, report statistics and target checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ltad.errors import ConfigError
from ltad.models.feature_norm import FeatureNorm
from ltad.study.report import by_class_size, markdown, stats, targets
from ltad.study.run import append_rows, done_groups, pin_spec
from ltad.study.spec import Level, StudySpec, spec_from_dict


def test_feature_norm_standardises_each_channel_and_starts_as_identity():
    norm = FeatureNorm(3)
    x = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1) + torch.tensor(
        [5.0, -2.0, 0.0]
    ).view(1, 3, 1, 1)
    assert torch.equal(norm(x), x)
    norm.fit([x[:2], x[2:]])
    y = norm(x)
    rows = y.transpose(0, 1).flatten(1)
    assert torch.allclose(rows.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(rows.std(1, unbiased=False), torch.ones(3), atol=1e-4)
    with pytest.raises(ValueError, match="no training patches"):
        FeatureNorm(3).fit([])


def test_level_names_and_parsing():
    assert Level.parse("full").name == "balanced"
    assert Level.parse("exp:100") == Level("exp", 100.0)
    assert Level.parse("step:10").name == "step10"
    with pytest.raises(ConfigError, match="ratio must be a number > 1"):
        Level.parse("exp:1")
    with pytest.raises(ConfigError, match="unknown"):
        Level.parse("zipf:10")


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"colour": 1}, "unknown config key 'colour'"),
        ({"methods": ["ltad", "magic"]}, "'methods' must be some of .*'magic'"),
        ({"seeds": []}, "'seeds' must be a non-empty list"),
        ({"dataset": {"classes": 0}}, "'dataset.classes' must be a positive int"),
        ({"dataset": {"size": 3}}, "unknown config key 'dataset.size'"),
        ({"knn_coreset": 2}, "'knn_coreset' must be in"),
        ({"memory_bank_weight": -1}, "'memory_bank_weight' must be a number >= 0"),
        ({"memory_bank_min_images": 1}, "'memory_bank_min_images' must be an int >= 2"),
    ],
)
def test_spec_rejects_bad_input(bad, match):
    with pytest.raises(ConfigError, match=match):
        spec_from_dict(bad)


def _row(level, seed, method, auroc, tail):
    r = {
        f: auroc
        for f in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "head_image_AUROC", "medium_image_AUROC")
    }
    return {
        "level": level,
        "seed": seed,
        "method": method,
        **r,
        "tail_image_AUROC": tail,
        "gap_image_AUROC": auroc - tail,
    }


def test_stats_targets_and_incomplete_marker():
    rows = [
        _row("exp100", 0, "ltad", 0.80, 0.75),
        _row("exp100", 1, "ltad", 0.90, 0.85),
        _row("exp100", 0, "rec_only", 0.80, 0.70),
        _row("exp100", 1, "rec_only", 0.80, 0.76),
        _row("exp100", 0, "knn", 0.88, 0.6),
        _row("exp100", 1, "knn", 0.84, math.nan),
    ]
    st = stats(rows)
    mean, std, n = st[("exp100", "ltad")]["image_AUROC"]
    assert (round(mean, 6), round(std, 6), n) == (0.85, round(math.sqrt(0.005), 6), 2)
    assert st[("exp100", "knn")]["tail_image_AUROC"][2] == 1  # the NaN seed is left out, not averaged as 0.5
    (t,) = targets(st, ["exp100"])
    assert t["tail_gain_vs_rec_only"] == pytest.approx(0.07) and t["tail_target_met"]
    assert t["mean_gain_vs_knn"] == pytest.approx(-0.01) and not t["knn_target_met"]
    spec = spec_from_dict({"levels": ["exp:100"], "seeds": [0, 1, 2], "methods": ["ltad", "rec_only", "knn"]})
    md = markdown(spec, rows, {"image": "img", "text": "txt"})
    assert "INCOMPLETE: 1 of 3" in md and "exp100/s2" in md
    assert "| ltad | 85.0 ± 7.1 |" in md


def test_rows_resume_and_spec_pinning(tmp_path):
    spec = StudySpec(levels=("exp:10",), seeds=(0,))
    pin_spec(tmp_path, spec)
    pin_spec(tmp_path, spec)  # same spec: accepted
    with pytest.raises(ConfigError, match="holds a study with another config"):
        pin_spec(tmp_path, StudySpec(levels=("exp:100",), seeds=(0,)))
    append_rows(
        tmp_path / "rows.jsonl", [{"level": "exp10", "seed": 0, "method": "knn", "image_AUROC": math.nan}]
    )
    assert done_groups(tmp_path / "rows.jsonl") == {("exp10", 0)}
    assert json.loads((tmp_path / "rows.jsonl").read_text())["image_AUROC"] is None


def test_class_size_table_pairs_cells_and_skips_balanced_and_old_rows():
    counts = {"a": 100, "b": 5, "c": 1}

    def row(level, profile, seed, method, per_class, with_counts=True):
        r = {"level": level, "profile": profile, "seed": seed, "method": method}
        r["per_class_image_AUROC"] = per_class
        return {**r, "train_counts": counts} if with_counts else r

    rows = [
        row("exp100", "exp", 0, "ltad", {"a": 0.9, "b": 0.8, "c": 0.70}),
        row("exp100", "exp", 0, "rec_only", {"a": 0.9, "b": 0.7, "c": 0.66}),
        row("exp100", "exp", 1, "ltad", {"a": 0.8, "b": 0.6, "c": 0.60}),
        row("exp100", "exp", 1, "rec_only", {"a": 0.8, "b": 0.8, "c": 0.50}),
        row("exp100", "exp", 1, "no_vae", {"a": 0.8, "b": 0.7, "c": 0.55}),
        row("balanced", "full", 0, "ltad", {"a": 0.1, "b": 0.1, "c": 0.1}),  # balanced: not pooled
        row("step100", "step", 0, "ltad", {"a": 0.1, "b": 0.1, "c": 0.1}, with_counts=False),  # old row
    ]
    data = by_class_size(rows, ["ltad", "rec_only", "no_vae"])
    assert sorted(data) == ["1-2", "3-9", "30+"]
    assert data["1-2"]["ltad"] == [0.70, 0.60]
    assert data["1-2"]["ltad - rec_only"] == pytest.approx([0.04, 0.10])
    assert data["3-9"]["ltad - rec_only"] == pytest.approx([0.1, -0.2])
    assert data["1-2"]["ltad - no_vae"] == pytest.approx([0.05])  # only seed 1 has both
    assert data["1-2"]["no_vae - rec_only"] == pytest.approx([0.05])
    spec = spec_from_dict({"levels": ["exp:100"], "seeds": [0, 1], "methods": ["ltad", "rec_only"]})
    md = markdown(spec, rows, {})
    assert "| ltad - rec_only | +7.0 ± 3.0 (2) | -5.0 ± 15.0 (2) | +0.0 ± 0.0 (2) |" in md
    assert "| ltad | 65.0 ± 5.0 (2) | 70.0 ± 10.0 (2) | 85.0 ± 5.0 (2) |" in md


def test_run_study_refuses_a_thread_count_below_one_before_any_work(tmp_path):
    from ltad.study.run import run_study

    with pytest.raises(ConfigError, match="--threads must be an int >= 1, got 0"):
        run_study(spec_from_dict({}), tmp_path / "out", threads=0)
    assert not (tmp_path / "out").exists()
