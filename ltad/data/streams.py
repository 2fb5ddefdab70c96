"""Training and evaluation streams over prepared shards (torch IterableDatasets).

Training is resampled with a fixed epoch length split evenly over ranks and DataLoader workers, so
every rank runs the same number of steps whatever the shard sizes (no DDP hang), and mixes classes by
weights ~ count^(1 - class_balance); each reader holds a bounded number of open class sources and
reads the other classes sample by sample through the shards' sample index (ranged reads, up to
`data.read_ahead` of them in flight ahead of delivery), and
`endless_batches` serves a whole phase from one DataLoader with persistent workers. Evaluation reads
every test sample exactly once across ranks x workers, each shard checked against its manifest count. The shard machinery takes a `decode`
callable, so the feature cache streams its own shards through the same code.
"""

from __future__ import annotations

import io
import json
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from ltad.data.manifest import Manifest, ShardEntry
from ltad.data.sample_index import read_fragment, read_shard_index
from ltad.data.shards import decode_sample, image_member, iterate_shard
from ltad.errors import ConfigError, DataError
from ltad.io import storage
from ltad.log import ALL_RANKS, get_logger

storage.register_webdataset()
_log = get_logger("stream")

Decode = Callable[[dict[str, Any]], Any]
K = TypeVar("K")  # a class key: its name, or its id in the study


def decode_image_sample(sample: dict[str, Any], image_size: int, with_mask: bool) -> dict[str, Any]:
    """Raw shard sample -> `image` 3xHxW float32 in [0, 1] (+ `gt_mask` 1xHxW, `gt_label` for evaluation)."""
    with Image.open(io.BytesIO(image_member(sample))) as im:
        image = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    # HWC -> CHW and scaling in numpy: torch's intra-op thread pool costs ~5 ms per small tensor on a
    # busy machine (measured), more than the PNG decode itself.
    chw = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1), dtype=np.float32)
    chw *= 1.0 / 255.0
    out: dict[str, Any] = {
        "image": torch.from_numpy(chw),
        "class_id": int(sample["cls"]),
        "key": sample["__key__"],
    }
    if with_mask:
        meta = json.loads(sample["json"])
        mask = np.zeros((image_size, image_size), dtype=np.float32)
        if meta.get("mask") and "mask.png" not in sample:
            raise DataError(
                f"sample '{sample['__key__']}' of shard {sample['__url__']} has lost its mask "
                "(key.json says it has one, no key.mask.png member): re-run ltad prepare"
            )
        if "mask.png" in sample:
            with Image.open(io.BytesIO(sample["mask.png"])) as m:
                resized = m.convert("L").resize((image_size, image_size), Image.Resampling.NEAREST)
            mask = (np.asarray(resized) > 127).astype(np.float32)
        out["gt_mask"] = torch.from_numpy(mask)[None]
        out["gt_label"] = int(meta["label"])
    return out


def slot(rank: int, world_size: int) -> tuple[int, int]:
    """(this reader's index, number of readers) over ranks x DataLoader workers."""
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, {world_size}), got {rank}")
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world_size * workers


class ExactlyOnceStream(IterableDataset):
    """Every sample of `shards` once across all readers: shard i goes to reader i mod readers."""

    def __init__(self, uri: str, shards: Sequence[ShardEntry], rank: int, world_size: int, decode: Decode):
        self.uri, self.shards, self.rank, self.world_size, self.decode = (
            uri,
            tuple(shards),
            rank,
            world_size,
            decode,
        )

    def __iter__(self) -> Iterator[Any]:
        index, readers = slot(self.rank, self.world_size)
        for entry in self.shards[index::readers]:
            yield from iterate_shard(storage.join(self.uri, entry.name), entry.samples, self.decode)


def class_weights(counts: Mapping[K, int], class_balance: float) -> dict[K, float]:
    """Sampling weight per class ~ count^(1 - class_balance), normalised (classes with no samples drop out)."""
    if not 0 <= class_balance <= 1:
        raise ConfigError(f"class_balance must be in [0, 1], got {class_balance}")
    raw = {c: float(n) ** (1.0 - class_balance) for c, n in counts.items() if n > 0}
    total = sum(raw.values())
    return {c: w / total for c, w in raw.items()}


