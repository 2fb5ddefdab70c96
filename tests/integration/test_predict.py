"""`ltad predict` on a folder with an exported model: no Ray, no DeepSpeed, real encoder and images."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.integration


def test_predict_folder_writes_maps_overlays_and_csv(exported, tmp_path):
    from ltad.cli import main
    from ltad.eval.outputs import SCORES_COLUMNS

    model_dir, folder, _, _ = exported
    argv = ["predict", "--model", str(model_dir), "--images", str(folder), "--out", str(tmp_path)]
    assert main([*argv, "--maps"]) == 0
    with (tmp_path / "scores.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == SCORES_COLUMNS  # the same columns as ltad evaluate
    assert len(rows) == 4
    for row in rows:
        s = float(row["pred_score_normalised"])
        assert 0.0 <= s <= 1.0
        assert int(row["pred_anomalous"]) == int(s >= 0.5)
        assert row["pred_class"] in ("a", "b")
    gray_map = Image.open(tmp_path / "maps" / "sub" / "gray.png")
    assert gray_map.size == (80, 48)  # maps at the image's own size
    assert sorted(
        str(p.relative_to(tmp_path / "overlays")) for p in (tmp_path / "overlays").rglob("*.png")
    ) == [
        "img0.png",
        "img1.png",
        "img2.png",
        "sub/gray.png",
    ]
    assert not (tmp_path / "errors.csv").exists()


def test_predict_matches_model_scores_and_glob(exported, tmp_path):
    """The exported model, reloaded, gives the same raw scores as the model that was exported."""
    from ltad import Predictor
    from ltad.inference.predict import predict_folder

    model_dir, folder, model, _ = exported
    summary = predict_folder(Predictor.load(model_dir), str(folder / "img*.png"), tmp_path)
    assert (summary.scored, summary.failed) == (3, 0)
    assert not (tmp_path / "maps").exists() and not (tmp_path / "overlays").exists()  # only with --maps
    with (tmp_path / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["key"].rsplit("/", 1)[-1] for r in rows] == ["img0.png", "img1.png", "img2.png"]
    images = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(r["key"]).convert("RGB"), np.float32) / 255).permute(
                2, 0, 1
            )
            for r in rows
        ]
    )
    enc = model.encoder.encode_images(images)
    expected = model.score(enc.patches, enc.global_emb, (64, 64)).pred_score
    assert np.allclose([float(r["pred_score"]) for r in rows], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_predict_errors_are_one_clear_line(exported, tmp_path, capsys):
    from ltad.cli import main

    model_dir, folder, _, _ = exported
    assert main(["predict", "--model", str(tmp_path), "--images", str(folder), "--out", str(tmp_path)]) == 2
    assert (
        "is not an exported ltad model: weights.pt, config.yaml, export.json missing"
        in capsys.readouterr().err
    )
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                "--images",
                str(tmp_path / "*.jpg"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "matches no image files" in capsys.readouterr().err
