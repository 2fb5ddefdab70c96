"""manifest.py: JSON round trip, self-consistency checks, clear errors; class weights of the stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltad.data.manifest import FORMAT, Manifest, ShardEntry, SplitProvenance, read_manifest, write_manifest
from ltad.data.streams import class_weights
from ltad.errors import DataError
from ltad.io import storage


def _manifest(**over) -> Manifest:
    fields = dict(
        dataset="synth",
        classes=("a", "b"),
        split=SplitProvenance("f" * 64, "exp", 10.0, 0, ("b", "a")),
        shards={
            "train": (
                ShardEntry("train/a-000000.tar", 2, 100, "1" * 64, {"a": 2}),
                ShardEntry("train/b-000000.tar", 5, 200, "2" * 64, {"b": 5}),
            ),
            "test": (ShardEntry("test/test-000000.tar", 4, 300, "3" * 64, {"a": 2, "b": 2}),),
        },
        counts={"train": {"a": 2, "b": 5}, "test": {"a": 2, "b": 2}},
        image_sizes={"a": [[16, 12]], "b": [[16, 12], [32, 32]]},
    )
    fields.update(over)
    return Manifest(**fields)


def test_roundtrip_local(tmp_path):
    m = _manifest()
    uri = write_manifest(str(tmp_path), m)
    data = json.loads(Path(uri).read_text())
    assert data["format"] == FORMAT and list(data)[0] == "format"
    assert data["split"] == {
        "sha256": "f" * 64,
        "profile": "exp",
        "ratio": 10.0,
        "seed": 0,
        "class_order": ["b", "a"],
    }
    back = read_manifest(str(tmp_path))
    assert back == m
    assert back.samples("train") == 7 and back.samples("test") == 4 and back.class_id("b") == 1


def test_inconsistent_counts_are_rejected():
    with pytest.raises(DataError, match="manifest train shard counts .* disagree"):
        _manifest(counts={"train": {"a": 3, "b": 5}, "test": {"a": 2, "b": 2}})
    bad = (ShardEntry("test/test-000000.tar", 5, 300, "3" * 64, {"a": 2, "b": 2}),)
    with pytest.raises(DataError, match="per-class counts do not add up to 5"):
        _manifest(shards={"train": _manifest().shards["train"], "test": bad})
    with pytest.raises(DataError, match="class 'c' missing from its class list"):
        _manifest(
            classes=("a", "b"),
            shards={**_manifest().shards, "test": (ShardEntry("t", 1, 1, "", {"c": 1}),)},
            counts={"train": {"a": 2, "b": 5}, "test": {"c": 1}},
        )


def test_missing_and_malformed_manifests(tmp_path):
    with pytest.raises(DataError, match=f"no manifest.json at {tmp_path}: run ltad prepare first"):
        read_manifest(str(tmp_path))
    storage.write_json(str(tmp_path / "manifest.json"), {"format": "something-else"})
    with pytest.raises(DataError, match="is not an ltad shard manifest"):
        read_manifest(str(tmp_path))
    data = _manifest().to_dict()
    del data["counts"]
    storage.write_json(str(tmp_path / "manifest.json"), data)
    with pytest.raises(DataError, match="malformed: missing or wrong field 'counts'"):
        read_manifest(str(tmp_path))


def test_class_weights():
    counts = {"head": 100, "mid": 25, "tail": 4, "empty": 0}
    natural = class_weights(counts, 0.0)
    assert natural == pytest.approx({"head": 100 / 129, "mid": 25 / 129, "tail": 4 / 129})
    assert class_weights(counts, 1.0) == pytest.approx({"head": 1 / 3, "mid": 1 / 3, "tail": 1 / 3})
    half = class_weights(counts, 0.5)  # sqrt: 10, 5, 2
    assert half == pytest.approx({"head": 10 / 17, "mid": 5 / 17, "tail": 2 / 17})


def test_val_split_is_optional_and_round_trips(tmp_path):
    """Manifests without held-out normals keep working; with them, val is checked like the others."""
    plain = _manifest()
    assert (
        plain.val_shards() == () and plain.samples("val") == 0 and plain.present_splits == ("train", "test")
    )
    assert "val" not in plain.to_dict()["shards"]
    val = (ShardEntry("val/val-000000.tar", 3, 90, "4" * 64, {"a": 1, "b": 2}),)
    m = _manifest(shards={**plain.shards, "val": val}, counts={**plain.counts, "val": {"a": 1, "b": 2}})
    write_manifest(str(tmp_path), m)
    back = read_manifest(str(tmp_path))
    assert back == m and back.val_shards() == val and back.samples("val") == 3
    with pytest.raises(DataError, match="manifest val shard counts .* disagree"):
        _manifest(shards={**plain.shards, "val": val}, counts={**plain.counts, "val": {"a": 3, "b": 0}})
