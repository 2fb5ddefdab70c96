"""What ltad asks of S3, counted at the counting proxy (tools/services/s3_proxy.py) in front of real
SeaweedFS: the proxy's records, server-side copies, checked weights copies, naming weights by HEAD."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pytest

from ltad.config import EncoderConfig
from ltad.errors import StorageError
from ltad.io import blobs, storage
from tools.services.s3_proxy import CountingProxy, summarise


@pytest.fixture
def proxy(s3_server, monkeypatch):
    """The proxy in front of the session's SeaweedFS, this process's S3 client pointed at it."""
    import os

    port = urlsplit(os.environ["AWS_ENDPOINT_URL"]).port
    with CountingProxy(port) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        storage.reset_client()
        yield p
    storage.reset_client()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(blobs.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def test_the_proxy_records_each_request_with_its_key_and_bytes(proxy, s3_server, tmp_path):
    base = f"s3://{s3_server.bucket}/proxy-{tmp_path.name}"
    local = tmp_path / "a.bin"
    local.write_bytes(b"x" * 100_000)
    storage.upload_file(local, f"{base}/a.bin")
    assert storage.read_range(f"{base}/a.bin", 10, 1000) == b"x" * 1000
    storage.copy(f"{base}/a.bin", f"{base}/b.bin", size=100_000)
    assert storage.head(f"{base}/b.bin")["size"] == 100_000
    assert storage.list(base) == [f"{base}/a.bin", f"{base}/b.bin"]
    key = f"{s3_server.bucket}/proxy-{tmp_path.name}"
    mine = [r for r in proxy.records() if r["key"].startswith(key)]
    assert [(r["method"], r["key"].rsplit("/", 1)[-1], r["status"]) for r in mine[:4]] == [
        ("PUT", "a.bin", 200),
        ("GET", "a.bin", 206),
        ("PUT", "b.bin", 200),
        ("HEAD", "b.bin", 200),
    ]
    put, get, copy = mine[:3]
    assert put["up"] == 100_000 and put["copy_source"] == ""
    assert get["down"] == 1000 and get["range"] == "bytes=10-1009"
    assert copy["copy_source"].endswith(f"{key}/a.bin") and copy["up"] == 0 and copy["down"] < 1000
    counts = summarise(proxy.records(), key)
    assert counts["COPY"]["requests"] == 1 and counts["PUT"] == {"requests": 1, "up": 100_000, "down": 0}
    assert proxy.stats()["gets"] >= 2  # the range read and the listing
    proxy.reset()
    assert proxy.records() == []


def test_storage_copy_between_local_and_s3_keeps_the_bytes(s3_server, tmp_path):
    base = f"s3://{s3_server.bucket}/copy-{tmp_path.name}"
    src = tmp_path / "src.bin"
    src.write_bytes(b"weights" * 999)
    storage.copy(str(src), f"{base}/up.bin")
    storage.copy(f"{base}/up.bin", str(tmp_path / "down" / "down.bin"))
    storage.copy(str(tmp_path / "down" / "down.bin"), str(tmp_path / "again.bin"))
    assert (tmp_path / "again.bin").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in (tmp_path / "down").iterdir()) == ["down.bin"]  # no temp file left
    with pytest.raises(StorageError, match="no file at"):
        storage.copy(str(tmp_path / "absent.bin"), str(tmp_path / "x.bin"))


def test_weights_are_copied_server_side_only_while_unchanged(proxy, s3_server, tmp_path, cache):
    """The publishing of a run's encoder weights: a server-side copy when the object still has the
    ETag the run fetched it with; replaced weights are refused in one sentence, nothing written."""
    base = f"s3://{s3_server.bucket}/weights-{tmp_path.name}"
    local = tmp_path / "clip.pt"
    local.write_bytes(b"one" * 50_000)
    storage.upload_file(local, f"{base}/clip.pt")
    used = blobs.resolve(f"{base}/clip.pt")  # what a worker fetched, with its ETag
    assert used.etag
    proxy.reset()
    blobs.copy_checked(f"{base}/clip.pt", used.sha256, f"{base}/out/encoder.pt", etag=used.etag)
    counts = summarise(proxy.records(), f"{s3_server.bucket}/weights-{tmp_path.name}")
    assert set(counts) == {"HEAD", "COPY"} and counts["COPY"]["requests"] == 1, counts
    assert storage.read_bytes(f"{base}/out/encoder.pt") == local.read_bytes()

    local.write_bytes(b"two" * 50_000)
    storage.upload_file(local, f"{base}/clip.pt")
    with pytest.raises(StorageError, match=f"the encoder weights at {base}/clip.pt changed since the run"):
        blobs.copy_checked(f"{base}/clip.pt", used.sha256, f"{base}/out2/encoder.pt", etag=used.etag)
    assert not storage.exists(f"{base}/out2/encoder.pt")
    # a local source is hashed, then copied
    blobs.copy_checked(str(local), hashlib.sha256(local.read_bytes()).hexdigest(), str(tmp_path / "e.pt"))
    assert (tmp_path / "e.pt").read_bytes() == local.read_bytes()


def test_the_feature_cache_is_named_without_downloading_the_weights(proxy, s3_server, tmp_path, cache):
    """A driver on a CPU head names the feature cache by one HEAD of the weights: no GET, no copy in
    its node's cache. Replacing the object changes the name; `sha256` metadata names it by content."""
    from ltad.training.feature_cache import fingerprint

    man = SimpleNamespace(
        shards={"train": [SimpleNamespace(name="train/a-000000.tar", sha256="1")], "test": []}
    )
    base = f"s3://{s3_server.bucket}/fingerprint-{tmp_path.name}"
    local = tmp_path / "clip.pt"
    local.write_bytes(b"one" * 1000)
    storage.upload_file(local, f"{base}/clip.pt")
    proxy.reset()
    first = fingerprint(EncoderConfig(pretrained=f"{base}/clip.pt"), man)
    methods = [r["method"] for r in proxy.records() if "clip.pt" in r["key"]]
    assert methods == ["HEAD"], methods
    assert not cache.exists()
    local.write_bytes(b"two" * 1000)
    storage.upload_file(local, f"{base}/clip.pt")
    assert fingerprint(EncoderConfig(pretrained=f"{base}/clip.pt"), man) != first
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    storage.upload_file(local, f"{base}/clip.pt", metadata={"sha256": sha})
    assert blobs.content_id(f"{base}/clip.pt") == sha == blobs.content_id(str(local))


