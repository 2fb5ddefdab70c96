"""The data plane on a real SeaweedFS: synth -> split -> prepare -> inspect, streams, and the faults."""

from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from collections import Counter

import pytest

from ltad import cli
from ltad.data.datasets import read_dataset
from ltad.data.inspect import inspect
from ltad.data.manifest import read_manifest
from ltad.data.prepare import prepare
from ltad.data.sample_index import index_shard, read_shard_index
from ltad.data.shards import ShardWriter, iterate_shard
from ltad.data.splits import make_split
from ltad.data.streams import eval_stream, make_loader, train_stream
from ltad.data.synth import synthesize
from ltad.errors import DataError, StorageError
from ltad.io import storage
from tools.services.ports import free_port

pytestmark = pytest.mark.integration
CLASSES, TRAIN, TEST = 4, 20, 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, classes=CLASSES, image_size=64, train_per_class=TRAIN, test_per_class=TEST, seed=0)
    split = make_split(read_dataset("synth", root), "exp", 10, 0)
    split_path = split.save(root.parent / f"{root.name}-split.json")
    return root, split, split_path


@pytest.fixture(scope="module")
def prepared(s3_server, data):
    root, split, split_path = data
    uri = f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:8]}/exp10"
    manifest = prepare("synth", root, split_path, uri, test_shard_samples=8)
    return uri, manifest


def _copy_prefix(uri: str) -> str:
    """A private copy of a prepared prefix (server-side copies), for tests that damage it."""
    bucket, key = storage.split_s3(uri)
    new = f"{key}-{uuid.uuid4().hex[:6]}"
    for obj in storage.list(uri):
        src = storage.split_s3(obj)[1]
        storage.client().copy_object(
            Bucket=bucket, Key=new + src[len(key) :], CopySource={"Bucket": bucket, "Key": src}
        )
    return f"s3://{bucket}/{new}"


