"""`ltad calibrate` on a tiny random export: a new export with new thresholds, the old one untouched,
bad input one sentence and exit 2. (The statistical check on fresh normals is
tests/integration/test_calibrate.py.)"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ltad import cli
from tests.integration.conftest import TINY_MODEL

SIZE = 64


def _digest(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ltad.config import LTADConfig
    from ltad.eval.calibration import calibrate
    from ltad.inference.export import write_export
    from ltad.models.state import build_model

    tmp = tmp_path_factory.mktemp("calibrate")
    cfg = LTADConfig.from_dict({"model": {**TINY_MODEL, "vae": {"latent": 8, "hidden": 32}}})
    model = build_model(cfg, 2).eval()
    model.cache_text()
    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    enc = model.encoder.encode_images(images)
    model.fit_standardisation([(enc.patches, torch.tensor([0, 0, 1, 1]))])
    scores = model.score(enc.patches, enc.global_emb, (SIZE, SIZE)).pred_score.numpy()
    old = calibrate(scores, np.array([0, 0, 1, 1]), ["a", "b"], 0.05)  # as the job would (all uncovered)
    write_export(tmp / "model", model, cfg, ["a", "b"], scores, float(np.median(scores)), {}, old)
    return tmp / "model"


@pytest.fixture
def normals(tmp_path):
    folder = tmp_path / "normals"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"n{i}.png")
    Image.fromarray(rng.integers(0, 256, (40, 90, 3), dtype=np.uint8)).save(folder / "sub" / "other.jpg")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_calibrate_writes_a_new_export_and_leaves_the_model_untouched(model_dir, normals, tmp_path, capsys):
    from ltad import Predictor
    from ltad.eval.calibration import calibrate

    before = _digest(model_dir)
    out = tmp_path / "recalibrated"
    assert (
        cli.main(["calibrate", "--model", str(model_dir), "--normals", str(normals), "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out
    assert _digest(model_dir) == before  # the old export is untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # a complete copy
    assert not list(tmp_path.glob(".recalibrated.part-*"))
    meta = json.loads((out / "export.json").read_text())
    cal, rec = meta["calibration"], meta["recalibrated"]
    assert rec["n_images"] == 7 and rec["n_unreadable"] == 1 and rec["normals"] == str(normals)
    assert rec["previous_calibration"]["n_heldout"] == 4 and cal["n_heldout"] == 7
    # the thresholds are the rule's over the model's own scores of the readable normals
    p = Predictor.load(out)
    files = sorted(f for f in normals.rglob("*") if f.suffix in (".png", ".jpg") and f.name != "broken.png")
    got = p.predict(files)
    ids = np.array([p.classes.index(c) for c in got.pred_class])
    expected = calibrate(got.scores, ids, ["a", "b"], 0.05)
    assert expected is not None
    assert {c: r["threshold"] for c, r in cal["per_class"].items()} == pytest.approx(
        {c: r["threshold"] for c, r in expected["per_class"].items()}
    )
    assert cal["uncovered"] == ["a", "b"]  # 7 normals cannot meet 5 % at 90 % confidence
    assert all(r["fpr_bound"] > 0.05 and not r["covered"] for r in cal["per_class"].values())
    thresholds = np.array([cal["per_class"][c]["threshold"] for c in got.pred_class])
    assert (got.decisions == (got.scores >= thresholds)).all() and (got.scores <= thresholds).all()
    assert got.decisions.sum() <= 2  # at every class's highest normal score: only that one ties it
    assert "n 0, false-positive rate <= 100 %" in printed or "n 7, false-positive rate <= 28" in printed
    assert "UNCOVERED" in printed and f"wrote {out}" in printed and "1 unreadable skipped" in printed


def test_calibrate_takes_a_glob_and_a_target_and_a_mix(model_dir, normals, tmp_path, capsys):
    out = tmp_path / "o"
    args = ["calibrate", "--model", str(model_dir), "--normals", str(normals / "n*.png"), "--out", str(out)]
    assert cli.main([*args, "--target-fpr", "0.3", "--mix", "a=1,b=3"]) == 0
    cal = json.loads((out / "export.json").read_text())["calibration"]
    assert cal["n_heldout"] == 6 and cal["target_fpr"] == 0.3 and cal["min_heldout_per_class"] == 7
    assert sum(cal["mix"].values()) == pytest.approx(1.0)
    capsys.readouterr()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--normals": "{tmp}/none/*.png"}, "--normals '{tmp}/none/*.png' matches no image files"),
        ({"--model": "{tmp}"}, "is not an exported ltad model: weights.pt, config.yaml, export.json missing"),
        ({"--out": "{full}"}, "--out '{full}' exists and is not empty; choose a new folder"),
        ({"--target-fpr": "0.7"}, "--target-fpr must be a number in (0, 0.5], got '0.7'"),
        ({"--mix": "z=1"}, "--mix names class 'z', which the model does not have (a, b)"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(model_dir, normals, tmp_path, capsys, change, message):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    flags = {"--model": str(model_dir), "--normals": str(normals), "--out": str(tmp_path / "new")}
    flags.update({k: v.format(tmp=tmp_path, full=full) for k, v in change.items()})
    assert cli.main(["calibrate", *[x for kv in flags.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltad calibrate: error: ") and err.count("\n") == 1
    assert message.format(tmp=tmp_path, full=full) in err
    assert not (tmp_path / "new").exists() and (full / "x").read_text() == "x"


def test_s3_normals_are_downloaded_with_their_relative_paths(tmp_path, monkeypatch):
    from ltad.commands.calibrate import download_images
    from ltad.errors import DataError
    from ltad.io import storage

    objects = {"s3://b/line2/a/1.png": b"1", "s3://b/line2/b/2.JPG": b"2", "s3://b/line2/notes.txt": b"t"}
    monkeypatch.setattr(
        storage, "list", lambda prefix: sorted(u for u in objects if u.startswith(prefix + "/"))
    )
    monkeypatch.setattr(storage, "read_bytes", lambda u: objects[u])
    folder = download_images("s3://b/line2/", tmp_path / "n")
    assert sorted(p.relative_to(folder).as_posix() for p in (tmp_path / "n").rglob("*") if p.is_file()) == [
        "a/1.png",
        "b/2.JPG",
    ]
    with pytest.raises(DataError, match="--normals 's3://b/other' holds no image files"):
        download_images("s3://b/other", tmp_path / "m")


def test_a_mix_on_classes_without_normals_is_a_config_error(model_dir, normals, tmp_path):
    from ltad import Predictor
    from ltad.errors import ConfigError
    from ltad.inference.calibrate import recalibrate

    one = normals / "n0.png"
    other = "b" if Predictor.load(model_dir).predict([one]).pred_class[0] == "a" else "a"
    with pytest.raises(
        ConfigError, match="--mix: the deployment mix gives no weight to any class that has normal"
    ):
        recalibrate(model_dir, str(one), tmp_path / "o", 0.05, mix={other: 1.0})
    assert not (tmp_path / "o").exists()