def test_a_rank_s_restore_reads_its_own_zero_shard_and_the_model_states_only(proxy, s3_server, tmp_path):
    """Counted at the store: one listing, then one GET each of the rank's ZeRO shard, the model states
    and the history; never the other ranks' shards, the marker or DeepSpeed's recovery script."""
    from ltad.training import store

    local = tmp_path / "ckpt"
    (local / "ds").mkdir(parents=True)
    for rank in (0, 1, 2):
        (local / "ds" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"s" * 5000)
    (local / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"m" * 3000)
    (local / "ds" / "zero_to_fp32.py").write_text("# recovery script\n")
    (local / "ds" / "latest").write_text("ds")
    (local / "history.jsonl").write_text("{}\n")
    uri = store.step_dir(f"s3://{s3_server.bucket}/restore-{tmp_path.name}/run-phase2", 8)
    store.upload_rank_files(local, uri, skip=("history.jsonl",))
    store.seal(uri, local, step=8, world_size=3, files=("history.jsonl",))
    proxy.reset()
    store.download(uri, tmp_path / "rank1", rank=1)
    key = uri.removeprefix("s3://") + "/"
    gets = sorted(
        r["key"].removeprefix(key) for r in proxy.records() if r["method"] == "GET" and r["query"] == ""
    )
    assert gets == [
        "ds/mp_rank_00_model_states.pt",
        "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "history.jsonl",
    ]
    assert sum(r["down"] for r in proxy.records() if r["query"] == "") == 5000 + 3000 + 3


def _evaluation(local: Path, weights: Path, sha: str, etag: str | None = None) -> None:
    """An evaluation directory as the job leaves it: its model refers to the encoder weights."""
    import json

    (local / "model").mkdir(parents=True)
    (local / "model" / "weights.pt").write_bytes(b"w" * 2000)
    record = {"file": "encoder.pt", "sha256": sha, "source": str(weights), **({"etag": etag} if etag else {})}
    (local / "model" / "export.json").write_text(
        json.dumps({"format": "ltad-model/1", "encoder_weights": record})
    )
    (local / "report.md").write_text("# report\n")
    (local / "metrics.json").write_text("{}")
    (local / ".ray-metadata").write_text("{}")


