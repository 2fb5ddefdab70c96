"""Dataset + split -> WebDataset shards + manifest at a prefix (`ltad prepare`), in parallel.

Phases, each with progress lines (count, rate, ETA):
1. scan: one listing of the root (a local tree or an s3:// prefix; `ltad.data.tree`), parsed by the
   dataset's layout reader; the split is applied.
2. plan (pure, `plan`): one work item per shard, train shards by (class, chunk), test shards by
   chunks of `test_shard_samples`, cut by the source files' listed sizes, so shard names and contents
   are fixed before any work runs and `--workers 1` and `--workers 8` write identical shards.
3. check: every image and mask is read and fully decoded (truncation shows here), masks against their
   image's size; the first unreadable file stops prepare with its path, before anything is written.
4. write/upload: each work item becomes one finished shard (`write_item`), uploaded by the process or
   Ray task that wrote it unless the object already holds the same bytes (sha256 in its metadata or in
   the previous manifest).
Both passes read each source file once, `READS_IN_FLIGHT` reads ahead per worker in record order
(`ltad.io.inflight.ordered_map`): from an `s3://` root every read waits a request's latency, which
serial reads would pay once per image and pass. The unit of work handed to a worker is a lane (a run
of check records, or several shards), not one batch or shard, and its reads stay in flight across the
batches and shards inside it: a pipeline that drained at every 32-image batch and every shard paid a
full round trip each time with nothing in flight. A lane's finished shards are uploaded on a background
thread while the next one is written.
The previous manifest is deleted after the check and the new one written last (atomically), so an
interrupted run leaves the previous manifest (died before writing) or none, never one naming missing
or half-written shards. Image bytes are kept as they are (JPEG stays JPEG, PNG stays PNG; see
`shards.encode_record`), optionally resized to `max_size` px on the longer side.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image

from ltad.data.datasets import read_dataset
from ltad.data.executor import Executor, processes
from ltad.data.manifest import (
    VAL,
    Manifest,
    ShardEntry,
    SplitProvenance,
    manifest_uri,
    try_read_manifest,
    write_manifest,
)
from ltad.data.progress import Progress
from ltad.data.records import Record
from ltad.data.sample_index import index_name, write_shard_index
from ltad.data.shards import ShardInfo, ShardWriter, encode_record, fitted_size, sample_key
from ltad.data.splits import read_split
from ltad.data.tree import scan
from ltad.errors import ConfigError, DataError
from ltad.io import storage
from ltad.io.inflight import Background, ordered_map
from ltad.log import get_logger

_log = get_logger("prepare").info

CHECK_BATCH = 32
"""Images per check lane at least (a lane is cut smaller only where the records run out)."""
LANE_IMAGES = 1024
"""Images per lane at most (a check lane, or the shards of a write lane unless one shard holds more):
a worker's reads stay in flight across the batches and shards of a lane and drain only at its end, so
a drain costs one round trip per ~1000 images; small enough that a million images make ~1000 lanes
(progress lines, and the lanes left at the end to balance the workers)."""
READS_IN_FLIGHT = 16
"""Source reads (image, then its mask) a lane keeps running ahead of the one it decodes or writes,
per worker: enough to hide a 20 ms request latency at hundreds of images/s, and at most this many
images held beyond the current one."""
PUBLISH_PENDING = 2
"""Finished shards of a lane waiting for (or in) their upload while the worker writes the next: at
most this many plus the one being written sit on the worker's local disk."""
SAMPLE_OVERHEAD = 3 * 512 + 2 * 512  # tar headers of image, cls and json, and the two small members


@dataclass(frozen=True)
class WorkItem:
    """One shard to write: its name relative to the prefix and its records, in order."""

    name: str  # e.g. "train/bottle-000003.tar"
    records: tuple[Record, ...]


@dataclass(frozen=True)
class Target:
    """What every worker needs besides its item: where to read, where to write, how."""

    root: str
    out_uri: str
    max_size: int | None = None
    known: dict[str, str] = field(default_factory=dict)  # shard name -> sha256 in the previous manifest


