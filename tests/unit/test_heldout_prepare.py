"""`prepare` writes the split's held-out normals as `val/` shards (local directory, no services)."""

from __future__ import annotations

from ltad.data.datasets import read_dataset
from ltad.data.inspect import inspect
from ltad.data.manifest import read_manifest
from ltad.data.prepare import prepare
from ltad.data.splits import make_split
from ltad.data.synth import synthesize


def test_prepare_writes_val_shards_that_inspect_accepts_and_drops_them_when_gone(tmp_path):
    root = synthesize(tmp_path / "s", classes=2, image_size=32, train_per_class=10, test_per_class=2, seed=0)
    dataset = read_dataset("synth", root)
    split = make_split(dataset, "exp", 2, seed=0, val_fraction=0.3)
    out = str(tmp_path / "shards")
    prepare(
        "synth", root, split.save(tmp_path / "split.json"), out, test_shard_samples=4, log=lambda _m: None
    )
    manifest = read_manifest(out)
    held = {c: len(v) for c, v in split.val_paths.items()}
    assert manifest.counts["val"] == held and manifest.samples("val") == sum(held.values()) == 5
    assert manifest.counts["train"] == split.counts and all(
        e.name.startswith("val/") for e in manifest.val_shards()
    )
    report = inspect(out)
    assert report["matches_manifest"] and report["splits"]["val"]["per_class"] == held
    # the same data prepared without validation: no val split, its old shards deleted
    plain = make_split(dataset, "exp", 2, seed=0)
    prepare(
        "synth", root, plain.save(tmp_path / "plain.json"), out, test_shard_samples=4, log=lambda _m: None
    )
    again = read_manifest(out)
    assert again.val_shards() == () and "val" not in again.counts
    assert not (tmp_path / "shards" / "val").exists() or not any((tmp_path / "shards" / "val").iterdir())
