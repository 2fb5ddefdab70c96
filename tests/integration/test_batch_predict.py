"""`ltad predict` as a Ray Data job (real Ray, real SeaweedFS, the shared exported model): s3:// model,
images and output; a job stopped after two committed parts, rerun, gives every image exactly once, the
committed parts untouched, and the same scores as the local process."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _upload(folder: Path, prefix: str) -> None:
    from ltad.io import storage

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        storage.upload_file(path, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _stamps(uris: list[str]) -> dict[str, tuple]:
    from ltad.io import storage

    out = {}
    for uri in uris:
        bucket, key = storage.split_s3(uri)
        head = storage.client().head_object(Bucket=bucket, Key=key)
        out[uri] = (head["ETag"], head["LastModified"])
    return out


def test_ray_predict_on_s3_stopped_midway_resumes_exactly_once_with_the_local_scores(
    exported, s3_server, ray_local, tmp_path, monkeypatch, capsys
):
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
    images = f"{bucket}/images"
    _upload(model_dir, f"{bucket}/model")
    _upload(folder, images)
    storage.write_bytes(f"{images}/broken.png", b"not a png")  # sorts first: part 0 holds it
    out = f"{bucket}/out"
    argv = ["predict", "--model", f"{bucket}/model", "--images", images, "--out", out]
    argv += ["--part-size", "1", "--maps"]

    monkeypatch.setenv("LTAD_PREDICT_FAULT_AFTER", "2")  # the one actor fails on its third part
    assert main([*argv, "--workers", "1"]) == 1
    assert "2 of 5 parts committed" in capsys.readouterr().err
    assert not storage.exists(f"{out}/manifest.json")
    committed = [u for u in storage.list(f"{out}/parts") if "/scores-" in u]
    assert len(committed) == 2
    before = _stamps(committed + [u.replace("/scores-", "/errors-") for u in committed])

    monkeypatch.delenv("LTAD_PREDICT_FAULT_AFTER")
    assert main([*argv, "--workers", "2"]) == 0  # resumed by two actors: the plan does not fix them
    assert _stamps(list(before)) == before  # finished parts untouched (same ETag, same LastModified)
    manifest = storage.read_json(f"{out}/manifest.json")
    assert (manifest["scored"], manifest["failed"], len(manifest["parts"])) == (4, 1, 5)
    scores = read_rows(out, "scores").to_pylist()
    failed = [r["path"] for r in read_rows(out, "errors").to_pylist()]
    keys = [r["key"] for r in scores]
    assert sorted(keys + failed) == sorted(u for u in storage.list(images))  # each image exactly once
    assert failed == [f"{images}/broken.png"]
    got = {r["key"].removeprefix(f"{images}/"): r for r in scores}
    assert sorted(got) == sorted(expected)
    for name, row in got.items():  # the local process's scores (its scores.csv keeps 6 digits)
        assert abs(row["pred_score"] - float(expected[name]["pred_score"])) <= 1e-5, name
        assert row["pred_class"] == expected[name]["pred_class"]
        assert row["pred_anomalous"] == int(expected[name]["pred_anomalous"])
    assert storage.exists(f"{out}/maps/sub/gray.png") and storage.exists(f"{out}/overlays/img0.png")

    storage.write_bytes(f"{images}/new.png", (folder / "img0.png").read_bytes())  # other images: refused
    assert main([*argv, "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume: it was made from other images" in err and "--overwrite" in err
