"""ltad.Predictor, `ltad export` (torch and ONNX) and `ltad predict` outputs on a tiny random model.

No training: a randomly initialised tiny LTAD with cached text and standardisation fitted on random
images is exported with write_export; the ONNX graph of it must match torch within 1e-4.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltad.errors import ConfigError, DataError
from tests.integration.conftest import TINY_MODEL

SIZE = 64
TINY = {**TINY_MODEL, "vae": {"latent": 8, "hidden": 32}}  # the integration tests' tiny model


def _image(seed: int, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(torch export, ONNX export) of one tiny model, and the model."""
    from ltad.config import LTADConfig
    from ltad.inference.export import export_model, write_export
    from ltad.models.state import build_model

    tmp = tmp_path_factory.mktemp("exports")
    cfg = LTADConfig.from_dict({"model": TINY})
    model = build_model(cfg, 2).eval()
    model.cache_text()
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    enc = model.encoder.encode_images(images)
    model.fit_standardisation([(enc.patches, torch.tensor([0, 0, 1, 1]))])
    scores = model.score(enc.patches, enc.global_emb, (SIZE, SIZE)).pred_score.numpy()
    write_export(tmp / "model", model, cfg, ["a", "b"], scores, float(np.median(scores)), {})
    onnx = export_model(tmp / "model", "onnx", tmp / "onnx")
    return tmp / "model", onnx, model


@pytest.fixture(scope="module")
def predictors(exports):
    """(torch, ONNX) Predictors of the two exports, loaded once (batch size 3)."""
    from ltad import Predictor

    torch_dir, onnx_dir, _ = exports
    return Predictor.load(torch_dir, batch_size=3), Predictor.load(onnx_dir, batch_size=3)


def test_onnx_export_matches_torch_within_1e4(exports, predictors):
    _, onnx_dir, _ = exports
    meta = json.loads((onnx_dir / "export.json").read_text())
    assert meta["format"] == "ltad-onnx/1" and meta["onnx"]["check"]["max_abs_map_diff"] <= 1e-4
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["config.yaml", "export.json", "model.onnx"]
    assert [p.format for p in predictors] == ["torch", "onnx"]
    images = [_image(i) for i in range(3)] + [_image(9, 40, 90)]  # dynamic batch, another size
    t, o = (p.predict(images) for p in predictors)
    assert max(float(np.abs(a - b).max()) for a, b in zip(t.maps, o.maps)) <= 1e-4
    assert np.abs(t.scores - o.scores).max() <= 1e-4
    assert t.pred_class == o.pred_class and (t.decisions == o.decisions).all()
    assert o.maps[3].shape == (40, 90)


def test_predictor_takes_paths_pil_and_arrays_and_matches_the_model(exports, predictors, tmp_path):
    from ltad.inference.export import decide

    _, _, model = exports
    arr = _image(3)
    Image.fromarray(arr).save(tmp_path / "x.png")
    p = predictors[0]
    res = p.predict([tmp_path / "x.png", Image.fromarray(arr), arr, arr[..., 0]])
    assert len(res) == 4 and np.allclose(res.scores[:3], res.scores[0])
    x = torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)[None]
    enc = model.encoder.encode_images(x)
    expected = model.score(enc.patches, enc.global_emb, (SIZE, SIZE))
    assert np.allclose(res.scores[0], float(expected.pred_score[0]), rtol=1e-5, atol=1e-6)
    assert np.allclose(res.maps[0], expected.anomaly_map[0].numpy(), atol=1e-5)
    assert res.pred_class[0] == ["a", "b"][int(expected.pred_class[0])]
    assert list(res.decisions) == [decide(p.meta, s, c) for s, c in zip(res.scores, res.pred_class)]
    assert ((res.scores_normalised >= 0.5) == res.decisions).all()
    with pytest.raises(DataError, match="uint8"):
        p.predict([np.zeros((4, 4, 3), np.float32)])


def test_decide_is_the_global_threshold():
    from ltad.inference.export import decide

    meta = {"normalisation": {"threshold": 1.0, "min": 0.0, "max": 2.0}}
    assert decide(meta, 1.0, "a") and not decide(meta, 0.999, "a")


def test_device_is_checked_in_one_sentence(exports, monkeypatch):
    from ltad.inference.predictor import check_device

    with pytest.raises(ConfigError, match="--device 'foo' is not a torch device"):
        check_device("foo")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available on this machine"):
        check_device("cuda")
    assert check_device("cpu").type == "cpu"


