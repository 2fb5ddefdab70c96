"""Storage outage: SeaweedFS stopped and restarted while streams read from it.

Evaluation still reads every manifest sample exactly once and training finishes its epoch; an outage
longer than the retry budget (LTAD_S3_RETRIES) ends in one clear error naming the endpoint and the
shard. The server is always running again when a test ends (it is shared by the session).
"""

from __future__ import annotations

import threading
import time

import pytest

from ltad.errors import StorageError

pytestmark = pytest.mark.integration


def _restart_later(server, down_for: float) -> threading.Thread:
    """Stop the server now; start it again after `down_for` seconds (in a thread)."""
    server.stop()

    def start():
        time.sleep(down_for)
        server.start()

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread


def _outage_after(stream, n: int, server, down_for: float) -> tuple[list, float]:
    """Iterate `stream`, taking the server down for `down_for` s after `n` items; (items, seconds)."""
    items, thread, tic = [], None, time.monotonic()
    for item in stream:
        items.append(item)
        if len(items) == n:
            thread = _restart_later(server, down_for)
    assert thread is not None
    thread.join()
    return items, time.monotonic() - tic


def test_evaluation_survives_a_restart_and_counts_exactly_once(s3_server, s3_shards):
    from ltad.data.manifest import read_manifest
    from ltad.data.streams import eval_stream

    manifest = read_manifest(s3_shards)
    stream = eval_stream(s3_shards, manifest, image_size=32, rank=0, world_size=1)
    samples, seconds = _outage_after(stream, 2, s3_server, down_for=2.0)
    keys = [s["key"] for s in samples]
    assert len(keys) == manifest.samples("test") == len(set(keys))
    per_class = {c: 0 for c in manifest.classes}
    for s in samples:
        per_class[manifest.classes[s["class_id"]]] += 1
    assert per_class == manifest.counts["test"]
    print(f"evaluation across a restart: {len(keys)} samples in {seconds:.1f} s")


def test_training_stream_survives_a_restart(s3_server, s3_shards):
    from ltad.data.manifest import read_manifest
    from ltad.data.streams import train_stream

    manifest = read_manifest(s3_shards)
    stream = train_stream(
        s3_shards, manifest, image_size=32, epoch_samples=60, seed=0, rank=0, world_size=1, class_balance=1.0
    )
    samples, seconds = _outage_after(stream, 5, s3_server, down_for=2.0)
    assert len(samples) == 60 and stream.bad_samples == 0
    print(f"training epoch across a restart: 60 samples in {seconds:.1f} s")


def test_outage_longer_than_the_budget_names_endpoint_and_shard(s3_server, s3_shards, monkeypatch):
    from ltad.data.manifest import read_manifest
    from ltad.data.streams import eval_stream

    manifest = read_manifest(s3_shards)
    monkeypatch.setenv("LTAD_S3_RETRIES", "2")  # 0.5 + 1 s of backoff
    stream = eval_stream(s3_shards, manifest, image_size=32, rank=0, world_size=1)
    s3_server.stop()
    try:
        tic = time.monotonic()
        with pytest.raises(StorageError) as err:
            next(iter(stream))
        elapsed = time.monotonic() - tic
    finally:
        s3_server.start()
    message = str(err.value)
    assert s3_server.endpoint in message
    assert f"{s3_shards}/{manifest.shards['test'][0].name}" in message
    assert "after 2 retries" in message and "\n" not in message
    assert elapsed < 30
