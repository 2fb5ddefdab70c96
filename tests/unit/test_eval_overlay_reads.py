"""Rank 0's overlay reads with cached features: only the shards holding chosen samples, each only up to
its last chosen sample (ltad/training/scoring.py overlay_images)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ltad.config import LTADConfig
from ltad.data.manifest import read_manifest
from ltad.data.shards import iterate_shard
from ltad.errors import DataError
from ltad.eval.outputs import OverlayCandidate
from ltad.training.scoring import overlay_images


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    tmp = tmp_path_factory.mktemp("overlay-data")
    root = synthesize(tmp / "synth", classes=2, image_size=32, train_per_class=2, test_per_class=4, seed=1)
    split = make_split(read_dataset("synth", root), "exp", ratio=2, seed=0)
    prepare(
        "synth",
        root,
        split.save(tmp / "split.json"),
        str(tmp / "s"),
        test_shard_samples=4,
        log=lambda _m: None,
    )
    return tmp / "s"


def test_overlay_reads_stop_at_the_last_chosen_sample(shards, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shards, data)
    manifest = read_manifest(str(data))
    first = manifest.shards["test"][0]
    keys = [s["__key__"] for s in iterate_shard(str(data / first.name), first.samples)]
    # cut the first test shard in half: its first sample reads, reading past the cut fails
    raw = (data / first.name).read_bytes()
    (data / first.name).write_bytes(raw[: len(raw) * 2 // 4])
    cfg = LTADConfig.from_dict({"model": {"encoder": {"image_size": 32, "grid": 4}}})
    w = SimpleNamespace(cfg=cfg, data_uri=str(data), manifest=manifest)
    feature_shard = f"/cache/features/abc/{first.name}"  # as read from a feature shard

    def cand(key, image=None):
        amap = np.zeros((32, 32), np.float16)
        mask = None if image is None else np.zeros((32, 32), bool)
        return OverlayCandidate(key, feature_shard, 0, amap, image=image, gt_mask=mask)

    found = overlay_images(w, [cand(keys[0])])
    assert list(found) == [keys[0]] and tuple(found[keys[0]]["image"].shape) == (3, 32, 32)
    # a captured image needs no read at all, even of the damaged shard's tail
    captured = cand(keys[-1], image=np.zeros((32, 32, 3), np.uint8))
    assert overlay_images(w, [captured]) == {}
    with pytest.raises(DataError, match="truncated or corrupt"):
        overlay_images(w, [cand(keys[-1])])  # the last sample lies in the cut-off part
