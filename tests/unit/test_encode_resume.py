"""The feature-cache encode stage: shards balanced by bytes, resumable after an interruption, data.cache_uri."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ltad.data.manifest import ShardEntry, read_manifest
from ltad.training.feature_cache import (
    DONE,
    balance_by_bytes,
    cache_root,
    encode,
    fingerprint,
    verified_shard,
)

SMALL = dict(image_size=32, grid=4)


def test_balance_by_bytes_is_greedy_largest_first_and_keeps_order():
    sizes = [5, 1, 9, 3, 3, 7, 2]
    parts = balance_by_bytes(list(range(len(sizes))), 3, lambda i: sizes[i])
    assert sorted(i for p in parts for i in p) == list(range(len(sizes)))  # every item once
    assert all(p == sorted(p) for p in parts)  # input order kept within a worker
    loads = sorted(sum(sizes[i] for i in p) for p in parts)
    assert loads == [10, 10, 10]  # 9+1 | 7+3 | 5+3+2
    # by count a round-robin split would give 5+3+2, 1+7, 9+3: loads 10, 8, 12
    assert balance_by_bytes([], 2, len) == [[], []]
    assert balance_by_bytes(["a"], 3, len) == [["a"], [], []]
    with pytest.raises(ValueError):
        balance_by_bytes([1], 0, lambda x: x)


def test_balance_by_bytes_never_worse_than_count_split_on_skewed_shards():
    sizes = [100] + [10] * 9 + [1] * 10  # one big shard, a tail of small ones
    loads = [sum(sizes[i] for i in p) for p in balance_by_bytes(list(range(20)), 4, lambda i: sizes[i])]
    by_count = [sum(sizes[i::4]) for i in range(4)]
    assert max(loads) == 100 and max(by_count) > max(loads)


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> str:
    """2 classes at 32 px, shards in a local folder (no S3): 4 train and 3 test shards."""
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    tmp = tmp_path_factory.mktemp("encode-data")
    root = synthesize(tmp / "synth", classes=2, image_size=32, train_per_class=4, test_per_class=5, seed=0)
    split = make_split(read_dataset("synth", root), "exp", ratio=2, seed=0)
    out = str(tmp / "shards")
    prepare("synth", root, split.save(tmp / "split.json"), out, test_shard_samples=4, log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def encoder():
    from ltad.config import EncoderConfig
    from ltad.models.encoder import Encoder

    return Encoder(EncoderConfig(**SMALL))


@pytest.fixture(scope="module")
def clean(local_data, encoder, tmp_path_factory):
    """The manifest of an uninterrupted single-process encode (batches of 3)."""
    return read_manifest(
        encode(encoder, local_data, batch_size=3, root=str(tmp_path_factory.mktemp("clean")))
    )


class Interrupt(Exception):
    pass


def _spy(monkeypatch, encoder) -> list[int]:
    """Count the images the encoder is asked to encode (one entry per call)."""
    calls: list[int] = []
    real = encoder.encode_images

    def counting(images):
        calls.append(len(images))
        return real(images)

    monkeypatch.setattr(encoder, "encode_images", counting)
    return calls


def test_interrupted_encode_resumes_without_recomputing_finished_shards(
    local_data, encoder, clean, tmp_path, monkeypatch
):
    manifest = read_manifest(local_data)
    shards = {e.name: e.samples for s in ("train", "test") for e in manifest.shards[s]}
    total = sum(shards.values())

    calls = _spy(monkeypatch, encoder)
    finished: list[str] = []

    def stop_after_two(msg: str) -> None:
        finished.append(msg.split(":", 1)[0])
        if len(finished) == 2:
            raise Interrupt  # a preemption right after the second shard was recorded done

    root = str(tmp_path / "cache")
    with pytest.raises(Interrupt):
        encode(encoder, local_data, batch_size=3, root=root, log=stop_after_two)
    out = Path(root) / fingerprint(encoder.cfg, manifest)
    assert not (out / "manifest.json").exists()  # no manifest: the cache is not used half-written
    done = sorted(str(p.relative_to(out / DONE))[: -len(".json")] for p in (out / DONE).rglob("*.json"))
    assert done == sorted(finished) and len(done) == 2
    calls.clear()
    resumed = read_manifest(encode(encoder, local_data, batch_size=3, root=root, log=lambda _m: None))
    assert sum(calls) == total - sum(shards[n] for n in done)  # the two finished shards not encoded again
    assert resumed.shards == clean.shards  # same names, counts and sha256: byte-identical shards
    assert resumed.extra["precision"] == "fp32"

    calls.clear()
    encode(encoder, local_data, batch_size=3, root=root)  # complete: reused, nothing encoded
    assert calls == []


def test_a_damaged_or_foreign_shard_is_encoded_again(local_data, encoder, tmp_path, monkeypatch):
    manifest = read_manifest(local_data)
    root = str(tmp_path / "cache")
    uri = encode(encoder, local_data, batch_size=4, root=root)
    cache_id = fingerprint(encoder.cfg, manifest)
    assert uri == str(Path(cache_root(local_data, root)) / cache_id)
    name = manifest.shards["test"][0].name
    assert verified_shard(uri, name, cache_id, "fp32") == next(
        e for e in read_manifest(uri).shards["test"] if e.name == name
    )
    assert verified_shard(uri, name, "0" * 16, "fp32") is None  # another encoder's record
    assert verified_shard(uri, name, cache_id, "bf16") is None  # encoded at another precision
    shard = Path(uri) / name
    data = bytearray(shard.read_bytes())
    data[-600] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    assert verified_shard(uri, name, cache_id, "fp32") is None
    record = Path(uri) / DONE / f"{name}.json"
    record.write_text("{not json")
    assert verified_shard(uri, name, cache_id, "fp32") is None
    (Path(uri) / "manifest.json").unlink()  # as if interrupted before the manifest
    calls = _spy(monkeypatch, encoder)
    encode(encoder, local_data, batch_size=4, root=root)
    assert sum(calls) == manifest.shards["test"][0].samples  # only the damaged shard
    assert json.loads(record.read_text())["sha256"] == read_manifest(uri).shards["test"][0].sha256


def test_loader_workers_decode_and_give_the_same_cache(local_data, encoder, clean, tmp_path):
    two = read_manifest(encode(encoder, local_data, batch_size=3, root=str(tmp_path / "b"), num_workers=2))
    assert two.shards == clean.shards  # byte-identical shards whichever process decoded them
    assert all(isinstance(e, ShardEntry) for e in two.shards["train"])


def test_a_failed_upload_stops_the_encode_with_its_error_and_no_shard_after_it(
    local_data, encoder, tmp_path, monkeypatch
):
    from ltad.errors import StorageError
    from ltad.io import storage

    real, uploads = storage.upload_file, []

    def second_fails(path, uri, metadata=None):
        uploads.append(uri)
        if len(uploads) == 2:
            raise StorageError(f"cannot write '{uri}': connection reset")
        return real(path, uri, metadata=metadata)

    monkeypatch.setattr(storage, "upload_file", second_fails)
    root = str(tmp_path / "cache")
    with pytest.raises(StorageError, match="connection reset"):
        encode(encoder, local_data, batch_size=3, root=root, log=lambda _m: None)
    out = Path(root) / fingerprint(encoder.cfg, read_manifest(local_data))
    assert not (out / "manifest.json").exists()
    done = sorted(str(p.relative_to(out / DONE))[: -len(".json")] for p in (out / DONE).rglob("*.json"))
    first = uploads[0].split(f"{out}/", 1)[1]
    assert done == [first] and len(uploads) == 2  # the failed shard has no record; nothing ran after it


def test_uploads_run_behind_the_encoder_and_end_before_the_manifest(
    local_data, encoder, clean, tmp_path, monkeypatch
):
    import threading
    import time

    from ltad.io import storage
    from ltad.training import feature_cache

    real_upload, real_manifest = storage.upload_file, feature_cache.write_manifest
    uploading, events = threading.Event(), []

    def slow_upload(path, uri, metadata=None):
        uploading.set()
        time.sleep(0.3)  # a slow store: the encoder should go on meanwhile
        real_upload(path, uri, metadata=metadata)
        events.append(("uploaded", time.monotonic()))
        uploading.clear()

    real_encode = encoder.encode_images

    def encode_images(images):
        events.append(("encode while uploading" if uploading.is_set() else "encode", time.monotonic()))
        return real_encode(images)

    def manifest_last(uri, manifest):
        events.append(("manifest", time.monotonic()))
        return real_manifest(uri, manifest)

    monkeypatch.setattr(storage, "upload_file", slow_upload)
    monkeypatch.setattr(encoder, "encode_images", encode_images)
    monkeypatch.setattr(feature_cache, "write_manifest", manifest_last)
    uri = encode(encoder, local_data, batch_size=3, root=str(tmp_path / "c"), log=lambda _m: None)
    kinds = [kind for kind, _ in events]
    assert "encode while uploading" in kinds  # the encoder did not wait for the upload
    assert kinds[-1] == "manifest" and kinds.count("manifest") == 1
    assert kinds.count("uploaded") == sum(len(s) for s in clean.shards.values())
    assert read_manifest(uri).shards == clean.shards  # same bytes as the synchronous encode