def test_prepare_then_inspect_counts_match(prepared, data, capsys):
    uri, manifest = prepared
    _, split, _ = data
    assert manifest.split.sha256 == split.sha256 and manifest.split.profile == "exp"
    assert manifest.counts["train"] == {c: split.counts[c] for c in manifest.classes}
    assert [e.name for e in manifest.shards["train"]] == [f"train/{c}-000000.tar" for c in manifest.classes]
    assert [e.samples for e in manifest.shards["test"]] == [8] * 5  # 40 test images, 8 per shard
    assert manifest.image_sizes == {c: [[64, 64]] for c in manifest.classes}
    assert cli.main(["inspect", uri]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["matches_manifest"] is True
    assert report["splits"]["train"]["per_class"] == manifest.counts["train"]
    assert report["splits"]["test"]["per_class"] == {c: TEST for c in manifest.classes}
    assert report["splits"]["test"]["samples"] == CLASSES * TEST


def test_rerun_skips_identical_shards_and_local_bytes_match(prepared, data, tmp_path):
    uri, manifest = prepared
    root, _, split_path = data
    lines: list[str] = []
    again = prepare("synth", root, split_path, uri, test_shard_samples=8, log=lines.append)
    shards = [e for s in manifest.shards.values() for e in s]
    assert f"0 shards uploaded, {len(shards)} unchanged" in lines[-1]
    assert again == manifest
    head = storage.head(storage.join(uri, shards[0].name))
    assert head["metadata"]["sha256"] == shards[0].sha256
    local = prepare(
        "synth", root, split_path, str(tmp_path / "local"), test_shard_samples=8, log=lambda m: None
    )
    assert local == manifest  # byte-identical shards locally and in the bucket


def test_prepare_from_an_s3_root_on_ray_tasks_matches_the_local_run(
    prepared, data, ray_local, tmp_path, capsys
):
    """The root read from the bucket (listing + ranged reads by the tasks), work as Ray tasks: the same
    shards and manifest as the local, serial run; an empty source prefix is one error naming it."""
    from ltad.training.ray_map import ray_tasks

    uri, manifest = prepared
    root, _, split_path = data
    bucket, key = storage.split_s3(uri)
    source = f"s3://{bucket}/{key}-src"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        storage.upload_file(path, f"{source}/{path.relative_to(root).as_posix()}")
    out = f"{uri}-from-s3"
    lines: list[str] = []
    remote = prepare(
        "synth", source, split_path, out, test_shard_samples=8, log=lines.append, executor=ray_tasks
    )
    assert remote == manifest  # byte-identical shards (same sha256s) from the bucket on Ray tasks
    assert any(line.startswith("check: ") for line in lines) and "shards uploaded" in lines[-1]
    empty = f"s3://{bucket}/{key}-nothing-here"
    args = ["prepare", "--dataset", "synth", "--root", empty, "--split", str(split_path), "--out", out]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"dataset root '{empty}' lists no objects" in err and err.count("\n") == 1
    assert read_manifest(out) == manifest  # the failed run published nothing


def test_eval_stream_two_ranks_two_workers_exactly_once(prepared, data):
    uri, manifest = prepared
    keys, labels = [], Counter()
    for rank in range(2):
        stream = eval_stream(uri, manifest, image_size=32, rank=rank, world_size=2)
        for batch in make_loader(stream, batch_size=4, num_workers=2):
            assert batch["image"].shape[1:] == (3, 32, 32) and batch["gt_mask"].shape[1:] == (1, 32, 32)
            assert float(batch["image"].min()) >= 0.0 and float(batch["image"].max()) <= 1.0
            has_defect = batch["gt_mask"].flatten(1).amax(1) > 0
            assert (has_defect == (batch["gt_label"] == 1)).all()
            keys += batch["key"]
            labels.update(batch["gt_label"].tolist())
    test_keys = {r.path.rsplit(".", 1)[0] for r in read_dataset("synth", data[0]).select("test")}
    assert len(keys) == len(set(keys)) == manifest.samples("test")
    assert set(keys) == test_keys
    assert labels[0] > 0 and labels[1] > 0


def test_train_stream_fixed_length_weighted_deterministic(prepared):
    uri, manifest = prepared

    def run(rank: int, epoch: int = 0, balance: float = 1.0, workers: int = 0) -> list[str]:
        stream = train_stream(
            uri,
            manifest,
            image_size=32,
            epoch_samples=90,
            seed=3,
            rank=rank,
            world_size=2,
            class_balance=balance,
            epoch=epoch,
        )
        return [k for b in make_loader(stream, batch_size=5, num_workers=workers) for k in b["key"]]

    first, other = run(0, workers=2), run(1, workers=2)
    assert len(first) == len(other) == 45  # same length on every rank: no DDP hang
    assert first == run(0, workers=2)  # deterministic given seed, epoch, rank, worker
    assert first != other
    single = run(0)
    assert single == run(0) and single != run(0, epoch=1)
    tail = min(manifest.counts["train"], key=manifest.counts["train"].get)
    balanced = Counter(k.split("/")[0] for k in first + other)
    natural = Counter(k.split("/")[0] for k in run(0, balance=0.0) + run(1, balance=0.0))
    assert balanced[tail] > natural[tail]  # class-balanced mixing lifts the tail class
    assert set(balanced) == set(manifest.classes)


def test_missing_shard_is_a_clear_error(prepared):
    uri = _copy_prefix(prepared[0])
    manifest = read_manifest(uri)
    gone = storage.join(uri, manifest.shards["test"][1].name)
    storage.delete(gone)
    with pytest.raises(StorageError, match=f"no object at {gone}"):
        list(eval_stream(uri, manifest, image_size=32, rank=0, world_size=1))
    report = inspect(uri)
    assert report["matches_manifest"] is False and report["splits"]["train"]["matches_manifest"] is True
    assert any(gone in e for e in report["splits"]["test"]["errors"])
    assert cli.main(["inspect", uri]) == 1


def test_truncated_shard_is_a_clear_error(prepared):
    uri = _copy_prefix(prepared[0])
    manifest = read_manifest(uri)
    url = storage.join(uri, manifest.shards["test"][0].name)
    data = storage.read_bytes(url)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    keys = [m.name.split(".")[0] for m in members]
    third = keys.index(list(dict.fromkeys(keys))[3])
    cut = members[third].offset  # at a sample boundary: tarfile reports a normal end
    storage.write_bytes(url, data[:cut])
    with pytest.raises(DataError, match=f"shard {url} holds 3 samples but the manifest says 8"):
        list(eval_stream(uri, manifest, image_size=32, rank=0, world_size=1))
    assert cli.main(["inspect", uri]) == 1


def test_wrong_credentials_and_unreachable_endpoint(prepared, monkeypatch, capsys):
    uri = prepared[0]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage.reset_client()
    with pytest.raises(
        StorageError, match=f"S3 endpoint {os.environ['AWS_ENDPOINT_URL']} rejected the credentials"
    ):
        read_manifest(uri)
    assert cli.main(["inspect", uri]) == 2
    err = capsys.readouterr().err
    assert "rejected the credentials" in err and "not-the-secret" not in err
    monkeypatch.undo()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    storage.reset_client()
    with pytest.raises(StorageError, match="cannot reach S3 endpoint http://127.0.0.1:"):
        read_manifest(uri)
    monkeypatch.undo()
    storage.reset_client()


def test_server_stopped_mid_stream(s3_server, tmp_path, monkeypatch):
    """A dead server ends the read with a StorageError, never a short "successful" shard. A budget of 2
    retries (0.5 + 1 s of back-off) instead of the default 5 (15.5 s waited out): the error, not the
    budget's length, is what is checked here (the budget itself: tests/unit/test_storage.py)."""
    monkeypatch.setenv("LTAD_S3_RETRIES", "2")
    uri = f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:8]}/big-000000.tar"
    infos = []
    writer = ShardWriter(tmp_path, "big", "big", lambda path, info: infos.append((path, info)))
    for i in range(24):
        writer.write(f"s{i:03d}", {"bin": os.urandom(1 << 20), "cls": b"0"}, "a")
    writer.close()
    storage.upload_file(infos[0][0], uri)  # 24 MiB: multipart
    samples = iterate_shard(uri, 24)
    next(samples)
    s3_server.stop()
    try:
        with pytest.raises(StorageError, match=f"reading {uri} from S3 endpoint .* failed at byte"):
            for _ in samples:
                pass
    finally:
        s3_server.start()
        storage.reset_client()
    assert sum(1 for _ in iterate_shard(uri, 24)) == 24  # readable again after the restart


