"""ltad.Predictor, `ltad export` (torch, ONNX, OpenVINO) and `ltad predict` outputs on a tiny random model.

No training: a randomly initialised tiny LTAD with cached text and standardisation fitted on random
images is exported with write_export; its ONNX and OpenVINO graphs (uint8 in, decision out) must
match torch within 1e-4 and decide as `decide` does.
"""

from __future__ import annotations

import csv
import json
import warnings
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
    """(torch export, ONNX export, OpenVINO export) of one tiny model, and the model."""
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
    openvino = export_model(tmp / "model", "openvino", tmp / "openvino")
    return tmp / "model", onnx, openvino, model


@pytest.fixture(scope="module")
def predictors(exports):
    """(torch, ONNX, OpenVINO) Predictors of the three exports, loaded once (batch size 3)."""
    from ltad import Predictor

    return tuple(Predictor.load(folder, batch_size=3) for folder in exports[:3])


def test_onnx_and_openvino_exports_match_torch_within_1e4(exports, predictors):
    _, onnx_dir, ov_dir, _ = exports
    meta = json.loads((onnx_dir / "export.json").read_text())
    assert meta["format"] == "ltad-onnx/2" and meta["onnx"]["check"]["max_abs_map_diff"] <= 1e-4
    assert meta["onnx"]["input"]["dtype"] == "uint8" and meta["onnx"]["input"]["shape"] == [
        "batch",
        64,
        64,
        3,
    ]
    assert [o["name"] for o in meta["onnx"]["outputs"]][3:6] == [
        "pred_score_normalised",
        "threshold",
        "pred_anomalous",
    ]
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["config.yaml", "export.json", "model.onnx"]
    ov_meta = json.loads((ov_dir / "export.json").read_text())
    assert ov_meta["format"] == "ltad-openvino/1" and ov_meta["openvino"]["check"]["max_abs_map_diff"] <= 1e-4
    assert ov_meta["openvino"]["check"]["runtime"].startswith("openvino ")
    assert sorted(p.name for p in ov_dir.iterdir()) == [
        "config.yaml",
        "export.json",
        "model.bin",
        "model.xml",
    ]
    assert [p.format for p in predictors] == ["torch", "onnx", "openvino"]
    images = [_image(i) for i in range(3)] + [_image(9, 40, 90)]  # dynamic batch, another size
    t, *graphs = (p.predict(images) for p in predictors)
    for g in graphs:
        assert max(float(np.abs(a - b).max()) for a, b in zip(t.maps, g.maps)) <= 1e-4
        assert np.abs(t.scores - g.scores).max() <= 1e-4
        assert np.abs(t.scores_normalised - g.scores_normalised).max() <= 1e-4
        assert t.pred_class == g.pred_class and (t.decisions == g.decisions).all()
        assert g.maps[3].shape == (40, 90)


def test_the_graph_decides_exactly_as_decide_and_normalises_as_normalise():
    """DeployGraph's decision tables against `decide`/`normalise` on float32 scores at and around
    per-class thresholds that float32 cannot represent, with a stand-in scoring path."""
    from ltad.inference.export import class_norms, decide, normalise
    from ltad.inference.graphs import decision_tables
    from ltad.models.scoring import DEPLOY_OUTPUTS, DeployGraph

    meta = {
        "classes": ["a", "b", "c"],
        "normalisation": {"threshold": 0.3, "min": 0.0, "max": 0.6},
        "calibration": {
            "per_class": {
                "a": {"normalisation": {"threshold": 0.1 + 1e-9, "min": -0.2, "max": 0.4}},
                "b": {"normalisation": {"threshold": 1.0 / 3.0, "min": 0.3, "max": 0.5}},
                "c": {"normalisation": {"threshold": 2.0, "min": 2.0, "max": 2.0}},  # zero-width spans
            }
        },
    }
    rows = []
    for c in range(len(meta["classes"])):
        t = np.float32(class_norms(meta)[c]["threshold"])
        near = [np.nextafter(t, np.float32(k * np.inf)) for k in (-1, 1)]
        rows += [(c, v) for v in (t, *near, t - np.float32(0.05), t + np.float32(0.05))]
    cls = torch.tensor([c for c, _ in rows])
    scores = torch.tensor([v for _, v in rows], dtype=torch.float32)

    class Stub(torch.nn.Module):
        size = 4

        def forward(self, x):
            return scores[:, None, None].expand(-1, 4, 4).clone(), scores, cls

    tables = [torch.from_numpy(a) for a in decision_tables(class_norms(meta)).values()]
    images = torch.zeros(len(rows), 4, 4, 3, dtype=torch.uint8)
    with torch.no_grad():
        out = dict(zip(DEPLOY_OUTPUTS, DeployGraph(Stub(), *tables)(images)))  # type: ignore[arg-type]
    names = [meta["classes"][c] for c, _ in rows]
    expected = [decide(meta, float(v), n) for (_, v), n in zip(rows, names)]
    assert out["pred_anomalous"].tolist() == expected and 0 < sum(expected) < len(rows)
    ref = [float(normalise(np.float64(v), class_norms(meta)[c])) for c, v in rows]
    assert np.abs(out["pred_score_normalised"].numpy() - ref).max() <= 1e-6
    assert np.abs(out["anomaly_map_normalised"][:, 0, 0].numpy() - ref).max() <= 1e-6