def test_publish_copies_server_side_and_adds_the_weights_once(proxy, s3_server, tmp_path, cache):
    from ltad.training.pipeline import publish
    from ltad.training.store import upload_rank_files

    base = f"s3://{s3_server.bucket}/publish-{tmp_path.name}"
    local = tmp_path / "clip.pt"
    local.write_bytes(b"clip" * 20_000)
    storage.upload_file(local, f"{base}/weights/clip.pt")
    used = blobs.resolve(f"{base}/weights/clip.pt")
    _evaluation(tmp_path / "eval", Path(f"{base}/weights/clip.pt"), used.sha256, used.etag)
    export = json.loads((tmp_path / "eval" / "model" / "export.json").read_text())
    export["encoder_weights"]["source"] = f"{base}/weights/clip.pt"  # Path() collapsed the s3:// slashes
    (tmp_path / "eval" / "model" / "export.json").write_text(json.dumps(export))
    upload_rank_files(tmp_path / "eval", f"{base}/ray/evaluation-1")
    proxy.reset()
    folders = []
    written = publish(f"{base}/ray/evaluation-1", f"{base}/out", then=lambda d: folders.append(sorted(
        p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())))  # fmt: skip
    names = ["model/encoder.pt", "model/export.json", "model/weights.pt", "report.md", "metrics.json"]
    assert sorted(written) == sorted(f"{base}/out/{n}" for n in names) and written[-1].endswith(
        "metrics.json"
    )
    assert folders == [sorted(names)]
    assert storage.read_bytes(f"{base}/out/model/encoder.pt") == local.read_bytes()
    out_key = f"{s3_server.bucket}/publish-{tmp_path.name}/out/"
    writes = [r for r in proxy.records() if r["key"].startswith(out_key) and r["method"] == "PUT"]
    assert len(writes) == 5 and all(r["copy_source"] and r["up"] == 0 for r in writes), writes
    read = [r["key"].split("/evaluation-1/")[1] for r in proxy.records() if _get(r, "/ray/evaluation-1/")]
    assert read == ["model/export.json"], read  # the weights' record: the files are copied, not read
    assert [r for r in proxy.records() if _get(r, "/weights/clip.pt")] == []  # `then` reads the output


def _get(record: dict, part: str) -> bool:
    return record["method"] == "GET" and not record["query"] and part in record["key"]


def test_publish_with_changed_weights_writes_no_metrics(tmp_path, cache):
    """A source replaced since the run used it is one StorageError before metrics.json, so the output
    never looks complete; a local evaluation to a local output copies the weights in."""
    from ltad.training.pipeline import publish

    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"one" * 1000)
    _evaluation(tmp_path / "eval", weights, hashlib.sha256(weights.read_bytes()).hexdigest())
    publish(str(tmp_path / "eval"), str(tmp_path / "out"))
    assert (tmp_path / "out" / "model" / "encoder.pt").read_bytes() == weights.read_bytes()
    assert not (tmp_path / "out" / ".ray-metadata").exists()
    weights.write_bytes(b"two" * 1000)
    with pytest.raises(StorageError, match=f"the encoder weights at {weights} changed since the run used"):
        publish(str(tmp_path / "eval"), str(tmp_path / "out2"))
    assert not (tmp_path / "out2" / "metrics.json").exists()


def test_the_proxy_counts_the_most_requests_in_flight_at_once(s3_server, tmp_path, monkeypatch):
    """benchmarks/latency.py --ci checks this count (CI load does not move it the way it moves a rate)."""
    import os

    from ltad.io.inflight import ordered_map

    base = f"s3://{s3_server.bucket}/inflight-{tmp_path.name}"
    for i in range(8):
        storage.write_bytes(f"{base}/{i}.bin", b"x" * 1000)
    port = urlsplit(os.environ["AWS_ENDPOINT_URL"]).port
    with CountingProxy(port, delay_ms=50) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        storage.reset_client()
        for i in range(3):  # one at a time
            storage.read_bytes(f"{base}/{i}.bin")
        assert p.stats()["most_in_flight"] == 1
        p.reset()
        assert len(list(ordered_map(lambda i: storage.read_bytes(f"{base}/{i}.bin"), range(8), 8))) == 8
        assert 4 <= p.stats()["most_in_flight"] <= 8
    storage.reset_client()
