"""training_batches: one persistent loader per phase gives full batches and resumes exactly."""

from __future__ import annotations

from itertools import islice

import pytest

from ltad.config import LTADConfig
from ltad.data.datasets import read_dataset
from ltad.data.manifest import read_manifest
from ltad.data.prepare import prepare
from ltad.data.splits import make_split
from ltad.data.synth import synthesize
from ltad.training.data import training_batches


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("batches")
    root = synthesize(tmp / "synth", classes=3, image_size=32, train_per_class=8, test_per_class=2, seed=0)
    split = make_split(read_dataset("synth", root), "exp", ratio=4, seed=0).save(tmp / "split.json")
    prepare("synth", root, split, str(tmp / "shards"), log=lambda _m: None)
    return str(tmp / "shards")


def test_training_batches_full_and_resumed_exactly_with_persistent_workers(shards):
    cfg = LTADConfig().with_overrides(
        ["data.batch_size=3", "data.loader_workers=2", "model.encoder.image_size=32"]
    )
    manifest = read_manifest(shards)
    assert manifest.sample_index  # prepare indexed its shards: the small classes come by ranged reads

    def keys(start: int, n: int) -> list[list[str]]:
        batches = training_batches(
            cfg, shards, manifest, None, seed=1, rank=0, world_size=1, start_step=start, epoch_steps=5
        )
        return [list(b["key"]) for b in islice(batches, n)]

    full = keys(0, 12)  # 5 batches an epoch over 2 workers (3 + 2): crosses two epoch boundaries
    assert [len(b) for b in full] == [3] * 12
    assert keys(7, 5) == full[7:]  # a run resumed at step 7 trains on the batches it would have
    assert {k.split("/")[0] for b in full for k in b} == set(manifest.classes)


def test_read_ahead_changes_neither_the_samples_nor_their_order_nor_the_resume_point(shards):
    manifest = read_manifest(shards)

    def keys(read_ahead: int, start: int, n: int) -> list[list[str]]:
        cfg = LTADConfig().with_overrides(
            ["data.batch_size=3", "model.encoder.image_size=32", f"data.read_ahead={read_ahead}"]
        )
        batches = training_batches(
            cfg, shards, manifest, None, seed=3, rank=0, world_size=1, start_step=start, epoch_steps=5
        )
        return [list(b["key"]) for b in islice(batches, n)]

    off = keys(0, 0, 12)
    assert keys(16, 0, 12) == off and keys(2, 0, 12) == off
    assert keys(16, 7, 5) == keys(0, 7, 5) == off[7:]
    with pytest.raises(Exception, match="data.read_ahead"):
        LTADConfig().with_overrides(["data.read_ahead=-1"])
