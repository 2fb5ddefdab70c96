"""Encoder weights anywhere: an open_clip checkpoint in S3 builds the encoder, and an export carries it
so `ltad predict` works where neither the file nor the bucket is. Ray workers encoding with weights from
s3:// ride on the job of tests/integration/test_job_submit.py."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ltad.config import EncoderConfig
from ltad.errors import ConfigError, DataError, StorageError
from tests.integration.conftest import TINY_MODEL, encoder_checkpoint

pytestmark = pytest.mark.integration

SMALL = dict(image_size=64, grid=4)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from ltad.io import blobs

    monkeypatch.setenv(blobs.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def test_encoder_from_s3_matches_the_local_file(s3_server, tmp_path, cache):
    from ltad.io import storage
    from ltad.models.encoder import Encoder

    local = encoder_checkpoint(tmp_path / "clip.pt")
    uri = f"s3://{s3_server.bucket}/weights-test/clip.pt"
    storage.upload_file(local, uri)
    from_s3 = Encoder(EncoderConfig(pretrained=uri, **SMALL))
    from_file = Encoder(EncoderConfig(pretrained=str(local), **SMALL))
    bundled = Encoder(EncoderConfig(**SMALL))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = from_s3.encode_images(images), from_file.encode_images(images)
    assert torch.equal(a.patches, b.patches) and torch.equal(a.global_emb, b.global_emb)
    assert not torch.allclose(a.patches, bundled.encode_images(images).patches, atol=1e-3)
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    prov = from_s3.weights_provenance()
    assert prov["source"] == uri and prov["sha256"] == sha and sha[:12] in prov["image"]
    assert from_s3.weights.file == str(cache / "blobs" / f"{sha}.pt")


def test_bad_weights_in_s3_are_one_clear_error(s3_server, tmp_path, cache):
    from ltad.io import storage
    from ltad.models.encoder import Encoder

    missing = f"s3://{s3_server.bucket}/weights-test/absent.pt"
    with pytest.raises(StorageError, match=f"model.encoder.pretrained '{missing}': no object at {missing}"):
        Encoder(EncoderConfig(pretrained=missing, **SMALL))
    junk = f"s3://{s3_server.bucket}/weights-test/junk.pt"
    storage.write_bytes(junk, b"not a checkpoint")
    with pytest.raises(ConfigError, match=f"'{junk}' .* is not a loadable open_clip checkpoint"):
        Encoder(EncoderConfig(pretrained=junk, **SMALL))
    with pytest.raises(ConfigError, match="only s3:// URIs and local files"):
        Encoder(EncoderConfig(pretrained="gs://bucket/clip.pt", **SMALL))


def _images(paths):
    return torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
            for p in paths
        ]
    )


@pytest.mark.parametrize("where", ["file", "s3"])
def test_export_carries_the_encoder_weights(where, s3_server, tmp_path, cache, monkeypatch):
    """Export, move the folder, delete the weights (file, or object and node cache): predict still works
    and gives the scores of the model that was exported."""
    from ltad.cli import main
    from ltad.config import LTADConfig
    from ltad.data.synth import synthesize
    from ltad.inference.export import load_export, write_export
    from ltad.io import storage
    from ltad.models.state import build_model

    root = synthesize(
        tmp_path / "synth", classes=2, image_size=64, train_per_class=4, test_per_class=2, seed=3
    )
    local = encoder_checkpoint(tmp_path / "clip.pt")
    source = str(local)
    if where == "s3":
        source = f"s3://{s3_server.bucket}/weights-test/export/clip.pt"
        storage.upload_file(local, source)
    model_cfg = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "pretrained": source}}
    cfg = LTADConfig.from_dict({"model": model_cfg})
    model = build_model(cfg, 2).eval()
    model.cache_text()
    enc = model.encoder.encode_images(_images(sorted(root.glob("*/train/good/*.png"))))
    model.fit_standardisation([(enc.patches, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))])
    test = sorted(root.glob("*/test/*/*.png"))
    enc = model.encoder.encode_images(_images(test))
    expected = model.score(enc.patches, enc.global_emb, (64, 64)).pred_score.numpy()
    write_export(tmp_path / "model", model, cfg, ["a", "b"], expected, float(np.median(expected)), {})

    moved = tmp_path / "elsewhere" / "model"
    shutil.move(tmp_path / "model", moved)
    local.unlink()
    if where == "s3":
        storage.delete(source)
        shutil.rmtree(cache)
    meta = json.loads((moved / "export.json").read_text())
    sha = hashlib.sha256((moved / "encoder.pt").read_bytes()).hexdigest()
    assert meta["encoder_weights"] == {"file": "encoder.pt", "sha256": sha, "source": source}

    loaded, _ = load_export(moved)
    assert loaded.encoder.weights.file == str(moved / "encoder.pt")
    assert loaded.encoder.weights_provenance()["sha256"] == sha
    folder = tmp_path / "images"
    folder.mkdir()
    for i, p in enumerate(test):
        shutil.copy(p, folder / f"img{i}.png")
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(moved), "--images", str(folder), "--out", str(out)]) == 0
    with (out / "scores.csv").open() as f:
        scores = [float(r["pred_score"]) for r in csv.DictReader(f)]
    assert np.allclose(scores, expected, rtol=1e-5, atol=1e-6)
    # `ltad export --format torch` of the moved folder carries the checked copy, its source kept
    assert main(["export", "--model", str(moved), "--format", "torch", "--out", str(tmp_path / "copy")]) == 0
    assert (
        json.loads((tmp_path / "copy" / "export.json").read_text())["encoder_weights"]
        == meta["encoder_weights"]
    )
    assert (tmp_path / "copy" / "encoder.pt").read_bytes() == (moved / "encoder.pt").read_bytes()

    # a damaged copy is refused, naming the file; without the copy and its source, so is the folder
    (moved / "encoder.pt").write_bytes(b"\0" * 64)
    with pytest.raises(DataError, match="encoder weights .*encoder.pt of .* are corrupt or changed"):
        load_export(moved)
    (moved / "encoder.pt").unlink()
    with pytest.raises(DataError, match="lacks its encoder weights encoder.pt and their source is unusable"):
        load_export(moved)


def test_export_without_its_copy_uses_the_recorded_source_when_unchanged(tmp_path, cache):
    """A folder whose encoder copy was dropped (to save space) resolves its recorded source, hash-checked."""
    from ltad.config import LTADConfig
    from ltad.inference.export import load_export, write_export
    from ltad.models.state import build_model

    local = encoder_checkpoint(tmp_path / "clip.pt")
    model_cfg = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "pretrained": str(local)}}
    cfg = LTADConfig.from_dict({"model": model_cfg})
    model = build_model(cfg, 2).eval()
    write_export(tmp_path / "model", model, cfg, ["a", "b"], np.array([0.0, 1.0]), 0.5, {})
    (tmp_path / "model" / "encoder.pt").unlink()
    loaded, _ = load_export(tmp_path / "model")
    assert loaded.encoder.weights.file == str(local)