def test_a_recalibrated_graph_decides_by_its_new_thresholds(exports, tmp_path):
    """`retable` (what `ltad calibrate` runs on its copy) rewrites the ONNX and OpenVINO decision tables."""
    import shutil

    from ltad import Predictor
    from ltad.inference.export import decide, retable

    images = [_image(i) for i in range(6)]
    scores = Predictor.load(exports[0]).predict(images).scores
    for folder in exports[1:3]:
        copy = tmp_path / folder.name
        shutil.copytree(folder, copy)
        meta = json.loads((copy / "export.json").read_text())
        meta["normalisation"] = {"threshold": float(np.median(scores)), "min": 0.0, "max": 1.0}
        retable(copy, meta)
        (copy / "export.json").write_text(json.dumps(meta))
        got = Predictor.load(copy).predict(images)
        assert list(got.decisions) == [decide(meta, s, c) for s, c in zip(got.scores, got.pred_class)]
        assert 0 < got.decisions.sum() < len(images)  # the new threshold splits them


def test_an_onnx_1_export_with_float_input_still_predicts(exports, predictors, tmp_path):
    """A folder written before the uint8 graph (`ltad-onnx/1`: float N x 3 x S x S in, maps, scores and
    classes out) scores as before; the decision is made in Python."""
    import shutil

    from ltad import Predictor
    from ltad.models.scoring import ScoringGraph

    torch_dir, onnx_dir, _, model = exports
    legacy = tmp_path / "legacy"
    shutil.copytree(onnx_dir, legacy)
    meta = json.loads((legacy / "export.json").read_text())
    (legacy / "export.json").write_text(json.dumps({**meta, "format": "ltad-onnx/1"}))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # as graphs.write_onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's warnings about shape-dependent values
        torch.onnx.export(
            ScoringGraph(model).eval(),
            (torch.rand(1, 3, SIZE, SIZE),),
            str(legacy / "model.onnx"),
            dynamo=False,
            input_names=["images"],
            output_names=["anomaly_map", "pred_score", "pred_class"],
            dynamic_axes={"images": {0: "batch"}},
            opset_version=17,
        )
    torch.backends.mha.set_fastpath_enabled(fastpath)
    images = [_image(i) for i in range(3)]
    old, t = Predictor.load(legacy).predict(images), predictors[0].predict(images)
    assert np.abs(old.scores - t.scores).max() <= 1e-4 and (old.decisions == t.decisions).all()


def test_openvino_errors_are_one_sentence(exports, tmp_path, monkeypatch):
    import builtins
    import shutil

    from ltad import Predictor
    from ltad.inference.export import export_model

    torch_dir, _, ov_dir, _ = exports
    from ltad.inference.predictor import _OpenVinoRunner

    with pytest.raises(ConfigError, match="ltad runs OpenVINO models on the CPU"):
        _OpenVinoRunner(ov_dir, torch.device("cuda"))  # the device check, with or without a GPU here
    broken = tmp_path / "broken"
    shutil.copytree(ov_dir, broken)
    (broken / "model.xml").write_text("<net>")
    with pytest.raises(DataError, match="is not a loadable OpenVINO model"):
        Predictor.load(broken)
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(ConfigError, match="pip install 'ltad\\[openvino\\]'"):
        export_model(torch_dir, "openvino", tmp_path / "ov")
    assert not (tmp_path / "ov").exists()


def test_predictor_takes_paths_pil_and_arrays_and_matches_the_model(exports, predictors, tmp_path):
    from ltad.inference.export import decide

    *_, model = exports
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

    _, onnx_dir, _, _ = exports
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

    torch_dir, *_ = exports
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

    torch_dir, *_ = exports
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


def test_the_documented_onnxruntime_and_openvino_snippets_run_and_agree(
    exports, predictors, tmp_path, monkeypatch
):
    """docs/SCORING.md's two snippets (no ltad import), run as written on this module's exports."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "SCORING.md").read_text()
    section = text[text.index("## ONNX and OpenVINO") :]
    ort_code, ov_code = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    assert "ltad" not in re.sub(r'"runs/[^"]*"', "", ort_code + ov_code)  # no ltad import
    assert len(ort_code.strip().splitlines()) <= 11
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "onnx").symlink_to(exports[1])
    (tmp_path / "runs" / "demo" / "openvino").symlink_to(exports[2])
    Image.fromarray(_image(4, 50, 70)).save(tmp_path / "part.png")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(ort_code, "SCORING.md onnxruntime", "exec"), ns)
    expected = predictors[0].predict([tmp_path / "part.png"])
    assert ns["meta"]["classes"][ns["cls"][0]] == expected.pred_class[0]
    assert abs(float(ns["score"][0]) - expected.scores[0]) <= 1e-4
    assert bool(ns["anomalous"][0]) == bool(expected.decisions[0])
    exec(compile(ov_code, "SCORING.md openvino", "exec"), ns)
    assert ns["anomalous"].tolist() == [bool(expected.decisions[0])]


def test_ltad_calibrate_on_a_graph_export_moves_the_graphs_decision(exports, tmp_path):
    """`recalibrate` of the ONNX and OpenVINO folders: the copy's graph decides by the new export.json."""
    from ltad import Predictor
    from ltad.inference.calibrate import recalibrate
    from ltad.inference.export import decide

    normals = tmp_path / "normals"
    normals.mkdir()
    for i in range(8):
        Image.fromarray(_image(20 + i)).save(normals / f"{i}.png")
    images = [_image(i) for i in range(8)]
    for folder in exports[1:3]:
        meta, _ = recalibrate(folder, str(normals), tmp_path / f"cal-{folder.name}", 0.5)
        got = Predictor.load(tmp_path / f"cal-{folder.name}").predict(images)
        assert list(got.decisions) == [decide(meta, s, c) for s, c in zip(got.scores, got.pred_class)]
        before = json.loads((folder / "export.json").read_text())["normalisation"]["threshold"]
        assert meta["normalisation"]["threshold"] != before  # the thresholds did move
