"""The quality gate: a small LTAD training on `ltad synth` data must detect its defects.

In-process (no Ray, DeepSpeed or S3; the study trainer runs the job's objectives and optimiser
settings), about a minute on 2 CPU cores. The bars are set from measured runs, with margin for
run-to-run noise (docs/RESULTS.md, "Quality gate"): a regression in training or scoring that costs
more than the noise fails CI, and so does a fusion that points the wrong way.
"""

from __future__ import annotations

import pytest

from ltad.study.gate import run_gate

MIN_IMAGE_AUROC = 0.70
"""Image AUROC of the fused score the gate's training must reach: measured 0.745 / 0.730 / 0.729 with
training seeds 0 / 1 / 2 (docs/results/quality-gate.jsonl), so the bar sits 0.03 (twice the seed
spread) under the lowest."""
MIN_GAIN_OVER_SHUFFLED = 0.03
"""How far the fused score must beat the same model told a wrong class for every test image: measured
+0.067 / +0.102 / +0.098."""


@pytest.mark.slow
def test_quality_gate_trained_ltad_beats_the_bar_random_and_shuffled_classes(tmp_path):
    r = run_gate(tmp_path, seed=0)
    summary = ", ".join(f"{k} {v:.3f}" for k, v in r.items())
    assert r["ltad"] >= MIN_IMAGE_AUROC, f"fused image AUROC under the gate's {MIN_IMAGE_AUROC}: {summary}"
    assert r["ltad"] > r["random"], f"fused score no better than random: {summary}"
    assert r["ltad"] >= r["shuffled_classes"] + MIN_GAIN_OVER_SHUFFLED, (
        f"no better than shuffled classes: {summary}"
    )