def test_predict_cli_on_onnx_nested_names_errors_and_columns(exports, tmp_path, capsys):
    from ltad.cli import main
    from ltad.eval.outputs import SCORES_COLUMNS

    _, onnx_dir, _ = exports
    images = tmp_path / "images"
    for sub in ("x", "y"):
        (images / sub).mkdir(parents=True)
        Image.fromarray(_image(len(sub))).save(images / sub / "same.png")  # same name, two folders
    Image.fromarray(_image(5)).save(images / "x" / "same.jpg")  # same stem, another suffix
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(onnx_dir), "--images", str(images), "--out", str(out), "--maps"]
    assert main(argv) == 0
    with (out / "scores.csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == SCORES_COLUMNS
        rows = list(reader)
    assert len(rows) == 3
    for row in rows:
        s = float(row["pred_score_normalised"])
        assert 0.0 <= s <= 1.0 and int(row["pred_anomalous"]) == int(s >= 0.5)
        assert row["pred_class"] in ("a", "b") and row["class"] == "" and row["gt_label"] == ""
    maps = sorted(str(p.relative_to(out / "maps")) for p in (out / "maps").rglob("*.png"))
    assert maps == ["x/same.jpg.png", "x/same.png.png", "y/same.png"]
    assert sorted(str(p.relative_to(out / "overlays")) for p in (out / "overlays").rglob("*.png")) == maps
    with (out / "errors.csv").open() as f:
        errors = list(csv.DictReader(f))
    assert [e["path"] for e in errors] == [str(images / "broken.png")]
    assert "cannot read image" in errors[0]["error"]
    captured = capsys.readouterr()
    assert "scored 3 of 4 images" in captured.out
    assert "predict: 4/4 images" in captured.err and "/s, " in captured.err  # progress, not a TTY
    # never overwrites: a second run into the same folder is refused
    assert main(argv) == 2
    assert "already holds predictions" in capsys.readouterr().err


def test_predict_cli_exit_codes_for_all_unreadable_and_bad_device(exports, tmp_path, capsys):
    from ltad.cli import main

    torch_dir, _, _ = exports
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"nope")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(torch_dir), "--images", str(images), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ltad predict: error: none of the 1 images could be read")
    assert not (out / "scores.csv").exists() and (out / "errors.csv").is_file()
    for device, words in (("foo", "not a torch device"), ("cuda:99", "cuda")):
        argv = [
            "predict",
            "--model",
            str(torch_dir),
            "--images",
            str(images),
            "--out",
            str(tmp_path / device),
        ]
        assert main([*argv, "--device", device]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and words in lines[0]


def test_scores_csv_is_streamed_row_by_row(predictors, tmp_path, monkeypatch):
    """A crash after the first batch leaves the rows already scored, complete and readable."""
    from ltad.inference.predict import predict_folder

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(_image(i)).save(images / f"{i}.png")
    p = predictors[0]
    monkeypatch.setattr(p, "batch_size", 2)
    real, calls = p.predict_rgb, []

    def crash_on_second(rgbs):
        calls.append(len(rgbs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(rgbs)

    monkeypatch.setattr(p, "predict_rgb", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        predict_folder(p, str(images), tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert [Path(r["key"]).name for r in rows] == ["0.png", "1.png"]


def test_glob_outputs_are_relative_to_its_fixed_folder(tmp_path):
    from ltad.inference.predict import glob_base, output_names

    assert glob_base(str(tmp_path / "a" / "*" / "x*.png")) == tmp_path / "a"
    assert glob_base("*.png") == Path(".")
    files = [tmp_path / "a" / "p" / "x.png", tmp_path / "a" / "q" / "x.png"]
    assert output_names(files, tmp_path / "a") == [Path("p/x.png"), Path("q/x.png")]


def test_export_refuses_a_non_empty_out_and_replaces_an_export_only_when_asked(exports, tmp_path, capsys):
    from ltad.cli import main

    torch_dir, _, _ = exports
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert main(["export", "--model", str(torch_dir), "--format", "torch", "--out", str(busy)]) == 2
    assert "is not empty" in capsys.readouterr().err and (busy / "notes.txt").read_text() == "keep me"
    out = tmp_path / "copy"
    assert main(["export", "--model", str(torch_dir), "--format", "torch", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "export.json", "weights.pt"]
    assert main(["export", "--model", str(torch_dir), "--format", "torch", "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    argv = ["export", "--model", str(torch_dir), "--format", "torch", "--out", str(out), "--overwrite"]
    assert main(argv) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    assert (
        main(["export", "--model", str(tmp_path / "none"), "--format", "onnx", "--out", str(tmp_path / "n")])
        == 2
    )
    assert "not an exported ltad model" in capsys.readouterr().err