MAX_OPEN_SOURCES = 8
"""Default of `data.max_open_sources`: sequential class sources one training reader holds open."""

READ_AHEAD = 32
"""Default of `data.read_ahead`: ranged sample reads one training reader keeps ahead of its consumer
(and the most GET requests it has in flight at once); 0 reads each sample when it is drawn."""

READ_AHEAD_BYTES = 64 * 2**20
"""The sample bytes one reader plans ahead at most (the first planned sample is always admitted, so a
sample larger than this still reads); coalescing adds at most `COALESCE_GAP` unused bytes per request."""

COALESCE_GAP = 64 * 2**10
"""Samples planned together that lie in one shard with at most this many bytes between them are
fetched by one ranged read (the gap is read and dropped: cheaper than a request at 20-50 ms)."""

COALESCE_MAX = 8 * 2**20
"""A coalesced read spans at most this many bytes (a single larger sample still reads on its own)."""

_LOOKAHEAD_DRAWS = 8
"""Planned draws (sequential ones included) a reader keeps at most, per unit of read-ahead (min 64);
the sample indexes of classes drawn that far ahead of the planner are read ahead too."""


@dataclass(frozen=True)
class _ClassIndex:
    """Where every sample of one class lies: shard URLs and per sample (shard position, offset, length)."""

    urls: tuple[str, ...]
    shard: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class _Draw:
    """One planned draw of a reader: its class and, for a ranged one, the sample and its read."""

    cls: str
    sample: int | None = None  # position in the class index; None: from the class's sequential source
    length: int = 0
    fetch: Callable[[], bytes] | None = None  # the sample's bytes, read ahead; None: read when delivered


def _slice(read: Future, start: int, length: int) -> bytes:
    return bytes(memoryview(read.result())[start : start + length])


def _ranged_read(url: str, offset: int, length: int) -> bytes:
    return storage.read_range(url, offset, length)  # looked up per call (tests and benchmarks wrap it)


