"""The quality study job end to end on a tiny dataset (the CI smoke of the study)."""

from __future__ import annotations

import json
import math

from PIL import Image

from jobs import study
from ltad.data.synth import SOURCES


def test_study_smoke_writes_rows_report_and_plots_and_resumes(tmp_path):
    out = tmp_path / "smoke"
    assert study.main(["--config", "configs/study-smoke.yaml", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    methods = [
        "ltad",
        "rec_only",
        "sem_only",
        "no_vae",
        "oracle",
        "knn",
        "ltad_mb",
        "knn_class",
        "knn_class_oracle",
    ]
    assert [r["method"] for r in rows] == methods
    for r in rows:
        assert r["level"] == "exp10" and r["seed"] == 0
        assert 0.0 <= r["image_AUROC"] <= 1.0 and 0.0 <= r["pixel_AUROC"] <= 1.0
        assert set(r["per_class_image_AUROC"]) == set(SOURCES[:4])  # the smoke spec's 4 classes
        assert sorted(r["class_group"].values()) == ["head", "head", "medium", "tail"]
    ltad = next(r for r in rows if r["method"] == "ltad")
    assert ltad["phase2_s"] > 0 and 0.0 <= ltad["class_accuracy"] <= 1.0
    mb = next(r for r in rows if r["method"] == "ltad_mb")
    # exp10 over 12 images: only the classes with >= memory_bank_min_images (4) get a bank
    assert mb["bank_classes"] == sum(n >= 4 for n in mb["train_counts"].values()) >= 1
    # the per-class kNN control: a bank for every class, the 1-image tail class included
    knn_class = next(r for r in rows if r["method"] == "knn_class")
    assert knn_class["bank_classes"] == 4 and 0.0 <= knn_class["class_accuracy"] <= 1.0
    assert "class_accuracy" not in next(r for r in rows if r["method"] == "knn_class_oracle")
    report = (out / "report.md").read_text()
    assert "INCOMPLETE" not in report and "| knn |" in report and "### exp10" in report
    assert "LTAD tail image AUROC" not in report  # targets are checked at ratio 100 only; the smoke has none
    assert "random" in report  # the weights are named: no CLIP weights behind these figures
    for name in ("auroc_vs_ratio.png", "tail_auroc.png"):
        with Image.open(out / "plots" / name) as im:
            assert im.size[0] > 200 and im.size[1] > 200
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 9 and not math.isnan(summary["stats"]["exp10/ltad"]["image_AUROC"][0])
    before = (out / "rows.jsonl").read_text()
    assert study.main(["--config", "configs/study-smoke.yaml", "--out", str(out)]) == 0  # resume: all done
    assert (out / "rows.jsonl").read_text() == before
    other = tmp_path / "other.yaml"
    other.write_text("levels: ['exp:100']\nseeds: [0]\n")
    assert study.main(["--config", str(other), "--out", str(out)]) == 2  # another spec into the same folder
