"""The bounded training stream: same distribution as the sequential one, bounded sources, little waste.

Shards are written by the real ShardWriter into a local folder and indexed by sample_index.py. The
sequential path (`sample_index=False`, as for shards prepared before the index) is the previous
stream unchanged, so it is the reference the indexed stream is compared with.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ltad.data.manifest import ShardEntry
from ltad.data.sample_index import index_shard, write_shard_index
from ltad.data.shards import ShardWriter
from ltad.data.streams import EpochBatches, ResampledStream, class_weights, endless_batches, make_loader
from ltad.errors import DataError, StorageError
from ltad.io import storage

P_MIN = 1e-3  # seeds are fixed, so these tests are deterministic; the bound only says "not far off"


def _decode(sample):
    """Key, class and how many tar bytes the sample occupies (what a reader had to deliver)."""
    size = sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if not k.startswith("__"))
    if sample["png"][:1] == b"\xff":
        raise ValueError("undecodable payload")
    return {"key": sample["__key__"], "cls": json.loads(sample["json"])["class_name"], "bytes": size}


def _write(root: Path, counts: dict[str, int], payload: int, per_shard: int | None = None):
    """Shards of each class (train/{cls}-NNNNNN.tar + sidecars) -> shards by class."""
    rng = np.random.default_rng(0)
    by_class: dict[str, list[ShardEntry]] = {}
    for cls, n in counts.items():

        def done(path, info, cls=cls):
            write_shard_index(path, str(path), info.sha256)
            by_class[cls].append(ShardEntry(info.name, info.samples, info.bytes, info.sha256, info.per_class))

        by_class[cls] = []
        writer = ShardWriter(root, "train", cls, done, max_samples=per_shard)
        for i in range(n):
            body = rng.integers(0, 255, payload + int(rng.integers(0, payload)), dtype=np.uint8).tobytes()
            files = {"png": body, "cls": b"0", "json": json.dumps({"class_name": cls}).encode()}
            writer.write(f"{cls}/{i:05d}", files, cls)
        writer.close()
    return by_class


def _stream(root, by_class, counts, *, indexed=True, epoch_samples=1000, balance=0.5, **kw):
    return ResampledStream(
        str(root),
        by_class,
        class_weights(counts, balance),
        epoch_samples=epoch_samples,
        seed=7,
        rank=0,
        world_size=1,
        decode=_decode,
        sample_index=indexed,
        **kw,
    )


class _CountingRaw(io.RawIOBase):
    def __init__(self, path: str, meter: dict) -> None:
        self.f, self.meter = open(path, "rb", buffering=0), meter  # noqa: SIM115
        self.source = path.endswith(".tar")  # not a sidecar read (read whole, then closed)
        meter["open"] += self.source
        meter["peak"] = max(meter["peak"], meter["open"])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.f.readinto(buffer)
        self.meter["bytes"] += n
        return n

    def close(self) -> None:
        if not self.closed:
            self.meter["open"] -= self.source
            self.f.close()
        super().close()


@pytest.fixture
def meter(monkeypatch):
    """Counts open sequential reads (now and at most), and every byte read from storage."""
    counts = {"open": 0, "peak": 0, "bytes": 0, "ranged": 0}
    read_range = storage.read_range

    def ranged(uri, offset, length, retries=None):
        data = read_range(uri, offset, length, retries)
        counts["bytes"] += len(data)
        counts["ranged"] += 1
        return data

    monkeypatch.setattr(
        storage,
        "open_read",
        lambda uri, retries=None: io.BufferedReader(_CountingRaw(uri, counts), storage.BUFFER),
    )
    monkeypatch.setattr(storage, "read_range", ranged)
    return counts


def test_class_and_within_class_frequencies_match_the_weights_and_the_sequential_stream(tmp_path):
    counts = {"big": 200, "mid": 40, "small": 5}
    by_class = _write(tmp_path, counts, 300, per_shard=64)
    weights = class_weights(counts, 0.5)
    new = _stream(tmp_path, by_class, counts, epoch_samples=6000, max_open_sources=1)
    old = _stream(tmp_path, by_class, counts, epoch_samples=6000, indexed=False)
    got, ref = list(new), list(old)
    assert new.sequential_classes(6000) == {"big"}
    assert new.stats["sources_opened"] == 1 and new.stats["ranged_reads"] == len(got) - sum(
        s["cls"] == "big" for s in got
    )
    assert old.stats["sources_opened"] == 3 and old.stats["ranged_reads"] == 0
    # the class of every draw comes from the same seeded draws as before
    assert [s["cls"] for s in got] == [s["cls"] for s in ref]
    classes = sorted(counts)
    observed = Counter(s["cls"] for s in got)
    expected = [weights[c] * len(got) for c in classes]
    assert stats.chisquare([observed[c] for c in classes], expected).pvalue > P_MIN
    for cls, n in counts.items():
        mine = Counter(s["key"] for s in got if s["cls"] == cls)
        before = Counter(s["key"] for s in ref if s["cls"] == cls)
        keys = [f"{cls}/{i:05d}" for i in range(n)]
        assert set(mine) <= set(keys)
        # uniform within the class (each sample equally likely), as the sequential stream is
        p_uniform = stats.chisquare([mine[k] for k in keys]).pvalue
        assert p_uniform > P_MIN, (cls, p_uniform)
        table = np.array([[mine[k] for k in keys], [before[k] for k in keys]])
        assert stats.chi2_contingency(table).pvalue > P_MIN, cls


def test_many_classes_bounded_sources_and_read_amplification(tmp_path, meter):
    n = 300  # exp40-like: 40 samples for the head class down to 1 for the tail
    counts = {f"c{i:03d}": max(1, round(40 * 40 ** (-i / (n - 1)))) for i in range(n)}
    by_class = _write(tmp_path, counts, 500)
    results = {}
    for name, indexed in (("indexed", True), ("sequential", False)):
        for key in meter:
            meter[key] = 0
        delivered, drawn = 0, set()
        # 2000 samples a reader and epoch, buffer 4: the 8 largest classes are drawn often enough
        # (>= 4 x buffer a reader and epoch) to be streamed, the rest come from ranged reads
        stream = _stream(
            tmp_path, by_class, counts, indexed=indexed, epoch_samples=4000, balance=0.0, buffer=4
        )
        for epoch in range(2):
            for sample in stream.samples(epoch, 0, stream.reader_samples(0, 2)):  # loader worker 0 of 2
                delivered += sample["bytes"]
                drawn.add(sample["cls"])
        results[name] = {**meter, "amplification": meter["bytes"] / delivered, **stream.stats}
        assert meter["open"] == 0  # every source was closed at the end of its epoch
    print(results)
    indexed, sequential = results["indexed"], results["sequential"]
    assert len(drawn) > 200
    assert 1 <= indexed["peak"] <= 8 and indexed["open_sources_peak"] == 8 and indexed["ranged"] > 0
    assert indexed["amplification"] <= 1.5
    # the sequential stream it replaces held a source for every class it met
    assert sequential["open_sources_peak"] > 150 and sequential["peak"] > 30
    assert sequential["amplification"] > indexed["amplification"] + 0.5


def test_corrupt_ranged_samples_are_skipped_within_budget_storage_errors_never(tmp_path):
    counts = {"big": 100, "tail": 4}
    by_class = _write(tmp_path, counts, 200)
    [entry] = by_class["tail"]
    shard = tmp_path / entry.name
    spans = index_shard(shard)
    data = bytearray(shard.read_bytes())
    png = data.index(b"tail/00001.png")  # its header; the payload follows the 512-byte header block
    assert spans[1].offset < png < spans[1].offset + spans[1].length
    data[png + 512] = 0xFF  # the payload of tail/00001 now fails to decode
    shard.write_bytes(bytes(data))  # same size, so its sidecar still applies

    def run(budget):
        stream = _stream(
            tmp_path, by_class, counts, epoch_samples=400, max_bad_samples=budget, max_open_sources=1
        )
        return stream, list(stream)

    stream, got = run(1)
    tail = [s for s in got if s["cls"] == "tail"]
    assert stream.stats["ranged_reads"] > len(tail) and stream.bad_samples == 1
    assert "tail/00001" not in {s["key"] for s in tail} and len(got) == 400
    assert sum(int(s["bad_skipped"]) for s in got) == 1
    with pytest.raises(DataError, match="more than data.max_bad_samples=0"):
        run(0)
    # an unreachable shard is a StorageError whatever the budget: never skipped as corrupt
    stream = _stream(tmp_path, by_class, counts, epoch_samples=400, max_bad_samples=100, max_open_sources=1)
    assert any(s["cls"] == "tail" for s in stream.samples(0, 0, 400))  # the tail's index is loaded
    shard.unlink()
    with pytest.raises(StorageError, match="no file"):
        list(stream.samples(1, 0, 400))


def test_missing_sidecar_falls_back_to_a_sequential_source(tmp_path, caplog):
    counts = {"big": 100, "tail": 6}
    by_class = _write(tmp_path, counts, 200)
    (tmp_path / by_class["tail"][0].name.replace(".tar", ".index.json")).unlink()
    stream = _stream(tmp_path, by_class, counts, epoch_samples=300, max_open_sources=1)
    got = list(stream)
    assert {s["cls"] for s in got} == {"big", "tail"}
    assert stream.stats["sources_opened"] == 2 and stream.stats["ranged_reads"] == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_endless_batches_equal_one_loader_per_epoch(tmp_path, workers):
    counts = {"big": 60, "mid": 12, "small": 3}
    by_class = _write(tmp_path, counts, 100)
    # 20 samples a rank and epoch, batches of 5: 4 batches, 2 per worker (10 samples each, as before)
    stream = _stream(tmp_path, by_class, counts, epoch_samples=20, epoch=3, max_open_sources=1)
    before = []
    for epoch in (3, 4, 5):
        stream.set_epoch(epoch)
        before += [list(b["key"]) for b in make_loader(stream, 5, workers)]
    stream.set_epoch(3)
    after = [list(b["key"]) for _, b in zip(range(len(before)), endless_batches(stream, 5, workers))]
    assert after == before and len(before) == 4 * 3
    with pytest.raises(Exception, match="batch_size"):
        EpochBatches(stream, 0)


def test_endless_batches_uneven_workers_full_batches_and_exact_resume(tmp_path):
    counts = {"big": 60, "mid": 12, "small": 3}
    by_class = _write(tmp_path, counts, 100)

    def batches(epoch: int, workers: int, n: int) -> list[list[str]]:
        # 4 batches of 5 an epoch over 3 workers: 2 + 1 + 1 batches, never a partial one
        stream = _stream(tmp_path, by_class, counts, epoch_samples=20, epoch=epoch, max_open_sources=1)
        return [list(b["key"]) for _, b in zip(range(n), endless_batches(stream, 5, workers))]

    full = batches(0, 3, 12)
    assert [len(b) for b in full] == [5] * 12
    assert batches(1, 3, 8) == full[4:]  # a run resumed at epoch 1 trains on the same batches
    assert batches(0, 3, 12) == full  # deterministic


def test_read_ahead_delivers_the_same_samples_in_the_same_order_reads_bounded(tmp_path, monkeypatch):
    import threading
    import time

    counts = {"big": 100, **{f"t{i}": 3 + i % 4 for i in range(12)}}
    by_class = _write(tmp_path, counts, 300)
    [entry] = by_class["t3"]  # one corrupt sample in a ranged class: replaced alike with and without
    shard = tmp_path / entry.name
    data = bytearray(shard.read_bytes())
    png = data.index(b"t3/00001.png")
    data[png + 512] = 0xFF
    shard.write_bytes(bytes(data))

    read_range = storage.read_range
    live = {"now": 0, "peak": 0, "calls": 0}
    lock = threading.Lock()

    def slow(uri, offset, length, retries=None):  # a slow store: reads overlap only when read ahead
        with lock:
            live["now"] += 1
            live["calls"] += 1
            live["peak"] = max(live["peak"], live["now"])
        time.sleep(0.002)
        try:
            return read_range(uri, offset, length, retries)
        finally:
            with lock:
                live["now"] -= 1

    monkeypatch.setattr(storage, "read_range", slow)
    from ltad.data import streams

    read_index, indexing = streams.read_shard_index, {"now": 0, "peak": 0}

    def slow_index(*args):  # the class indexes are read ahead too
        with lock:
            indexing["now"] += 1
            indexing["peak"] = max(indexing["peak"], indexing["now"])
        time.sleep(0.005)
        try:
            return read_index(*args)
        finally:
            with lock:
                indexing["now"] -= 1

    monkeypatch.setattr(streams, "read_shard_index", slow_index)

    def run(read_ahead, epoch=0, count=500):
        stream = _stream(
            tmp_path, by_class, counts, epoch_samples=count, max_open_sources=1, max_bad_samples=5,
            read_ahead=read_ahead, balance=1.0,
        )  # fmt: skip
        live.update(peak=0, calls=0)
        got = list(stream.samples(epoch, 0, count))
        return [(s["key"], s["bad_skipped"]) for s in got], stream, dict(live)

    off, off_stream, off_live = run(0)
    assert off_live["peak"] == 1 and off_stream.bad_samples == 1 and indexing["peak"] == 1
    assert off_stream.stats["ranged_requests"] == off_stream.stats["ranged_reads"] == off_live["calls"]
    for read_ahead in (1, 4, 16):
        on, stream, seen = run(read_ahead)
        assert on == off, read_ahead
        assert stream.bad_samples == 1 and stream.stats["ranged_reads"] == off_stream.stats["ranged_reads"]
        # at most read_ahead reads ahead, plus the replacement of a corrupt sample read when it is met
        assert 1 <= seen["peak"] <= read_ahead + 1
        assert stream.stats["ranged_requests"] == seen["calls"]
    assert seen["peak"] > 1 and indexing["peak"] > 1  # reads overlapped, index reads too
    # samples of one shard planned together share a read (a known-bad one drawn again costs one more)
    assert seen["calls"] < 0.95 * stream.stats["ranged_reads"]
    assert run(8, epoch=2, count=200)[0] == run(0, epoch=2, count=200)[0]
    # a reader that stops early (a closed epoch) leaves no read behind that it waits for
    stream = _stream(
        tmp_path, by_class, counts, epoch_samples=500, max_open_sources=1, max_bad_samples=5, balance=1.0
    )
    samples = stream.samples(0, 0, 500)
    first = [next(samples)["key"] for _ in range(10)]
    samples.close()
    assert first == [k for k, _ in off[:10]]


def test_coalesce_merges_close_spans_of_one_shard_only():
    from ltad.data.streams import COALESCE_GAP, COALESCE_MAX, coalesce

    spans = [
        ("a", 1000, 100),
        ("b", 0, 10),
        ("a", 0, 100),
        ("a", 1000, 100),
        ("a", 1100 + COALESCE_GAP + 1, 5),
    ]
    assert coalesce(spans) == [
        ("a", 0, 1100, [2, 0, 3]),
        ("b", 0, 10, [1]),
        ("a", 1100 + COALESCE_GAP + 1, 5, [4]),
    ]
    assert len(coalesce([("a", 0, COALESCE_MAX), ("a", COALESCE_MAX, 1)])) == 2
    assert coalesce([]) == []