@dataclass(frozen=True)
class ShardResult:
    entry: ShardEntry
    uploaded: bool
    source_bytes: int  # the images' and masks' bytes as read, for the stored/source ratio


def _estimate(record: Record, sizes: dict[str, int]) -> int:
    """Tar bytes of a record from its listed source sizes (an upper bound under --max-size)."""
    total = SAMPLE_OVERHEAD + -(-sizes.get(record.path, 0) // 512) * 512
    if record.mask_path is not None:
        total += 512 + -(-sizes.get(record.mask_path, 0) // 512) * 512
    return total


def _chunks(records: Sequence[Record], sizes: dict[str, int], max_bytes: int, max_samples: int | None):
    chunk: list[Record] = []
    used = 0
    for record in records:
        size = _estimate(record, sizes)
        full = max_samples is not None and len(chunk) >= max_samples
        if chunk and (full or used + size > max_bytes):
            yield tuple(chunk)
            chunk, used = [], 0
        chunk.append(record)
        used += size
    if chunk:
        yield tuple(chunk)


def plan(
    classes: Sequence[str],
    train: Sequence[Record],
    test: Sequence[Record],
    sizes: dict[str, int],
    max_bytes: int,
    test_shard_samples: int,
    val: Sequence[Record] = (),
) -> list[WorkItem]:
    """Work items: `train/{class}-NNNNNN.tar` per class (classes in id order, records in split order),
    then `test/test-NNNNNN.tar` (the whole test set in dataset order), then `val/val-NNNNNN.tar` (the
    held-out normals, when the split has any). Pure and deterministic."""
    by_class: dict[str, list[Record]] = {c: [] for c in classes}
    for record in train:  # one pass: no per-class filter over every record
        by_class[record.class_name].append(record)
    items = []
    for cls in classes:
        for i, chunk in enumerate(_chunks(by_class[cls], sizes, max_bytes, None)):
            items.append(WorkItem(f"train/{cls}-{i:06d}.tar", chunk))
    for i, chunk in enumerate(_chunks(test, sizes, max_bytes, test_shard_samples)):
        items.append(WorkItem(f"test/test-{i:06d}.tar", chunk))
    for i, chunk in enumerate(_chunks(val, sizes, max_bytes, test_shard_samples)):
        items.append(WorkItem(f"{VAL}/{VAL}-{i:06d}.tar", chunk))
    return items


def _read(root: str, rel: str) -> bytes:
    return storage.read_bytes(storage.join(root, rel))


def _decoded_size(root: str, rel: str, data: bytes) -> tuple[int, int]:
    """Size of a fully decoded image (a truncated or corrupt file fails here), or a DataError naming it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot read image '{rel}' under '{root}': {exc or type(exc).__name__} (expected a PNG, JPEG, "
            "BMP or TIFF image)"
        ) from None


def _checked_size(
    root: str, max_size: int | None, record: Record, image: bytes, mask: bytes | None
) -> tuple[int, int]:
    """The stored size of a record's image (after `max_size`), its mask checked against it."""
    size = _decoded_size(root, record.path, image)
    if record.mask_path is not None and mask is not None:
        mask_size = _decoded_size(root, record.mask_path, mask)
        if mask_size != size:
            raise DataError(
                f"mask '{record.mask_path}' is {mask_size[0]}x{mask_size[1]} but image '{record.path}' is "
                f"{size[0]}x{size[1]} (under '{root}'): expected the same size"
            )
    return fitted_size(*size, max_size)


def check_lanes(records: Sequence[Record], parallel: int) -> list[tuple[Record, ...]]:
    """`records` cut into contiguous lanes for the check pass: one per worker (`parallel`) where that
    keeps each within `LANE_IMAGES`, else `LANE_IMAGES` each, never under `CHECK_BATCH`."""
    size = min(LANE_IMAGES, max(CHECK_BATCH, -(-len(records) // max(1, parallel))))
    return [tuple(records[i : i + size]) for i in range(0, len(records), size)]


def check_lane(root: str, max_size: int | None, records: Sequence[Record]) -> list[tuple[int, int]]:
    """Decode every image and mask of `records`; their stored sizes (after `max_size`), in order. The
    reads run `READS_IN_FLIGHT` ahead on threads over the whole lane, the decoding here (CPU work
    stays on one thread); the first bad file in record order is the error raised."""
    sources = ordered_map(partial(_sources, root), records, READS_IN_FLIGHT)
    with contextlib.closing(sources):
        return [_checked_size(root, max_size, r, image, mask) for r, (image, mask) in zip(records, sources)]


def _sources(root: str, record: Record) -> tuple[bytes, bytes | None]:
    """A record's image bytes and its mask's (None without one), as stored under `root`."""
    image = _read(root, record.path)
    return image, (_read(root, record.mask_path) if record.mask_path is not None else None)


def write_lanes(items: Sequence[WorkItem], sizes: dict[str, int], parallel: int) -> list[tuple[int, ...]]:
    """The items' indices dealt into lanes, each lane's largest shard first and the lanes largest first
    (by their sources' listed bytes). max(`parallel`, images / `LANE_IMAGES`) lanes (at most one per
    item), each shard going to the lightest lane so far: with N workers a phase ends when its last lane
    does, so the big lanes start first and the small ones fill in around them."""
    est = [sum(_estimate(r, sizes) for r in item.records) for item in items]
    images = sum(len(item.records) for item in items)
    count = min(len(items), max(1, parallel, -(-images // LANE_IMAGES)))
    lanes: list[list[int]] = [[] for _ in range(count)]
    lightest = [(0, lane) for lane in range(count)]
    for i in sorted(range(len(items)), key=lambda i: -est[i]):
        load, lane = heapq.heappop(lightest)
        lanes[lane].append(i)
        heapq.heappush(lightest, (load + est[i], lane))
    return sorted((tuple(lane) for lane in lanes if lane), key=lambda lane: -sum(est[i] for i in lane))


def write_lane(target: Target, items: Sequence[WorkItem]) -> list[ShardResult]:
    """Turn each work item into a finished shard at `{out_uri}/{item.name}`; their results in order.
    One read-ahead runs over the records of every item, so the reads of the next shard are in flight
    while this one is finished; each shard is written locally, then hashed, indexed and uploaded (unless
    the object already holds the same bytes) on a background thread while the next is written
    (`PUBLISH_PENDING`). Returns only after every upload ended; the first failure (a bad source in
    record order, or an upload) is raised. Runs in this process, a local worker process or a Ray task
    on any node (reads and writes by URI only)."""
    records = [r for item in items for r in item.records]
    published: dict[str, ShardResult] = {}
    sources = ordered_map(partial(_sources, target.root), records, READS_IN_FLIGHT)
    with (  # left in reverse: the reads ahead stop, the uploads end, then their files go
        tempfile.TemporaryDirectory(prefix="ltad-prepare-") as tmp,
        Background(PUBLISH_PENDING, name="ltad-prepare-upload") as uploads,
        contextlib.closing(sources),  # a failed record stops the reads ahead of it at once
    ):
        for item in items:
            path, info, source_bytes = _write_local(target, item, tmp, sources)
            uploads.submit(_publish, target, path, info, source_bytes, published)
    return [published[item.name] for item in items]


def write_item(target: Target, item: WorkItem) -> ShardResult:
    """One work item as a finished shard (`write_lane` of that item alone)."""
    return write_lane(target, (item,))[0]


def _write_local(
    target: Target, item: WorkItem, tmp: str, sources: Iterator[tuple[bytes, bytes | None]]
) -> tuple[Path, ShardInfo, int]:
    """Write `item`'s shard under `tmp` from the next `len(item.records)` sources; (path, info, bytes read)."""
    split, base = item.name.split("/", 1)
    part, index = base.removesuffix(".tar").rsplit("-", 1)
    finished: list[tuple[Path, ShardInfo]] = []
    source_bytes = 0
    writer = ShardWriter(tmp, split, part, lambda p, i: finished.append((p, i)), max_bytes=1 << 62)
    writer.index = int(index)
    for record, (image, mask) in zip(item.records, sources):  # zip asks `records` first: takes no extra
        source_bytes += len(image) + (len(mask) if mask is not None else 0)
        key, files, _ = encode_record(record, image, mask, target.max_size, target.root)
        writer.write(key, files, record.class_name)
    writer.close()
    ((path, info),) = finished
    assert info.name == item.name, (info.name, item.name)
    return path, info, source_bytes


def _publish(
    target: Target, path: Path, info: ShardInfo, source_bytes: int, published: dict[str, ShardResult]
) -> None:
    """Upload a finished local shard (unless unchanged) and its per-sample index, then delete it."""
    uploaded = _publish_shard(target, path, info)
    write_shard_index(path, storage.join(target.out_uri, info.name), info.sha256)
    path.unlink()
    entry = ShardEntry(info.name, info.samples, info.bytes, info.sha256, info.per_class)
    published[info.name] = ShardResult(entry, uploaded, source_bytes)


def _publish_shard(target: Target, path: Path, info: ShardInfo) -> bool:
    """Upload a finished shard unless the object holds the same bytes already; True when uploaded."""
    uri = storage.join(target.out_uri, info.name)
    existing = storage.head(uri)
    same = (
        existing is not None
        and existing["size"] == info.bytes
        and info.sha256 in (existing["metadata"].get("sha256"), target.known.get(info.name))
    )
    if not same:
        storage.upload_file(path, uri, metadata={"sha256": info.sha256})
    return not same


def prepare(
    dataset_name: str,
    root: str | Path,
    split_path: str | Path,
    out_uri: str,
    shard_size_mb: float = 256,
    test_shard_samples: int = 64,
    log: Callable[[str], None] = _log,
    *,
    max_size: int | None = None,
    workers: int = 1,
    executor: Executor | None = None,
) -> Manifest:
    """Write train shards by (class, chunk) and test shards (the full test set), then the manifest.

    `root` is a local directory or an s3:// prefix. Work runs on `executor` when given (e.g. Ray tasks,
    ltad/training/ray_map.py), else on `workers` local processes (1: this process).
    """
    if shard_size_mb <= 0:
        raise ConfigError(f"--shard-size-mb must be a positive number, got {shard_size_mb}")
    if test_shard_samples < 1:
        raise ConfigError(f"--test-shard-samples must be an int >= 1, got {test_shard_samples}")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1):
        raise ConfigError(f"--max-size must be an int >= 1 (pixels), got {max_size!r}")
    run = executor if executor is not None else processes(workers)
    try:
        return _prepare(
            dataset_name, root, split_path, out_uri, shard_size_mb, test_shard_samples, log, max_size, run
        )
    finally:
        close = getattr(run, "close", None)
        if close is not None and executor is None:
            close()


def _prepare(
    dataset_name: str,
    root: str | Path,
    split_path: str | Path,
    out_uri: str,
    shard_size_mb: float,
    test_shard_samples: int,
    log: Callable[[str], None],
    max_size: int | None,
    run: Executor,
) -> Manifest:

    listing = Progress("scan", unit="files", log=log)
    with ThreadPoolExecutor(1, thread_name_prefix="ltad-manifest") as pool:  # one round trip, not two
        earlier = pool.submit(try_read_manifest, out_uri)  # also fails early on a bad bucket or credentials
        tree = scan(root, on_file=listing.add)
        previous = earlier.result()
    listing.finish()
    root = tree.root
    dataset = read_dataset(dataset_name, tree)
    split = read_split(split_path, dataset)
    train = split.train_records(dataset)
    val = split.val_records(dataset)  # held-out normals for threshold calibration (may be empty)
    test = dataset.select("test")
    if not test:
        raise DataError(f"dataset '{dataset_name}' at '{root}' has no test images")
    records = train + val + test
    _check_unique_keys(records)
    items = plan(
        dataset.classes, train, test, tree.files, int(shard_size_mb * (1 << 20)), test_shard_samples, val
    )

    parallel = int(getattr(run, "workers", 1))  # lanes per phase at least (local processes, Ray CPUs)
    sizes: dict[str, set[tuple[int, int]]] = {c: set() for c in dataset.classes}
    lanes = check_lanes(records, parallel)
    check = Progress("check", total=len(records), unit="images", log=log)
    for index, lane_sizes in run(partial(check_lane, root, max_size), lanes):
        for record, size in zip(lanes[index], lane_sizes):
            sizes[record.class_name].add(size)
        check.add(len(lanes[index]))
    check.finish()

    # Every image decoded: from here on the output changes, so the old manifest goes first.
    known = {} if previous is None else {e.name: e.sha256 for s in previous.shards.values() for e in s}
    storage.delete(manifest_uri(out_uri))
    target = Target(root, out_uri, max_size, known)
    results: list[ShardResult | None] = [None] * len(items)
    counts = {"uploaded": 0, "unchanged": 0, "bytes": 0, "source": 0}
    write = Progress("write/upload", total=len(records), unit="images", log=log)
    shard_lanes = write_lanes(items, tree.files, parallel)
    work = [tuple(items[i] for i in lane) for lane in shard_lanes]
    for index, lane_results in run(partial(write_lane, target), work):
        for i, result in zip(shard_lanes[index], lane_results):
            results[i] = result
            counts["uploaded" if result.uploaded else "unchanged"] += 1
            counts["bytes"] += result.entry.bytes
            counts["source"] += result.source_bytes
            write.add(len(items[i].records))
        write.note = (
            f"{counts['uploaded'] + counts['unchanged']}/{len(items)} shards: {counts['uploaded']} uploaded, "
            f"{counts['unchanged']} unchanged, {counts['bytes'] / 1e6:.1f} MB"
        )
    write.finish()

    entries: dict[str, list[ShardEntry]] = {"train": [], "test": [], VAL: []}
    for written in results:
        assert written is not None
        entries[written.entry.name.split("/", 1)[0]].append(written.entry)
    _delete_stale(out_uri, {r.entry.name for r in results if r is not None})
    test_counts = Counter(r.class_name for r in test)
    val_counts = Counter(r.class_name for r in val)
    manifest = Manifest(
        dataset=dataset.name,
        classes=dataset.classes,
        split=SplitProvenance(split.sha256, split.profile, split.ratio, split.seed, tuple(split.class_order)),
        shards={k: tuple(v) for k, v in entries.items() if k != VAL or val},
        counts={
            "train": {c: split.counts.get(c, 0) for c in dataset.classes},
            "test": {c: test_counts.get(c, 0) for c in dataset.classes},
            **({VAL: {c: val_counts.get(c, 0) for c in dataset.classes}} if val else {}),
        },
        image_sizes={c: [list(wh) for wh in sorted(v)] for c, v in sizes.items()},
        sample_index=True,
    )
    uri = write_manifest(out_uri, manifest)
    ratio = counts["bytes"] / max(1, counts["source"])
    log(
        f"wrote {uri}: {counts['uploaded']} shards uploaded, {counts['unchanged']} unchanged; shards are "
        f"{ratio:.2f}x the source bytes"
    )
    return manifest


def _check_unique_keys(records: list[Record]) -> None:
    seen: dict[str, str] = {}
    for r in records:
        key = sample_key(r)
        if key in seen and seen[key] != r.path:
            raise DataError(f"images '{seen[key]}' and '{r.path}' map to the same sample key '{key}'")
        seen[key] = r.path


def _delete_stale(out_uri: str, keep: set[str]) -> None:
    """Remove shards of an earlier run that this run did not write (e.g. a larger split)."""
    splits = ("train", "test", VAL)
    listed = list(ordered_map(lambda split: storage.list(storage.join(out_uri, split)), splits, len(splits)))
    for split, uris in zip(splits, listed):  # the three listings in flight together
        for uri in uris:
            name = f"{split}/{uri.rsplit('/', 1)[-1]}"
            if uri.endswith(".tar") and name not in keep:
                storage.delete(uri)
                if storage.exists(index_name(uri)):
                    storage.delete(index_name(uri))
