"""The validation set's pseudo-anomalies (ltad/data/pseudo_defects.py) and the validation AUROC
(ltad/eval/validation.py, metrics.json's `val_image_AUROC`, the evaluation report's line)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltad.data.pseudo_defects import PSEUDO_SEED, pseudo_defect, pseudo_key
from ltad.data.synth import _source, _view
from ltad.eval.metrics import PixelMetricAccumulator, image_auroc
from ltad.eval.outputs import ScoredSample, ShareScores, evaluation_metrics, merge_shares, summary
from ltad.eval.report import validation_lines
from ltad.eval.validation import VAL_METRIC, validation_metrics, validation_value
from ltad.training.scoring import pseudo_batch


def _normal(k: int = 0, size: int = 64, i: int = 0) -> np.ndarray:
    src, _ = _source(k, int(size * 1.15))
    return np.clip(_view(src, np.random.default_rng([1, k, i]), size), 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("k", range(6))
def test_pseudo_defect_is_deterministic_and_changes_pixels_only_inside_its_mask(k):
    image = _normal(k)
    out, mask = pseudo_defect(image, f"cls/val/{k}")
    again, mask2 = pseudo_defect(image.copy(), f"cls/val/{k}")
    assert np.array_equal(out, again) and np.array_equal(mask, mask2)
    assert out.shape == image.shape and out.dtype == image.dtype and mask.dtype == bool
    changed = np.any(out != image, axis=-1)
    assert not changed[~mask].any(), "a pixel outside the mask changed"
    assert 0.004 <= mask.mean() <= 0.25, "one local region, never empty, never most of the image"
    assert changed[mask].mean() > 0.5 and np.abs(out - image)[mask].mean() > 0.03  # visible
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(image, _normal(k)), "the input is not modified"


def test_pseudo_defect_depends_on_key_and_seed_only():
    image = _normal(3)
    a, ma = pseudo_defect(image, "a")
    b, mb = pseudo_defect(image, "b")
    c, mc = pseudo_defect(image, "a", seed=PSEUDO_SEED + 1)
    assert not np.array_equal(ma, mb) and not np.array_equal(ma, mc)
    with pytest.raises(ValueError, match="square H x W x 3"):
        pseudo_defect(image[:, :10], "a")


def test_pseudo_batch_matches_the_per_image_defect_in_chw():
    images = np.stack([_normal(k, 32) for k in range(3)])
    keys = ["x/0", "x/1", "x/2"]
    out = pseudo_batch(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), keys)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    for i, key in enumerate(keys):
        expected, _ = pseudo_defect(images[i], key)
        assert np.allclose(out[i].permute(1, 2, 0).numpy(), expected)
    assert pseudo_key("x/0") == "x/0#pseudo"


def test_validation_auroc_pools_all_images_and_gives_classes_with_both_kinds():
    normal = [0.1, 0.2, 0.3, 0.5, 0.4]
    normal_c = [0, 0, 0, 1, 1]
    pseudo = [0.6, 0.25, 0.9, 0.45]
    pseudo_c = [0, 0, 1, 1]
    v = validation_metrics(normal, normal_c, pseudo, pseudo_c, ["a", "b", "c"])
    labels = [0] * 5 + [1] * 4
    assert v["image_AUROC"] == pytest.approx(image_auroc(normal + pseudo, labels))
    assert v["per_class"]["a"] == pytest.approx(image_auroc([0.1, 0.2, 0.3, 0.6, 0.25], [0, 0, 0, 1, 1]))
    assert v["per_class"]["b"] == pytest.approx(0.75)  # 3 of 4 (pseudo, normal) pairs in order
    assert "c" not in v["per_class"] and (v["n_normal"], v["n_pseudo"]) == (5, 4)
    assert "no test label" in v["rule"]
    empty = validation_metrics([], [], [], [], ["a"])
    assert math.isnan(empty["image_AUROC"]) and empty["per_class"] == {}
    with pytest.raises(ValueError, match="one class id per score"):
        validation_metrics([0.1], [], [], [], ["a"])


def test_metrics_json_gets_the_validation_auroc_without_reading_test_labels():
    """The validation value comes from the held-out and pseudo scores alone: flipping every test label
    leaves it unchanged, and it reaches the summary Tune receives and the report."""
    acc = PixelMetricAccumulator(50, 0.3, value_range=(0.0, 1.0))
    acc.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool))
    heldout = [ScoredSample(f"v{i}", 0, 0, s, 0) for i, s in enumerate([0.1, 0.2, 0.3])]
    pseudo = [ScoredSample(pseudo_key(f"v{i}"), 0, 1, s, 0) for i, s in enumerate([0.35, 0.15, 0.9])]

    def metrics(test_labels):
        samples = [ScoredSample(f"t{i}", 0, lab, 0.5 + i, 0) for i, lab in enumerate(test_labels)]
        merged = merge_shares([ShareScores(samples, [acc], heldout=heldout[:2], pseudo=pseudo[:1]),
                               ShareScores([], [PixelMetricAccumulator(50, 0.3, value_range=(0.0, 1.0))],
                                           heldout=heldout[2:], pseudo=pseudo[1:])])  # fmt: skip
        return evaluation_metrics(merged, ["only"], {"only": 3})

    a, b = metrics([0, 1]), metrics([1, 0])
    expected = image_auroc([0.1, 0.2, 0.3, 0.35, 0.15, 0.9], [0, 0, 0, 1, 1, 1])
    assert a[VAL_METRIC] == b[VAL_METRIC] == pytest.approx(expected)
    assert a["image_AUROC"] != b["image_AUROC"]
    assert summary(a)[VAL_METRIC] == a[VAL_METRIC] and validation_value(a) == a[VAL_METRIC]
    line = validation_lines(a["validation"])[0]
    assert "3 held-out normals, 3 pseudo-anomalies" in line and f"{100 * expected:.1f} %" in line
    none = metrics([0, 1])
    none["validation"] = validation_metrics([], [], [], [], ["only"])
    assert "n/a" in validation_lines(none["validation"])[0]
    assert validation_value({}) is None and validation_value({VAL_METRIC: float("nan")}) is None


def test_validating_during_phase2_leaves_the_run_identity_unchanged():
    """Validation reads the model and never changes it: resuming with another interval is allowed."""
    from ltad.config import LTADConfig
    from ltad.training.identity import _training_inputs

    base = LTADConfig()
    other = base.with_overrides(["phase2.validate_every=5"])
    assert other.phase2.validate_every == 5
    assert _training_inputs(base, "h", "phase2") == _training_inputs(other, "h", "phase2")
    assert "phase2.validate_every" not in _training_inputs(other, "h", "phase2")


def test_loop_validates_at_the_first_logged_step_after_each_interval(monkeypatch):
    """run_steps calls `validate` at logged steps only, at most once per `validate_every` interval, and
    its (unprefixed) values join that step's report and history; without it nothing changes."""
    from ltad.training import loop
    from ltad.training.preemption import PreemptionNotice

    reports: list[tuple[int, dict]] = []
    monkeypatch.setattr(loop, "restore", lambda engine, root, history: 0)
    monkeypatch.setattr(loop, "_report", lambda metrics, step: reports.append((step, metrics)))
    monkeypatch.setattr(
        loop, "save_and_report", lambda engine, step, metrics, **kw: reports.append((step, metrics))
    )

    class Engine:
        device = torch.device("cpu")

        def __init__(self):
            self.optimizer = type("O", (), {"param_groups": [{"lr": 0.1}]})()

        def __call__(self, batch):
            return torch.tensor(1.0), {}

        def backward(self, loss):
            pass

        def step(self):
            pass

    def batches(start):
        while True:
            yield {"class_id": torch.zeros(2, dtype=torch.long)}

    calls: list[int] = []

    def validate():
        calls.append(len(reports))
        return {VAL_METRIC: 0.5 + len(calls) / 10}

    spec = loop.LoopSpec("phase2", steps=10, log_every=2, checkpoint_every=100, validate_every=3)
    quiet = PreemptionNotice(lambda: None)  # no Ray Train here: no preemption notice
    loop.run_steps(Engine(), batches, spec, rank=1, validate=validate, notice=quiet)
    steps = {step: m for step, m in reports}
    assert sorted(steps) == [2, 4, 6, 8, 10] and len(calls) == 3  # after 3 -> 4, after 6 -> 6, after 9 -> 10
    assert [s for s, m in reports if VAL_METRIC in m] == [4, 6, 10]
    assert steps[4][VAL_METRIC] == pytest.approx(0.6) and "phase2/loss" in steps[4]
    assert "phase2/val_image_AUROC" not in steps[4]
    reports.clear()
    loop.run_steps(Engine(), batches, spec, rank=1, notice=quiet)
    assert not any(VAL_METRIC in m for _, m in reports)