def coalesce(spans: Sequence[tuple[str, int, int]]) -> list[tuple[str, int, int, list[int]]]:
    """Ranged reads covering `spans` (url, offset, length): one per run of spans of one URL that lie
    at most `COALESCE_GAP` bytes apart and span at most `COALESCE_MAX` bytes (duplicates share one).
    Returns (url, offset, length, positions in `spans` it serves), in order of first span."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], spans[i][1], i))
    reads: list[tuple[str, int, int, list[int]]] = []
    for i in order:
        url, offset, length = spans[i]
        if reads:
            u, start, size, members = reads[-1]
            end = max(start + size, offset + length)
            if u == url and offset - (start + size) <= COALESCE_GAP and end - start <= COALESCE_MAX:
                reads[-1] = (u, start, end - start, [*members, i])
                continue
        reads.append((url, offset, length, [i]))
    return sorted(reads, key=lambda r: min(r[3]))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ResampledStream(IterableDataset):
    """A fixed number of samples per epoch, drawn class by class with replacement over shards.

    Each reader (rank x worker) draws its share of `epoch_samples // world_size` samples: a class by
    weight, then a sample of that class. Deterministic given (seed, epoch, rank, worker).

    Bounded per reader whatever the number of classes: at most `max_open_sources` classes, the ones
    drawn most (largest weight, at least `4 * buffer` expected draws per reader and epoch), are read
    through an endless sequential source (their shards in a seeded random order, samples shuffled in
    a `buffer`-sample buffer); every other class is served by one ranged read per sample, a sample
    chosen uniformly with replacement from that class's per-sample index (sample_index.py, loaded on
    the class's first draw, numpy arrays only). Both give every sample of a class the same chance.
    Draws are planned ahead of delivery, so up to `read_ahead` ranged reads (and the indexes of the
    classes drawn next) are in flight while earlier samples are decoded; the samples and their order
    do not depend on `read_ahead`.
    Shards without an index (`sample_index=False`: prepared before it existed), or a class whose
    sidecars are missing or stale, fall back to one sequential source per drawn class.

    Corrupt data is skipped up to `max_bad_samples` per reader (`data.max_bad_samples`): each
    distinct undecodable sample, and every sample a truncated or corrupt shard failed to deliver,
    counts once; each skip is reported on stderr with the running count (`bad_samples`) and travels
    with the sample that replaced it (`bad_skipped`, summed into the run's metrics), and the
    first one beyond the budget raises a DataError naming the shard. An unreachable server
    (StorageError) is never skipped.
    """

    def __init__(
        self,
        uri: str,
        shards_by_class: Mapping[str, Sequence[ShardEntry]],
        weights: dict[str, float],
        *,
        epoch_samples: int,
        seed: int,
        rank: int,
        world_size: int,
        decode: Decode,
        epoch: int = 0,
        buffer: int = 16,
        max_bad_samples: int = 0,
        max_open_sources: int = MAX_OPEN_SOURCES,
        sample_index: bool = False,
        read_ahead: int = READ_AHEAD,
    ) -> None:
        if epoch_samples < world_size:
            raise ConfigError(f"epoch_samples ({epoch_samples}) must be at least world_size ({world_size})")
        if max_open_sources < 1:
            raise ConfigError(f"data.max_open_sources must be an int >= 1, got {max_open_sources}")
        if read_ahead < 0:
            raise ConfigError(f"data.read_ahead must be an int >= 0, got {read_ahead}")
        missing = [c for c in weights if not shards_by_class.get(c)]
        if missing:
            raise DataError(f"class '{missing[0]}' has a sampling weight but no training shards at {uri}")
        self.uri, self.shards_by_class, self.weights = uri, shards_by_class, weights
        self.epoch_samples, self.seed, self.rank, self.world_size = epoch_samples, seed, rank, world_size
        self.decode, self.epoch, self.buffer = decode, epoch, buffer
        self.max_bad_samples = max_bad_samples
        self.max_open_sources, self.sample_index = max_open_sources, sample_index
        self.read_ahead = read_ahead
        self.bad_samples = 0
        """Corrupt samples skipped by this reader so far (samples lost with a corrupt shard included)."""
        self.stats = {
            "sources_opened": 0,
            "open_sources_peak": 0,
            "ranged_reads": 0,
            "ranged_bytes": 0,
            "ranged_requests": 0,
            "ranged_request_bytes": 0,
        }
        """What this reader did: sequential sources opened, most open at once, samples delivered to
        the decoder by ranged reads and their bytes, and the ranged GET requests made for them (fewer
        when coalesced, more when read ahead for an epoch that was closed early) and their bytes."""
        self._bad_shards: set[str] = set()
        self._bad_keys: set[tuple[str, str]] = set()
        self._bad_ranged: dict[str, set[int]] = {}
        self._index: dict[str, _ClassIndex | None] = {}  # per class, loaded on its first ranged draw

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples per rank and epoch (the same on every rank)."""
        return self.epoch_samples // self.world_size

    def reader_samples(self, worker: int, workers: int) -> int:
        """This reader's share of the rank's samples per epoch (the first workers take the remainder)."""
        per_rank = len(self)
        return per_rank // workers + (1 if worker < per_rank % workers else 0)

    def sequential_classes(self, count: int) -> set[str]:
        """The classes this reader streams sequentially when it draws `count` samples an epoch."""
        if not self.sample_index:
            return set(self.weights)
        size = {c: sum(e.per_class.get(c, 0) for e in self.shards_by_class[c]) for c in self.weights}
        ranked = sorted(self.weights, key=lambda c: (-self.weights[c], -size[c], c))
        return {c for c in ranked[: self.max_open_sources] if count * self.weights[c] >= 4 * self.buffer}

    def __iter__(self) -> Iterator[Any]:
        worker, workers = _worker()
        yield from self.samples(self.epoch, worker, self.reader_samples(worker, workers))

    def samples(self, epoch: int, worker: int, count: int) -> Iterator[Any]:
        """`count` decoded samples (each with `bad_skipped`) of loader worker `worker` in `epoch`.

        The draws are planned ahead of delivery (`_plan`), so up to `read_ahead` ranged samples are
        read on a small thread pool while earlier ones are decoded; which samples come, and in which
        order, does not depend on `read_ahead` (0: each sample is read when it is delivered).
        """
        sources: dict[str, Iterator[dict[str, Any]]] = {}
        pool = (
            ThreadPoolExecutor(self.read_ahead, thread_name_prefix="ltad-read-ahead")
            if self.read_ahead
            else None
        )
        if pool is not None and storage.is_s3(self.uri):
            storage.client()  # made once here, not by every read thread at once (each would make one)
        plan = self._plan(epoch, worker, count, sources, pool)
        # replacements for corrupt ranged samples: drawn when the damage is met, from their own
        # generator, so the planned draws (made before) do not depend on what was read
        repick = np.random.default_rng([self.seed, epoch, self.rank, worker, 1])
        try:
            if pool is None:
                for draw in plan:
                    yield self._deliver(draw, sources, repick, worker)
                return
            window: deque[_Draw] = deque()
            ahead = [0, 0]  # ranged draws in the window, their bytes
            most = max(64, _LOOKAHEAD_DRAWS * self.read_ahead)
            low = self.read_ahead - max(1, self.read_ahead // 4)  # refill in steps of >= 1/4: coalescing
            done = False
            while True:
                if not done and ahead[0] <= low:
                    done = self._refill(plan, window, ahead, most, pool)
                if not window:
                    return
                draw = window.popleft()
                if draw.sample is not None:
                    ahead[0] -= 1
                    ahead[1] -= draw.length
                yield self._deliver(draw, sources, repick, worker)
        finally:
            plan.close()
            if pool is not None:  # reads for draws never delivered (a closed epoch) are dropped
                pool.shutdown(wait=False, cancel_futures=True)
            for source in sources.values():  # ends their reads (open S3 GETs) now, not at garbage collection
                source.close()  # type: ignore[attr-defined]

    def _plan(
        self,
        epoch: int,
        worker: int,
        count: int,
        sources: dict[str, Iterator[dict[str, Any]]],
        pool: ThreadPoolExecutor | None = None,
    ) -> Generator[_Draw, None, None]:
        """The epoch's draws in delivery order: a class by weight, then a sample of it for a ranged
        class (opening a sequential source the first time a sequential class is drawn). With a
        `pool`, the sample indexes of the classes drawn next are read on it ahead of their draw."""
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        classes = sorted(self.weights)
        probs = np.array([self.weights[c] for c in classes])
        sequential = self.sequential_classes(count)
        pick: np.random.Generator | None = None
        draws = rng.choice(len(classes), size=count, p=probs / probs.sum())
        loading: dict[str, Future] = {}  # class indexes being read ahead, at most `read_ahead` at once
        scanned = 0
        for position, c in enumerate(draws):
            if pool is not None:  # start reading the indexes of the classes met in the next draws
                horizon = min(count, position + _LOOKAHEAD_DRAWS * self.read_ahead)
                while scanned < horizon and len(loading) < self.read_ahead:
                    other = classes[draws[scanned]]
                    if other not in self._index and other not in loading and other not in sequential:
                        loading[other] = pool.submit(self._load_index, other)
                    scanned += 1
            cls = classes[c]
            if cls in sources or cls in sequential or self._class_index(cls, loading) is None:
                if cls not in sources:
                    sources[cls] = self._source(cls, np.random.default_rng(rng.integers(2**63)))
                    self.stats["sources_opened"] += 1
                    self.stats["open_sources_peak"] = max(self.stats["open_sources_peak"], len(sources))
                yield _Draw(cls)
            else:
                if pick is None:
                    pick = np.random.default_rng(rng.integers(2**63))
                index = self._index[cls]
                assert index is not None
                j = int(pick.integers(len(index)))
                yield _Draw(cls, j, int(index.lengths[j]))

    def _refill(
        self,
        plan: Iterator[_Draw],
        window: deque[_Draw],
        ahead: list[int],
        most: int,
        pool: ThreadPoolExecutor,
    ) -> bool:
        """Plan draws into `window` until `read_ahead` ranged ones (or `READ_AHEAD_BYTES`, or `most`
        draws) are ahead, and start their reads, coalesced; True when the plan is exhausted."""
        new: list[_Draw] = []
        exhausted = False
        while (
            len(window) < most
            and ahead[0] < self.read_ahead
            and (ahead[1] < READ_AHEAD_BYTES or not ahead[0])
        ):
            draw = next(plan, None)
            if draw is None:
                exhausted = True
                break
            window.append(draw)
            if draw.sample is not None:
                ahead[0] += 1
                ahead[1] += draw.length
                new.append(draw)
        spans = [self._span(d.cls, d.sample) for d in new if d.sample is not None]
        for url, offset, length, members in coalesce(spans):
            read = pool.submit(_ranged_read, url, offset, length)
            self.stats["ranged_requests"] += 1
            self.stats["ranged_request_bytes"] += length
            for i in members:
                new[i].fetch = partial(_slice, read, spans[i][1] - offset, spans[i][2])
        return exhausted

    def _span(self, cls: str, j: int) -> tuple[str, int, int]:
        """(shard URL, offset, length) of sample `j` of a ranged class."""
        index = self._index[cls]
        assert index is not None
        return index.urls[index.shard[j]], int(index.offsets[j]), int(index.lengths[j])

    def _deliver(
        self,
        draw: _Draw,
        sources: dict[str, Iterator[dict[str, Any]]],
        repick: np.random.Generator,
        worker: int,
    ) -> Any:
        if draw.sample is None:
            return self._next_sequential(draw.cls, sources[draw.cls], worker)
        return self._next_ranged(draw, repick, worker)

    def _next_sequential(self, cls: str, source: Iterator[dict[str, Any]], worker: int) -> Any:
        known_bad, bad_before = 0, self.bad_samples
        while True:  # a corrupt sample is replaced by the next one of the same class
            raw = next(source)
            where = (raw["__url__"], raw["__key__"])
            if where in self._bad_keys:  # counted when first met
                known_bad += 1
                if known_bad > sum(e.samples for e in self.shards_by_class[cls]):
                    raise DataError(f"every training sample of class '{cls}' at {self.uri} is corrupt")
                continue
            try:
                decoded = decode_sample(raw, self.decode)
            except DataError as exc:
                self._bad_keys.add(where)
                self._skip(1, exc, worker)
                continue
            # how many bad samples this one replaced: summed by the trainer into the run's metrics
            return {**decoded, "bad_skipped": self.bad_samples - bad_before}

    def _next_ranged(self, draw: _Draw, repick: np.random.Generator, worker: int) -> Any:
        """The planned sample of a ranged class (its bytes read ahead, or read now); a corrupt one is
        replaced by a draw from `repick` among the class's other samples, read now."""
        cls, j, fetch = draw.cls, draw.sample, draw.fetch
        index = self._index[cls]
        assert index is not None
        bad = self._bad_ranged.setdefault(cls, set())
        bad_before = self.bad_samples
        while True:  # a corrupt sample is replaced by another draw among the class's other samples
            if len(bad) >= len(index):
                raise DataError(f"every training sample of class '{cls}' at {self.uri} is corrupt")
            if j is None:
                j, fetch = int(repick.integers(len(index))), None
            if j in bad:
                j = None
                continue
            url, offset, length = self._span(cls, j)
            if fetch is None:
                data = storage.read_range(url, offset, length)  # a StorageError is never skipped
                self.stats["ranged_requests"] += 1
                self.stats["ranged_request_bytes"] += length
            else:
                data = fetch()  # the read's StorageError, if it failed, is raised here
            self.stats["ranged_reads"] += 1
            self.stats["ranged_bytes"] += len(data)
            try:
                decoded = decode_sample(read_fragment(data, url, offset, length), self.decode)
            except DataError as exc:
                bad.add(j)
                self._skip(1, exc, worker)
                j = None
                continue
            return {**decoded, "bad_skipped": self.bad_samples - bad_before}

    def _class_index(self, cls: str, loading: dict[str, Future] | None = None) -> _ClassIndex | None:
        """The per-sample index of one class (read once per reader, or taken from `loading`, where the
        planner started its read ahead); None when a shard has no current sidecar or one that
        disagrees with the manifest (the class is then read sequentially)."""
        if cls not in self._index:
            started = loading.pop(cls, None) if loading is not None else None
            self._index[cls] = started.result() if started is not None else self._load_index(cls)
        return self._index[cls]

    def _load_index(self, cls: str) -> _ClassIndex | None:
        """Read the sidecars of the shards of `cls` (any thread: it changes nothing of the reader)."""
        urls: list[str] = []
        shard: list[np.ndarray] = []  # per shard: its position in `urls`, once per sample of the class
        offsets: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        found: _ClassIndex | None = None
        for entry in self.shards_by_class[cls]:
            url = storage.join(self.uri, entry.name)
            index = read_shard_index(url, entry.sha256, entry.bytes)
            if index is None:
                _log.warning(
                    f"shard {url} has no current sample index: class '{cls}' is read sequentially "
                    "(re-run ltad prepare to index it)",
                    extra=ALL_RANKS,
                )
                break
            mine = (
                index.class_pos == index.classes.index(cls)
                if cls in index.classes
                else np.zeros(len(index.offsets), bool)
            )
            if int(mine.sum()) != entry.per_class.get(cls, 0):  # the sequential read counts the damage
                _log.warning(
                    f"sample index of shard {url} lists {int(mine.sum())} samples of class '{cls}', the "
                    f"manifest {entry.per_class.get(cls, 0)}: class '{cls}' is read sequentially",
                    extra=ALL_RANKS,
                )
                break
            shard.append(np.full(int(mine.sum()), len(urls), dtype=np.int32))
            urls.append(url)
            offsets.append(index.offsets[mine])
            lengths.append(index.lengths[mine])
        else:
            found = _ClassIndex(
                tuple(urls), np.concatenate(shard), np.concatenate(offsets), np.concatenate(lengths)
            )
        return found

    def _skip(self, lost: int, exc: DataError, worker: int) -> None:
        """Count `lost` bad samples against `max_bad_samples`; fail once the budget is spent."""
        self.bad_samples += lost
        where = f"training stream (rank {self.rank}, loader worker {worker})"
        if self.bad_samples > self.max_bad_samples:
            raise DataError(
                f"{where} met {self.bad_samples} bad samples, more than data.max_bad_samples="
                f"{self.max_bad_samples}; the last: {exc}"
            ) from None
        _log.warning(
            f"{where}: skipped {lost} bad sample(s), {self.bad_samples} of data.max_bad_samples="
            f"{self.max_bad_samples} used: {exc}",
            extra=ALL_RANKS,
        )

    def _source(self, cls: str, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """Raw samples of one class forever: shards in random order, samples through a shuffle buffer.

        A truncated or corrupt shard still gives the samples before the damage; the ones it failed to
        deliver count as bad once (the first time this reader meets it). A class whose shards give
        no sample at all is an error.
        """
        shards = self.shards_by_class[cls]
        held: list[dict[str, Any]] = []
        while True:
            delivered = 0
            for i in rng.permutation(len(shards)):
                entry = shards[i]
                read = 0
                try:
                    # closing(): a source closed mid-shard ends its read now, not when collected
                    with closing(iterate_shard(storage.join(self.uri, entry.name), entry.samples)) as samples:
                        for sample in samples:
                            read += 1
                            held.append(sample)
                            if len(held) >= self.buffer:
                                yield held.pop(int(rng.integers(len(held))))
                except DataError as exc:  # a StorageError (server unreachable) is not corruption
                    if entry.name not in self._bad_shards:
                        self._bad_shards.add(entry.name)
                        info = get_worker_info()
                        self._skip(max(1, entry.samples - read), exc, info.id if info is not None else 0)
                delivered += read
            if not delivered:
                raise DataError(f"no training shard of class '{cls}' at {self.uri} holds a readable sample")
            while len(held) > self.buffer // 2 or (held and len(shards) == 1):
                yield held.pop(int(rng.integers(len(held))))


def train_stream(
    uri: str,
    manifest: Manifest,
    *,
    image_size: int,
    epoch_samples: int,
    seed: int,
    rank: int,
    world_size: int,
    class_balance: float = 0.5,
    epoch: int = 0,
    max_bad_samples: int = 0,
    max_open_sources: int = MAX_OPEN_SOURCES,
    read_ahead: int = READ_AHEAD,
) -> ResampledStream:
    """Training images: `image`, `class_id`, `key`; class-weighted, resampled, fixed epoch length."""
    by_class: dict[str, list[ShardEntry]] = {c: [] for c in manifest.classes}
    for entry in manifest.shards["train"]:
        for cls in entry.per_class:
            by_class[cls].append(entry)
    return ResampledStream(
        uri,
        by_class,
        class_weights(manifest.counts["train"], class_balance),
        epoch_samples=epoch_samples,
        seed=seed,
        rank=rank,
        world_size=world_size,
        decode=partial(decode_image_sample, image_size=image_size, with_mask=False),
        epoch=epoch,
        max_bad_samples=max_bad_samples,
        max_open_sources=max_open_sources,
        sample_index=manifest.sample_index,
        read_ahead=read_ahead,
    )


def eval_stream(
    uri: str, manifest: Manifest, *, image_size: int, rank: int, world_size: int
) -> ExactlyOnceStream:
    """Every test image once across ranks x workers: `image`, `gt_mask`, `gt_label`, `class_id`, `key`."""
    decode = partial(decode_image_sample, image_size=image_size, with_mask=True)
    return ExactlyOnceStream(uri, manifest.shards["test"], rank, world_size, decode)


def make_loader(dataset: IterableDataset, batch_size: int, num_workers: int) -> DataLoader:
    """A DataLoader over a stream: worker splitting happens inside the stream, batches via default_collate."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=default_collate,
        persistent_workers=False,
    )


class EpochBatches(IterableDataset):
    """Endless collated batches of a ResampledStream, epoch after epoch from its `epoch`.

    Made for one DataLoader that lives as long as the training phase (its workers persist, and with
    them each reader's class indexes and bad-sample count), instead of a loader per epoch. An epoch's
    `len(stream)` samples make `ceil(len / batch_size)` batches (only the last one may be partial);
    batch b is drawn by loader worker b mod workers, which is where the loader's round robin takes it
    from, so every epoch yields exactly its batches in order whatever the number of workers, and a
    resumed run can skip the batches it already trained on. A worker with fewer batches than the
    others this epoch yields empty placeholders instead (`endless_batches` drops them) to keep the
    round robin aligned. With workers dividing the batch count, the batches are those a loader
    over `stream` per epoch gives.
    """

    def __init__(self, stream: ResampledStream, batch_size: int) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1, got {batch_size}")
        self.stream, self.batch_size = stream, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = _worker()
        n, bs = len(self.stream), self.batch_size
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        mine = sizes[worker::workers]
        slots = -(-len(sizes) // workers)
        epoch = self.stream.epoch
        while True:
            samples = self.stream.samples(epoch, worker, sum(mine))
            for size in mine:
                yield default_collate(list(islice(samples, size)))
            samples.close()  # type: ignore[attr-defined]  # ends the epoch's sequential reads now
            for _ in range(slots - len(mine)):
                yield {}
            epoch += 1


def endless_batches(stream: ResampledStream, batch_size: int, num_workers: int) -> Iterator[dict[str, Any]]:
    """Training batches forever from `stream.epoch` on, through one DataLoader with persistent workers."""
    loader = DataLoader(
        EpochBatches(stream, batch_size),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    for batch in loader:
        if batch:  # an empty placeholder (see EpochBatches)
            yield batch
