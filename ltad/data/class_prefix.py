"""The first N training samples of some classes, reading only those samples' bytes.

What `ltad_mb`'s bank fitting needs (ltad/training/banks.py): `max_images` samples of each banked
class, in manifest order. Reading every shard that holds a banked class costs the whole class; a
head class 50x the others would cost 50x. Here each class's shards are taken in manifest order only
until they hold its N samples (`plan_reads`), and from each such shard only the byte range of the
samples wanted, by the shard's sample index (one ranged read per shard: train shards are cut per
class, so a class's samples in a shard lie together). A shard without a usable sidecar (older data)
is read sequentially and left as soon as its wanted samples are read. Reads run `READS_IN_FLIGHT`
ahead of the one being decoded (`ltad.io.inflight`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import IterableDataset

from ltad.data.manifest import ShardEntry
from ltad.data.sample_index import read_fragment, read_shard_index
from ltad.data.shards import decode_sample, iterate_shard
from ltad.data.streams import slot
from ltad.io import storage
from ltad.io.inflight import ordered_map

READS_IN_FLIGHT = 4


@dataclass(frozen=True)
class ShardRead:
    """Which samples of one shard to read: the first `take` of class `cls` (in shard order)."""

    entry: ShardEntry
    cls: str
    take: int


def plan_reads(shards: Sequence[ShardEntry], need: Mapping[str, int]) -> list[ShardRead]:
    """Per class, its shards in manifest order until they hold `need[cls]` samples; pure."""
    left = dict(need)
    reads = []
    for entry in shards:
        for cls, count in entry.per_class.items():
            if left.get(cls, 0) > 0 and count > 0:
                take = min(count, left[cls])
                reads.append(ShardRead(entry, cls, take))
                left[cls] -= take
    return reads


def _fetch(uri: str, read: ShardRead) -> list[dict[str, Any]]:
    """The raw samples of one `ShardRead`: one ranged read by the sidecar, else a sequential prefix."""
    url = storage.join(uri, read.entry.name)
    index = read_shard_index(url, read.entry.sha256, read.entry.bytes)
    if index is not None and read.cls in index.classes:
        rows = (index.class_pos == index.classes.index(read.cls)).nonzero()[0][: read.take]
        start = int(index.offsets[rows[0]])
        end = int(index.offsets[rows[-1]] + index.lengths[rows[-1]])
        data = memoryview(storage.read_range(url, start, end - start))
        out = []
        for r in rows:  # the class's samples lie together; others between them are skipped
            offset, length = int(index.offsets[r]), int(index.lengths[r])
            out.append(
                read_fragment(bytes(data[offset - start : offset - start + length]), url, offset, length)
            )
        return out
    samples, out = iterate_shard(url, read.entry.samples), []
    for sample in samples:
        if _class_of(sample) == read.cls:
            out.append(sample)
            if len(out) == read.take:
                samples.close()  # the rest of the shard is never read
                break
    return out


def _class_of(sample: dict[str, Any]) -> str:
    return str(json.loads(sample["json"])["class_name"])


class ClassPrefixStream(IterableDataset):
    """The first `need[cls]` samples of each class of `shards` (decoded), each once across the DataLoader
    workers (reads dealt round-robin); classes missing from the shards yield what there is."""

    def __init__(
        self,
        uri: str,
        shards: Sequence[ShardEntry],
        need: Mapping[str, int],
        decode: Callable[[dict[str, Any]], Any],
    ):
        self.uri, self.reads, self.decode = uri, plan_reads(shards, need), decode

    def __iter__(self) -> Iterator[Any]:
        index, readers = slot(0, 1)
        mine = self.reads[index::readers]
        for samples in ordered_map(lambda r: _fetch(self.uri, r), mine, READS_IN_FLIGHT):
            for sample in samples:
                yield decode_sample(sample, self.decode)
