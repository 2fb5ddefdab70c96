"""`ltad predict` as a Ray Data job (real Ray, real SeaweedFS, the shared exported model): the same
scores as the local process, s3:// in and out, and a job stopped midway resumed exactly once."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _upload(folder: Path, prefix: str) -> None:
    from ltad.io import storage

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        storage.upload_file(path, f"{prefix}/{path.relative_to(folder).as_posix()}")


def test_ray_predict_on_s3_scores_as_the_local_process(exported, s3_server, ray_local, tmp_path):
    from ltad.cli import main
    from ltad.inference.batch import read_rows
    from ltad.io import storage

    model_dir, folder, _, _ = exported
    local = tmp_path / "local"
    argv = ["predict", "--model", str(model_dir), "--images", str(folder), "--out", str(local)]
    assert main([*argv, "--workers", "0"]) == 0  # one local process, even beside a Ray cluster
    with (local / "scores.csv").open() as f:
        expected = {str(Path(r["key"]).relative_to(folder)): r for r in csv.DictReader(f)}

    bucket = f"s3://{s3_server.bucket}/batch-predict"
    _upload(model_dir, f"{bucket}/model")
    _upload(folder, f"{bucket}/images")
    out = f"{bucket}/out"
    argv = ["predict", "--model", f"{bucket}/model", "--images", f"{bucket}/images", "--out", out]
    assert main([*argv, "--workers", "2", "--part-size", "2", "--maps"]) == 0
    manifest = storage.read_json(f"{out}/manifest.json")
    assert (manifest["scored"], manifest["failed"], len(manifest["parts"])) == (4, 0, 2)
    rows = read_rows(out, "scores").to_pylist()
    got = {r["key"].removeprefix(f"{bucket}/images/"): r for r in rows}
    assert sorted(got) == sorted(expected)
    for name, row in got.items():  # scores.csv keeps 6 significant digits
        assert abs(row["pred_score"] - float(expected[name]["pred_score"])) <= 1e-5, name
        assert row["pred_class"] == expected[name]["pred_class"]
        assert row["pred_anomalous"] == int(expected[name]["pred_anomalous"])
    assert storage.exists(f"{out}/maps/sub/gray.png") and storage.exists(f"{out}/overlays/img0.png")


def test_ray_predict_stopped_midway_resumes_exactly_once(exported, ray_local, tmp_path, monkeypatch, capsys):
    from ltad.cli import main
    from ltad.inference.batch import read_rows

    model_dir, folder, _, _ = exported
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    (images / "broken.png").write_bytes(b"not a png")  # sorts first: part 0 holds it
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--images", str(images), "--out", str(out)]
    argv += ["--workers", "1", "--part-size", "1"]

    monkeypatch.setenv("LTAD_PREDICT_FAULT_AFTER", "2")  # the actor fails on its third part
    assert main(argv) == 1
    assert "rerun the same command to score the rest" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
    committed = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("scores-*.parquet")}
    assert len(committed) == 2
    errors_before = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("errors-*.parquet")}

    monkeypatch.delenv("LTAD_PREDICT_FAULT_AFTER")
    assert main(argv) == 0
    for name, mtime in committed.items():  # finished parts untouched
        assert (out / "parts" / name).stat().st_mtime_ns == mtime
        errors = name.replace("scores-", "errors-")
        assert (out / "parts" / errors).stat().st_mtime_ns == errors_before[errors]
    scored = [r["key"] for r in read_rows(str(out), "scores").to_pylist()]
    failed = [r["path"] for r in read_rows(str(out), "errors").to_pylist()]
    everything = sorted(str(p) for p in images.rglob("*.png"))
    assert sorted(scored + failed) == everything  # every input once: scored or failed, never both
    assert failed == [str(images / "broken.png")]
    assert np.isfinite([r["pred_score"] for r in read_rows(str(out), "scores").to_pylist()]).all()
    assert not list(out.rglob("maps"))  # maps only with --maps

    (images / "new.png").write_bytes((images / "img0.png").read_bytes())  # other images: refused
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot resume: it was made from other images" in err and "--overwrite" in err
    assert main([*argv, "--overwrite"]) == 0
    assert len(read_rows(str(out), "scores")) + len(read_rows(str(out), "errors")) == len(everything) + 1
