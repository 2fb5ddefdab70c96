"""prepare's lanes (ltad/data/prepare.py): one read-ahead over a worker's batches and shards, with record
order, the bound on reads held, the first bad file in record order and upload errors kept."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ltad.data import prepare as prepare_module
from ltad.data.datasets import read_dataset
from ltad.data.prepare import (
    CHECK_BATCH,
    LANE_IMAGES,
    Target,
    WorkItem,
    check_lane,
    check_lanes,
    write_item,
    write_lane,
)
from ltad.data.shards import iterate_shard
from ltad.errors import DataError, StorageError
from tests.unit.test_prepare import _jpeg_tree


def _items(root: Path, per_shard: int = 3) -> list[WorkItem]:
    records = [r for r in read_dataset("mvtec", root).records]
    return [
        WorkItem(f"train/x-{i // per_shard:06d}.tar", tuple(records[i : i + per_shard]))
        for i in range(0, len(records), per_shard)
    ]


def test_check_lanes_cover_every_record_once_in_order_one_per_worker_within_the_bound():
    records = list(range(5000))
    for parallel in (1, 2, 8):
        lanes = check_lanes(records, parallel)  # type: ignore[arg-type]
        assert [r for lane in lanes for r in lane] == records
        assert all(len(lane) <= LANE_IMAGES for lane in lanes)
    assert len(check_lanes(records[:456], 2)) == 2  # type: ignore[arg-type]
    assert [len(lane) for lane in check_lanes(records[:40], 8)] == [CHECK_BATCH, 8]  # type: ignore[arg-type]


def test_a_lane_keeps_reads_in_flight_across_shards_bounded_and_writes_what_shard_by_shard_wrote(
    tmp_path, monkeypatch
):
    root = _jpeg_tree(tmp_path / "data", classes=("a",), train=12, test=2)
    items = _items(root)
    one_by_one = [write_item(Target(str(root), str(tmp_path / "single")), item) for item in items]

    real_read, lock = prepare_module._read, threading.Lock()
    events: list[tuple[str, str]] = []
    started = {"reads": 0, "consumed": 0, "most_held": 0}

    def slow_read(base: str, rel: str) -> bytes:  # a store answering after 5 ms
        with lock:
            events.append(("read", rel))
            started["reads"] += 1
        time.sleep(0.005)
        return real_read(base, rel)

    real_encode = prepare_module.encode_record

    def counting_encode(record, *args):
        with lock:  # reads started but not yet written: what the lane holds (or is fetching)
            started["most_held"] = max(started["most_held"], started["reads"] - started["consumed"])
            started["consumed"] += 1 + (record.mask_path is not None)
        return real_encode(record, *args)

    real_publish = prepare_module._publish_shard

    def publish(target, path, info):
        with lock:
            events.append(("publish", info.name))
        return real_publish(target, path, info)

    monkeypatch.setattr(prepare_module, "_read", slow_read)
    monkeypatch.setattr(prepare_module, "encode_record", counting_encode)
    monkeypatch.setattr(prepare_module, "_publish_shard", publish)
    lane = write_lane(Target(str(root), str(tmp_path / "lane")), items)

    assert [r.entry for r in lane] == [r.entry for r in one_by_one]  # same shards, bytes and hashes
    for item, result in zip(items, lane):
        keys = [s["__key__"] for s in iterate_shard(str(tmp_path / "lane" / item.name), result.entry.samples)]
        assert keys == [s["__key__"] for s in iterate_shard(str(tmp_path / "single" / item.name), len(keys))]
    first_publish = events.index(("publish", items[0].name))
    later = {r.path for item in items[1:] for r in item.records}
    assert any(kind == "read" and rel in later for kind, rel in events[:first_publish])  # no drain
    # each image and mask read once, and never more than READS_IN_FLIGHT records (2 reads each) ahead
    assert started["reads"] == sum(1 + (r.mask_path is not None) for item in items for r in item.records)
    assert started["most_held"] <= 2 * (prepare_module.READS_IN_FLIGHT + 1)


def test_the_first_bad_file_in_record_order_is_named_across_the_shards_of_a_lane(tmp_path, monkeypatch):
    root = _jpeg_tree(tmp_path / "data", classes=("a",), train=12, test=1)
    items = _items(root)
    early, late = items[1].records[2].path, items[3].records[0].path  # in the 2nd and 4th shard
    for rel in (early, late):
        path = root / rel
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    real_read = prepare_module._read

    def read(base: str, rel: str) -> bytes:  # the later bad file answers first
        time.sleep(0.05 if rel == early else 0.0)
        return real_read(base, rel)

    monkeypatch.setattr(prepare_module, "_read", read)
    with pytest.raises(DataError, match=f"cannot read image '{early}'"):  # the check pass decodes
        check_lane(str(root), None, [r for item in items for r in item.records])
    for rel in (early, late):  # the write pass only reads: files gone since the check
        (root / rel).unlink()
    with pytest.raises(StorageError, match=early.rsplit("/", 1)[-1]) as raised:
        write_lane(Target(str(root), str(tmp_path / "out")), items)
    assert late.rsplit("/", 1)[-1] not in str(raised.value)
    assert not (tmp_path / "out" / items[2].name).exists()  # nothing after the bad shard was published


def test_a_failed_upload_is_raised_and_no_later_shard_of_the_lane_is_published(tmp_path, monkeypatch):
    root = _jpeg_tree(tmp_path / "data", classes=("a",), train=12, test=1)
    items = _items(root)
    real_publish, names = prepare_module._publish_shard, []

    def publish(target, path, info):
        names.append(info.name)
        if len(names) == 2:
            raise StorageError(f"upload of '{info.name}' failed: 503")
        return real_publish(target, path, info)

    monkeypatch.setattr(prepare_module, "_publish_shard", publish)
    with pytest.raises(StorageError, match=f"upload of '{items[1].name}' failed"):
        write_lane(Target(str(root), str(tmp_path / "out")), items)
    assert names == [items[0].name, items[1].name]
    assert sorted(p.name for p in (tmp_path / "out" / "train").glob("*.tar")) == [Path(items[0].name).name]
