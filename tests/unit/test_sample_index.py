"""sample_index.py and storage.read_range: byte ranges that parse as one sample, sidecars, staleness."""

from __future__ import annotations

import io
import json

import pytest

from ltad.data.manifest import Manifest
from ltad.data.sample_index import (
    FORMAT,
    index_name,
    index_shard,
    read_fragment,
    read_shard_index,
    write_shard_index,
)
from ltad.data.shards import ShardWriter, iterate_shard
from ltad.errors import DataError, StorageError
from ltad.io import storage

LONG = "x" * 120  # member names over 100 characters get a GNU long-name header before their own


def _shard(tmp_path, with_mask_every: int = 3):
    done = []
    writer = ShardWriter(tmp_path / "w", "train", "part", lambda path, info: done.append((path, info)))
    for i in range(7):
        cls = "b" if i % 2 else "a"
        files = {
            "png": bytes([i]) * (100 + 517 * i),  # sizes off the 512-byte block on purpose
            "cls": str(int(cls == "b")).encode(),
            "json": json.dumps({"class_name": cls}).encode(),
        }
        if i % with_mask_every == 0:
            files["mask.png"] = b"m" * (i + 1)
        writer.write(f"{cls}/{LONG if i == 4 else 'good'}/{i:03d}", files, cls)
    writer.close()
    [(path, info)] = done
    return path, info


def test_index_spans_parse_back_to_the_same_samples(tmp_path):
    path, info = _shard(tmp_path)
    spans = index_shard(path)
    data = path.read_bytes()
    samples = list(iterate_shard(str(path), info.samples))
    assert [s.key for s in spans] == [s["__key__"] for s in samples]
    assert [s.class_name for s in spans] == ["a", "b", "a", "b", "a", "b", "a"]
    assert spans[0].offset == 0
    for prev, nxt in zip(spans, spans[1:]):  # contiguous: every byte of the tar belongs to one sample
        assert prev.offset + prev.length == nxt.offset and prev.length % 512 == 0
    for span, sample in zip(spans, samples):
        fragment = read_fragment(
            data[span.offset : span.offset + span.length], str(path), span.offset, span.length
        )
        assert fragment == sample
    assert index_shard(data) == spans  # from bytes as from a path


def test_sidecar_round_trip_stale_and_malformed(tmp_path):
    path, info = _shard(tmp_path)
    uri = str(tmp_path / "pub" / "train" / "part-000000.tar")
    storage.upload_file(path, uri)
    side = write_shard_index(path, uri, info.sha256)
    assert side == index_name(uri) == str(tmp_path / "pub" / "train" / "part-000000.index.json")
    doc = json.loads(storage.read_bytes(side))
    assert doc["format"] == FORMAT and doc["shard"] == "part-000000.tar" and doc["classes"] == ["a", "b"]
    index = read_shard_index(uri, info.sha256, info.bytes)
    assert index is not None and index.classes == ("a", "b")
    assert index.class_pos.tolist() == [0, 1, 0, 1, 0, 1, 0]
    assert [int(o) for o in index.offsets] == [s.offset for s in index_shard(path)]
    assert read_shard_index(uri, "0" * 64, info.bytes) is None  # a sidecar of other bytes: ignored
    assert read_shard_index(str(tmp_path / "pub" / "train" / "none-000000.tar"), info.sha256, 1) is None
    doc["samples"][0][2] = info.bytes  # a range past the shard's end
    storage.write_bytes(side, json.dumps(doc).encode())
    with pytest.raises(DataError, match="malformed"):
        read_shard_index(uri, info.sha256, info.bytes)
    with pytest.raises(DataError, match="not a .tar shard"):
        index_name("train/x.zip")


