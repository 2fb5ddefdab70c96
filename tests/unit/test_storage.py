"""storage.py: the local half for real, the S3 error paths and resumable reads with a mocked client."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from ltad.errors import StorageError
from ltad.io import storage


def test_local_roundtrip(tmp_path):
    uri = storage.join(str(tmp_path), "a", "b.json")
    storage.write_json(uri, {"x": [1, 2]})
    storage.write_bytes(storage.join(str(tmp_path), "a", "c.bin"), b"\x00" * 10)
    assert storage.read_json(uri) == {"x": [1, 2]}
    assert storage.exists(uri) and storage.head(uri)["size"] == len(Path(uri).read_bytes())
    assert storage.list(str(tmp_path)) == [str(tmp_path / "a" / "b.json"), str(tmp_path / "a" / "c.bin")]
    storage.delete(uri)
    storage.delete(uri)  # absent is fine
    assert not storage.exists(uri) and storage.head(uri) is None
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp files left


def test_local_upload_and_missing_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)
    storage.upload_file(src, str(tmp_path / "out" / "dst.bin"))
    assert storage.read_bytes(str(tmp_path / "out" / "dst.bin")) == b"abc" * 1000
    with pytest.raises(StorageError, match="no file at .*nope"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_join_and_split():
    assert storage.join("s3://b/pre/", "train", "x.tar") == "s3://b/pre/train/x.tar"
    assert storage.split_s3("s3://b/pre/x") == ("b", "pre/x")
    with pytest.raises(StorageError, match="not a valid S3 URI"):
        storage.split_s3("s3:///x")


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


class FakeClient:
    """get_object over an in-memory object; the first bodies die after `fail_after` bytes."""

    def __init__(self, data: bytes, failures: int, fail_after: int = 1000) -> None:
        self.data, self.failures, self.fail_after = data, failures, fail_after
        self.ranges: list[str | None] = []
        self.meta = type("Meta", (), {"endpoint_url": "http://127.0.0.1:9"})()

    def get_object(self, Bucket, Key, Range=None, IfMatch=None):
        self.ranges.append(Range)
        start = int(Range.split("=")[1].rstrip("-")) if Range else 0
        body = io.BytesIO(self.data[start:])
        if self.failures > 0:
            self.failures -= 1
            limit = self.fail_after

            class Dying:
                def __init__(self):
                    self.sent = 0

                def read(self, n):
                    if self.sent >= limit:
                        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9")
                    chunk = body.read(min(n, limit - self.sent))
                    self.sent += len(chunk)
                    return chunk

                def close(self):
                    pass

            return {"ContentLength": len(self.data) - start, "ETag": '"e"', "Body": Dying()}
        return {"ContentLength": len(self.data) - start, "ETag": '"e"', "Body": body}


@pytest.fixture
def fake(monkeypatch):
    def install(client):
        monkeypatch.setattr(storage, "client", lambda: client)
        monkeypatch.setattr(storage.time, "sleep", lambda s: None)
        return client

    return install


def test_read_resumes_with_ranged_get(fake):
    data = os.urandom(5000)
    client = fake(FakeClient(data, failures=3))
    with storage.open_read("s3://b/k") as f:
        assert f.read() == data
    assert client.ranges == [None, "bytes=1000-", "bytes=2000-", "bytes=3000-"]


def test_read_gives_up_with_clear_error(fake):
    fake(FakeClient(os.urandom(5000), failures=100, fail_after=100))
    with pytest.raises(
        StorageError, match=r"reading s3://b/k from S3 endpoint http://127.0.0.1:9 failed at byte"
    ):
        storage.read_bytes("s3://b/k")


def test_short_body_is_not_a_normal_end(fake):
    class Short(FakeClient):
        def get_object(self, **kw):
            out = super().get_object(**kw)
            out["Body"] = io.BytesIO(b"x" * 10)  # claims 5000 bytes, sends 10
            return out

    fake(Short(b"x" * 5000, failures=0))
    with pytest.raises(StorageError, match="failed at byte 60 of 5000 after 5 retries"):
        storage.read_bytes("s3://b/k")


@pytest.mark.parametrize(
    ("exc", "pattern"),
    [
        (_client_error("InvalidAccessKeyId", 403), "rejected the credentials for s3://b/k"),
        (_client_error("SignatureDoesNotMatch", 403), "rejected the credentials"),
        (_client_error("NoSuchBucket", 404), "bucket 'b' of s3://b/k does not exist"),
        (_client_error("NoSuchKey", 404), "no object at s3://b/k"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "cannot reach S3 endpoint"),
    ],
)
def test_errors_name_url_and_endpoint_not_secrets(fake, monkeypatch, exc, pattern):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecretvalue")

    class Failing(FakeClient):
        def get_object(self, **kw):
            raise exc

    fake(Failing(b"", failures=0))
    with pytest.raises(StorageError, match=pattern) as info:
        storage.read_bytes("s3://b/k")
    assert "http://127.0.0.1:9" in str(info.value)
    assert "topsecretvalue" not in str(info.value)


def test_webdataset_opens_s3_through_storage(fake):
    import webdataset

    data = os.urandom(3000)
    fake(FakeClient(data, failures=1))
    storage.register_webdataset()
    with webdataset.gopen("s3://b/k") as f:
        assert f.read() == data
