"""The per-node weights cache: local paths, s3:// fetched once (real SeaweedFS), concurrency, corruption."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ltad.config import EncoderConfig, LTADConfig
from ltad.errors import StorageError
from ltad.io import blobs, storage

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(blobs.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def _put(uri: str, data: bytes, tmp: Path, metadata: dict[str, str] | None = None) -> None:
    local = tmp / "upload.bin"
    local.write_bytes(data)
    storage.upload_file(local, uri, metadata=metadata)


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "blobs").iterdir() if p.name.startswith("."))


def test_local_file_resolves_to_itself_with_its_sha256(tmp_path, cache):
    path = tmp_path / "w.pt"
    path.write_bytes(b"weights" * 1000)
    blob = blobs.resolve(str(path))
    assert blob.path == path and not blob.fetched
    assert blob.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not cache.exists()  # local files are never copied
    with pytest.raises(StorageError, match=f"no file at {tmp_path / 'missing.pt'}"):
        blobs.resolve(str(tmp_path / "missing.pt"))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(blobs.CACHE_ENV, str(tmp_path))
    assert blobs.cache_dir() == tmp_path / "weights"
    monkeypatch.delenv(blobs.CACHE_ENV)
    assert blobs.cache_dir() == Path.home() / ".cache" / "ltad" / "weights"


def test_relative_weight_paths_become_absolute_at_config_load(tmp_path, monkeypatch):
    """Ray Train workers run in another directory: the driver's relative path must not reach them."""
    monkeypatch.chdir(tmp_path)
    Path("w.pt").write_bytes(b"x")
    cfg = LTADConfig.from_dict({"model": {"encoder": {"pretrained": "w.pt"}}})
    assert cfg.model.encoder.pretrained == str(tmp_path / "w.pt")
    monkeypatch.chdir("/")
    assert LTADConfig.from_dict(cfg.to_dict()).model.encoder.pretrained == str(tmp_path / "w.pt")
    for kept in ("bundled", "none", "laion2b_s34b_b88k", "s3://bucket/w.pt", "missing.pt"):
        assert EncoderConfig(pretrained=kept).pretrained == kept


def test_s3_object_is_fetched_once_then_served_from_the_cache(s3_server, tmp_path, cache):
    uri = f"s3://{s3_server.bucket}/blobs-test/once/clip.pt"
    data = os.urandom(300_000)
    _put(uri, data, tmp_path)
    first = blobs.fetch(uri)
    sha = hashlib.sha256(data).hexdigest()
    assert first.fetched and first.sha256 == sha and first.source == uri
    assert first.path == cache / "blobs" / f"{sha}.pt" and first.path.read_bytes() == data
    second = blobs.resolve(uri)
    assert not second.fetched and second.path == first.path and second.sha256 == sha
    # a new object at the same URI (new ETag) is fetched again, under its own hash
    _put(uri, data[::-1], tmp_path)
    third = blobs.fetch(uri)
    assert third.fetched and third.sha256 == hashlib.sha256(data[::-1]).hexdigest()
    assert third.path.read_bytes() == data[::-1]
    record = json.loads(next((cache / "refs").iterdir()).read_text())
    assert record["uri"] == uri and record["sha256"] == third.sha256
    assert _leftovers(cache) == []


def test_corrupt_cached_blob_is_fetched_again(s3_server, tmp_path, cache):
    uri = f"s3://{s3_server.bucket}/blobs-test/heal/clip.pt"
    data = os.urandom(50_000)
    _put(uri, data, tmp_path)
    path = blobs.fetch(uri).path
    path.write_bytes(b"\0" * len(data))  # same size, wrong bytes (bit rot, a bad copy)
    again = blobs.fetch(uri)
    assert again.fetched and again.path.read_bytes() == data


def test_download_that_does_not_match_the_object_sha256_fails_and_leaves_nothing(s3_server, tmp_path, cache):
    uri = f"s3://{s3_server.bucket}/blobs-test/corrupt/clip.pt"
    _put(uri, b"real bytes", tmp_path, metadata={"sha256": "0" * 64})
    with pytest.raises(StorageError, match=f"download of {uri} is corrupt: its content has sha256"):
        blobs.fetch(uri)
    assert [p.name for p in (cache / "blobs").iterdir()] == []
    assert not (cache / "refs").exists()


def test_missing_object_or_bucket_names_the_uri(s3_server, cache):
    uri = f"s3://{s3_server.bucket}/blobs-test/nothing/here.pt"
    with pytest.raises(StorageError, match=f"no object at {uri}"):
        blobs.fetch(uri)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-ltad' of s3://no-such-bucket-ltad/w.pt"):
        blobs.fetch("s3://no-such-bucket-ltad/w.pt")


FETCH = """
import json, os, sys, time
from ltad.io import blobs
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
b = blobs.fetch(sys.argv[1])
print(json.dumps({"path": str(b.path), "sha256": b.sha256, "fetched": b.fetched}))
"""


def test_two_processes_fetching_at_once_download_once(s3_server, tmp_path, cache):
    uri = f"s3://{s3_server.bucket}/blobs-test/concurrent/clip.safetensors"
    data = os.urandom(24 << 20)
    _put(uri, data, tmp_path)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH, uri, str(go)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    time.sleep(3)  # both are importing and waiting for the start signal
    go.touch()
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    sha = hashlib.sha256(data).hexdigest()
    assert [r["fetched"] for r in results].count(True) == 1
    assert {r["path"] for r in results} == {str(cache / "blobs" / f"{sha}.safetensors")}
    assert {r["sha256"] for r in results} == {sha}
    assert Path(results[0]["path"]).read_bytes() == data
    assert _leftovers(cache) == []


def test_feature_cache_fingerprint_follows_the_checkpoint_content(tmp_path, cache):
    """A replaced checkpoint at the same path gets a new feature cache; bundled keeps its fingerprint."""
    from types import SimpleNamespace

    from ltad.training.feature_cache import fingerprint

    man = SimpleNamespace(
        shards={"train": [SimpleNamespace(name="train/a-000000.tar", sha256="1")], "test": []}
    )
    path = tmp_path / "w.pt"
    path.write_bytes(b"one")
    first = fingerprint(EncoderConfig(pretrained=str(path)), man)
    path.write_bytes(b"two")
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime even on coarse clocks
    assert fingerprint(EncoderConfig(pretrained=str(path)), man) != first
    assert fingerprint(EncoderConfig(), man) == fingerprint(EncoderConfig(), man)
    path.unlink()
    with pytest.raises(StorageError, match=f"model.encoder.pretrained '{path}': no file at {path}"):
        fingerprint(EncoderConfig(pretrained=str(path)), man)