def test_indexed_shards_serve_ranged_reads_from_s3(prepared):
    """prepare indexed every shard; one ranged GET returns one sample; the bounded stream uses them."""
    uri, manifest = prepared
    assert manifest.sample_index
    entry = manifest.shards["train"][0]
    shard = storage.join(uri, entry.name)
    data = storage.read_bytes(shard)
    spans = index_shard(data)
    index = read_shard_index(shard, entry.sha256, entry.bytes)
    assert index is not None and index.offsets.tolist() == [s.offset for s in spans]
    last = spans[-1]
    assert (
        storage.read_range(shard, last.offset, last.length) == data[last.offset : last.offset + last.length]
    )
    assert storage.read_range(shard, len(data) - 10, 100) == data[-10:]  # short at the end of the object
    assert storage.read_range(shard, len(data) + 10, 5) == b""  # past the end: a truncated shard
    with pytest.raises(StorageError, match="no object"):
        storage.read_range(storage.join(uri, "train/missing-000000.tar"), 0, 10)
    stream = train_stream(
        uri, manifest, image_size=32, epoch_samples=60, seed=0, rank=0, world_size=1, max_open_sources=1
    )
    keys = [s["key"] for s in stream]
    assert len(keys) == 60 and stream.stats["ranged_reads"] > 0 and stream.bad_samples == 0
    assert {k.split("/")[0] for k in keys} == set(manifest.classes)