def test_fragment_of_a_truncated_or_shifted_range_is_a_data_error(tmp_path):
    path, _ = _shard(tmp_path)
    spans = index_shard(path)
    data = path.read_bytes()
    span = spans[2]
    cut = data[span.offset : span.offset + span.length - 600]
    with pytest.raises(DataError, match="truncated"):
        read_fragment(cut, "s3://b/x.tar", span.offset, span.length)
    two = data[span.offset : spans[3].offset + spans[3].length]  # a range over two samples
    with pytest.raises(DataError, match="another sample"):
        read_fragment(two, "s3://b/x.tar", span.offset, len(two))
    with pytest.raises(DataError, match="corrupt"):
        read_fragment(b"\1" * 1024, "s3://b/x.tar", 0, 1024)


def test_local_read_range(tmp_path):
    f = tmp_path / "blob"
    f.write_bytes(bytes(range(256)) * 4)
    assert storage.read_range(str(f), 10, 5) == bytes(range(10, 15))
    assert storage.read_range(str(f), 1020, 10) == bytes(range(252, 256))  # short at the end
    assert storage.read_range(str(f), 5000, 10) == b""
    assert storage.read_range(str(f), 3, 0) == b""
    with pytest.raises(StorageError, match="no file"):
        storage.read_range(str(tmp_path / "missing"), 0, 1)


def test_manifest_sample_index_flag_is_optional(tmp_path):
    base = {
        "format": "ltad-shards/1",
        "dataset": "d",
        "classes": ["a"],
        "split": {"sha256": "s", "profile": "full", "ratio": 1.0, "seed": 0, "class_order": ["a"]},
        "shards": {"train": [], "test": []},
        "counts": {"train": {"a": 0}, "test": {"a": 0}},
        "image_sizes": {},
    }
    old = Manifest.from_dict(base)
    assert old.sample_index is False
    new = Manifest.from_dict({**base, "sample_index": True})
    assert new.sample_index is True and Manifest.from_dict(new.to_dict()) == new


class _FlakyS3:
    """get_object over one in-memory object: the first `failures` calls time out; Range honoured."""

    def __init__(self, data: bytes, failures: int) -> None:
        self.data, self.failures, self.ranges = data, failures, []
        self.meta = type("Meta", (), {"endpoint_url": "http://127.0.0.1:9"})()

    def get_object(self, Bucket, Key, Range=None):
        from botocore.exceptions import ClientError, ReadTimeoutError

        self.ranges.append(Range)
        if self.failures > 0:
            self.failures -= 1
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9")
        if Key == "missing":
            raise ClientError(
                {"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "Get"
            )
        if Key == "denied":
            raise ClientError(
                {"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "Get"
            )
        data = self.data
        if Range:
            first, last = (int(v) for v in Range.split("=")[1].split("-"))
            if first >= len(data):
                raise ClientError(
                    {"Error": {"Code": "InvalidRange"}, "ResponseMetadata": {"HTTPStatusCode": 416}}, "Get"
                )
            data = data[first : last + 1]
        return {"Body": io.BytesIO(data)}


def test_s3_ranged_and_optional_reads_retry_transient_errors(monkeypatch):
    client = _FlakyS3(bytes(range(200)), failures=2)
    monkeypatch.setattr(storage, "client", lambda: client)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    assert storage.read_range("s3://b/k", 10, 5) == bytes(range(10, 15))
    assert client.ranges == ["bytes=10-14"] * 3  # two timeouts, then the same range again
    assert storage.read_range("s3://b/k", 190, 50) == bytes(range(190, 200))  # short at the end
    assert storage.read_range("s3://b/k", 300, 5) == b""  # past the end: the caller's truncation check
    assert storage.read_optional("s3://b/k") == bytes(range(200))
    assert storage.read_optional("s3://b/missing") is None
    with pytest.raises(StorageError, match="rejected the credentials"):
        storage.read_range("s3://b/denied", 0, 5)
    client.failures = 10
    with pytest.raises(StorageError, match="after 2 retries"):
        storage.read_range("s3://b/k", 0, 5, retries=2)
    client.failures = 10
    with pytest.raises(StorageError, match="after 1 retries"):
        storage.read_optional("s3://b/k", retries=1)
