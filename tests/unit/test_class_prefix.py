"""ltad/data/class_prefix.py: the bank fitting's reads. The first N samples of each wanted class, the same
as a sequential read would give, reading about N samples' bytes per class even when a head class
holds 50x more (issue 24: bytes read <= 1.2x classes x max_images x sample size)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ltad.data import class_prefix
from ltad.data.class_prefix import ClassPrefixStream, plan_reads
from ltad.data.manifest import ShardEntry
from ltad.data.sample_index import index_name, write_shard_index
from ltad.data.shards import ShardWriter, iterate_shard
from ltad.io import storage

SAMPLE_BYTES = 4096


def _shards(root: Path, counts: dict[str, int], per_shard: int, index: bool = True) -> list[ShardEntry]:
    """Train shards per class (`per_shard` samples each) of random payloads, with sidecars."""
    rng = np.random.default_rng(0)
    entries: list[ShardEntry] = []
    for cls, n in counts.items():

        def done(path, info):
            if index:
                write_shard_index(path, str(path), info.sha256)
            entries.append(ShardEntry(info.name, info.samples, info.bytes, info.sha256, info.per_class))

        writer = ShardWriter(root, "train", cls, done, max_samples=per_shard)
        for i in range(n):
            payload = rng.integers(0, 255, SAMPLE_BYTES, dtype=np.uint8).tobytes()
            meta = json.dumps({"class_name": cls, "label": 0}).encode()
            writer.write(f"{cls}/{i:05d}", {"bin": payload, "cls": b"0", "json": meta}, cls)
        writer.close()
    return sorted(entries, key=lambda e: e.name)


def _count_bytes(monkeypatch) -> dict[str, int]:
    got = {"bytes": 0}
    real_range, real_open = storage.read_range, storage.open_read

    def read_range(uri, offset, length, retries=None):
        data = real_range(uri, offset, length, retries)
        if not uri.endswith(".json"):
            got["bytes"] += len(data)
        return data

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            got["bytes"] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(storage, "read_range", read_range)
    monkeypatch.setattr(storage, "open_read", lambda uri, retries=None: Counting(real_open(uri, retries)))
    return got


def _sequential_first(root: Path, entries: list[ShardEntry], need: dict[str, int]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {c: [] for c in need}
    for e in entries:
        for s in iterate_shard(str(root / e.name), e.samples):
            cls = json.loads(s["json"])["class_name"]
            if cls in out and len(out[cls]) < need[cls]:
                out[cls].append(s["__key__"])
    return out


def test_plan_reads_takes_a_class_shards_only_until_they_hold_its_samples():
    shards = [ShardEntry(f"train/head-{i:06d}.tar", 10, 1000, "x", {"head": 10}) for i in range(50)]
    shards += [ShardEntry("train/tail-000000.tar", 4, 400, "y", {"tail": 4})]
    plan = plan_reads(shards, {"head": 25, "tail": 8})
    assert [(r.entry.name, r.cls, r.take) for r in plan] == [
        ("train/head-000000.tar", "head", 10),
        ("train/head-000001.tar", "head", 10),
        ("train/head-000002.tar", "head", 5),
        ("train/tail-000000.tar", "tail", 4),  # fewer than wanted: what there is
    ]


@pytest.mark.parametrize("index", [True, False], ids=["ranged", "sequential"])
def test_reads_the_first_samples_of_each_class_and_about_only_their_bytes(tmp_path, monkeypatch, index):
    counts = {"head": 500, "mid": 30, "tail": 12}  # head 50x the smallest banked class (10 wanted)
    entries = _shards(tmp_path, counts, per_shard=200, index=index)
    need = {"head": 10, "mid": 10, "tail": 10}
    got = _count_bytes(monkeypatch)
    stream = ClassPrefixStream(str(tmp_path), entries, need, decode=lambda s: s)
    keys: dict[str, list[str]] = {c: [] for c in need}
    for sample in stream:
        keys[json.loads(sample["json"])["class_name"]].append(sample["__key__"])
    monkeypatch.undo()
    assert keys == _sequential_first(tmp_path, entries, need)
    sample_bytes = SAMPLE_BYTES + 4 * 512  # payload plus the members' headers
    if index:  # exactly the wanted samples: <= 1.2x classes x max_images x sample size
        assert got["bytes"] <= 1.2 * len(need) * 10 * sample_bytes
        assert all(Path(index_name(str(tmp_path / e.name))).exists() for e in entries)
    else:  # no sidecar: each read shard left after its wanted samples (plus the read buffer)
        assert got["bytes"] < sum(e.bytes for e in entries) / 2


def test_every_dataloader_worker_reads_a_part_once(tmp_path, monkeypatch):
    entries = _shards(tmp_path, {"a": 30, "b": 30, "c": 30}, per_shard=10)
    stream = ClassPrefixStream(str(tmp_path), entries, {"a": 15, "b": 25, "c": 5}, decode=lambda s: s)

    class Info:
        num_workers = 2

        def __init__(self, i):
            self.id = i

    keys = []
    for worker in (0, 1):
        monkeypatch.setattr("ltad.data.streams.get_worker_info", lambda w=worker: Info(w))
        keys += [s["__key__"] for s in stream]
    assert len(keys) == len(set(keys)) == 45
    assert class_prefix.READS_IN_FLIGHT >= 1
