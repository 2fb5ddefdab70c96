"""The feature cache: the frozen encoder runs once over the image shards and writes fp16 feature shards.

Feature shards sit beside the image shards at `{prefix}/features/{fingerprint}/{split}/...`, one
feature shard per image shard with the same name and the same samples in the same order, so they
reuse the data plane's shard writer, manifest (with its per-shard counts) and streams. The
fingerprint hashes the encoder config, what its checkpoint holds (a local file's sha256; an s3://
object's `sha256` metadata, else its ETag and size: told by one HEAD, so the driver never downloads
the weights to name the cache) and the image shards' hashes: a different encoder, a replaced checkpoint or re-prepared shards get a new cache, never a
stale one. Samples: `key.feat.npy` (fp16 D x g x g), `key.glob.npy`
(fp16 E), `key.cls`, `key.json`, and `key.mask.png` for defective test samples; a study's cache may
add `key.anom.npy` + `key.anom_target.npy` (a pseudo-anomalous copy, `phase2.pseudo_anomaly: cached`).

Where: `data.cache_uri` (any s3:// prefix or local directory) holds caches as `{cache_uri}/{fingerprint}`
when set, so the cache can live outside the data bucket; '' keeps them in `{data.uri}/features/`.

Uploads overlap encoding: a finished shard goes to one background upload thread (at most
`UPLOADS_PENDING` waiting) while the encoder goes on; a failed upload stops the encode with its error,
and `encode_shards` returns only after every upload ended.

Resumable: each rank's feature shard is uploaded with its sha256 as object metadata, then a small
done-record `_done/{split}/{name}.json` (name, samples, bytes, sha256, per-class counts, fingerprint,
precision) is written. A restarted encode skips every shard whose record exists, whose fingerprint and
precision match, and whose object verifies (its size and its sha256: the S3 object's metadata, or the
local file hashed again). The cache manifest is written last, after every shard exists, so a cache
without its manifest is never read. A preemption after hours loses at most the shards in flight.

Work split: the shards go to the Ray workers largest-first by bytes (`balance_by_bytes`), and within a
worker to its DataLoader workers (`data.loader_workers`) the same way; those processes read and decode
the images, the main thread only runs the encoder and writes.

Tolerance: fp16 storage rounds each value to 11 significant bits, so a cached feature differs from the
online fp32 one by at most 2^-11 of its magnitude (checked in tests/integration/test_training.py).
On a GPU the encoder runs under bf16 autocast (8 significant bits; fp16 autocast on a card without
bf16, training/precision.py): the cache then differs from fp32 by about 2^-8 of each value's
magnitude, plus the accumulated rounding of the layers, in exchange for about twice the throughput;
the manifest's `extra.precision` says which ("fp32" on CPU, unchanged).
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ltad.config import EncoderConfig, to_dict
from ltad.data.manifest import SPLITS, Manifest, ShardEntry, manifest_uri, read_manifest, write_manifest
from ltad.data.progress import Progress
from ltad.data.sample_index import write_shard_index
from ltad.data.shards import ShardInfo, ShardWriter, iterate_shard
from ltad.data.streams import decode_image_sample
from ltad.errors import DataError, StorageError
from ltad.io import blobs, storage
from ltad.io.inflight import Background
from ltad.log import get_logger
from ltad.training import precision as precisions

FP16_RTOL = 2.0**-11
"""Relative rounding bound of the fp16 cache (documented tolerance of cached vs online features)."""
T = TypeVar("T")
DONE = "_done"
"""Folder of the per-shard done-records inside a cache."""
UPLOADS_PENDING = 2
"""Finished feature shards the encoder may run ahead of their uploads (one uploading, one waiting):
the encoder never waits on the store unless uploads are slower than encoding, and at most this many
shards, besides the one being written, sit on local disk."""
BATCH_ATOL = 1e-5
"""Plus this share of the largest |feature|: fp32 conv results differ slightly with batch composition
(the cache encodes in its own batches, on however many workers), which matters for values near 0."""


def fingerprint(encoder: EncoderConfig, manifest: Manifest) -> str:
    """16 hex digits naming the cache of this encoder over these exact image shards."""
    data = {
        "encoder": to_dict(encoder),
        "shards": {s: [[e.name, e.sha256] for e in manifest.shards[s]] for s in SPLITS},
    }
    weights = _weights_sha256(encoder.pretrained)
    if weights is not None:  # bundled / none / hub tags keep their fingerprints
        data["weights_sha256"] = weights
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _weights_sha256(pretrained: str) -> str | None:
    """What the checkpoint file or s3:// object holds (config load makes existing paths absolute):
    `blobs.content_id`, so the driver names the cache without downloading the weights (an object
    without `sha256` metadata is named by its ETag and size)."""
    if not (storage.is_s3(pretrained) or Path(pretrained).is_absolute()):
        return None
    try:
        return blobs.content_id(pretrained)
    except StorageError as exc:
        raise StorageError(f"model.encoder.pretrained '{pretrained}': {exc}") from None


def cache_root(data_uri: str, root: str = "") -> str:
    """Where caches live: `root` (data.cache_uri) when set, else `{data_uri}/features`."""
    return root or storage.join(data_uri, "features")


def cache_uri(data_uri: str, encoder: EncoderConfig, manifest: Manifest, root: str = "") -> str:
    return storage.join(cache_root(data_uri, root), fingerprint(encoder, manifest))


def find_cache(data_uri: str, encoder: EncoderConfig, manifest: Manifest, root: str = "") -> str | None:
    """The complete cache for this encoder and these shards (its manifest exists), or None."""
    uri = cache_uri(data_uri, encoder, manifest, root)
    return uri if storage.exists(manifest_uri(uri)) else None


def balance_by_bytes(items: Sequence[T], workers: int, size: Callable[[T], int]) -> list[list[T]]:
    """Greedy largest-first: each item goes to the worker with the fewest bytes so far (ties: the lowest
    worker); each worker's items keep their input order. Deterministic, so every rank computes the same."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    heap = [(0, w) for w in range(workers)]
    owner = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: (-size(items[i]), i)):
        load, w = heapq.heappop(heap)
        owner[i] = w
        heapq.heappush(heap, (load + size(items[i]), w))
    return [[item for i, item in enumerate(items) if owner[i] == w] for w in range(workers)]


def precision(device: torch.device) -> str:
    """The encode precision on `device`: bf16 (fp16 without bf16 support) autocast on CUDA, fp32 elsewhere."""
    return precisions.of_device(device)


def _autocast(device: torch.device):
    return precisions.autocast(device, precision(device))


def done_record_uri(out_uri: str, name: str) -> str:
    return storage.join(out_uri, DONE, f"{name}.json")


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_shard(out_uri: str, name: str, cache_id: str, mode: str) -> ShardEntry | None:
    """The entry of feature shard `name` when a previous encode finished it (done-record present, same
    fingerprint and precision, object of the recorded size and sha256); None to encode it again."""
    record_uri = done_record_uri(out_uri, name)
    if storage.head(record_uri) is None:
        return None
    try:
        rec = storage.read_json(record_uri)
        entry = ShardEntry(
            rec["name"], int(rec["samples"]), int(rec["bytes"]), rec["sha256"], rec["per_class"]
        )
        if (rec["fingerprint"], rec["precision"], entry.name) != (cache_id, mode, name):
            return None
    except (StorageError, KeyError, TypeError, ValueError):
        return None  # an unreadable record: the shard is simply encoded again
    obj_uri = storage.join(out_uri, name)
    head = storage.head(obj_uri)
    if head is None or head["size"] != entry.bytes:
        return None
    sha = head["metadata"].get("sha256") if storage.is_s3(obj_uri) else _file_sha256(obj_uri)
    return entry if sha == entry.sha256 else None


def npy_bytes(array: torch.Tensor) -> bytes:
    """A feature tensor as the cache stores it: fp16 .npy bytes (a value fp16 cannot hold is an error)."""
    values = array.detach().cpu().to(torch.float16).numpy()
    if not np.isfinite(values).all():
        raise DataError("encoder features overflow fp16 (values beyond +-65504): the cache cannot hold them")
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


class _EncodeInput(IterableDataset):
    """Decoded chunks of at most `batch_size` images, never spanning two shards: {'pos' (index in
    `work`), 'images', 'samples' (key and the members copied to the feature shard)}. Each DataLoader
    worker reads and decodes its own shards (split by bytes), so the main process only encodes."""

    def __init__(self, data_uri: str, work: list[tuple[str, ShardEntry]], image_size: int, batch_size: int):
        self.data_uri, self.work, self.image_size, self.batch_size = data_uri, work, image_size, batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = balance_by_bytes(list(enumerate(self.work)), workers, lambda p: p[1][1].bytes)[worker]
        for pos, (_split, entry) in mine:
            url = storage.join(self.data_uri, entry.name)
            for raw in _batched(iterate_shard(url, entry.samples), self.batch_size):
                images = [decode_image_sample(s, self.image_size, with_mask=False)["image"] for s in raw]
                kept = [{k: s[k] for k in ("__key__", "cls", "json", "mask.png") if k in s} for s in raw]
                yield {"pos": pos, "images": torch.stack(images), "samples": kept}


def _as_is(chunk: Any) -> Any:
    return chunk


def _encode_chunk(encoder, images: torch.Tensor, samples: list[dict[str, Any]], device: torch.device):
    """(key, feature shard members, class name) of each sample of a chunk."""
    with _autocast(device):
        enc = encoder.encode_images(images.to(device))
    out = []
    for i, sample in enumerate(samples):
        files = {"feat.npy": npy_bytes(enc.patches[i]), "glob.npy": npy_bytes(enc.global_emb[i])}
        files.update({k: sample[k] for k in ("cls", "json", "mask.png") if k in sample})
        out.append((sample["__key__"], files, json.loads(sample["json"])["class_name"]))
    return out


def encode_shards(
    encoder,
    data_uri: str,
    manifest: Manifest,
    out_uri: str,
    *,
    cache_id: str,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 16,
    num_workers: int = 0,
    resume: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[tuple[str, ShardEntry]]:
    """Encode this rank's share (by bytes) of all train + test shards; returns (split, entry) of each of
    its shards, the ones finished by an earlier run (verified, not encoded again) included."""
    log = log or get_logger("encode").info
    device = encoder.mean.device
    mode = precision(device)
    share = balance_by_bytes(
        [(s, e) for s in SPLITS for e in manifest.shards[s]], world_size, lambda p: p[1].bytes
    )
    written: list[tuple[str, ShardEntry]] = []
    work: list[tuple[str, ShardEntry]] = []
    for split, entry in share[rank]:
        done = verified_shard(out_uri, entry.name, cache_id, mode) if resume else None
        if done is not None and done.samples == entry.samples:
            written.append((split, done))
        else:
            work.append((split, entry))
    if written:
        log(f"rank {rank}: {len(written)} feature shards already done, {len(work)} to encode")
    # one line per finished shard: its name, then counts, rate and ETA of this rank's share
    progress = Progress(
        f"encode (rank {rank})", total=sum(e.samples for _, e in work), unit="samples", log=lambda _m: None
    )

    def publish(path: Path, info: ShardInfo) -> None:
        """Upload a finished feature shard, its sample index, then its done-record (on the upload thread)."""
        entry = ShardEntry(info.name, info.samples, info.bytes, info.sha256, info.per_class)
        storage.upload_file(path, storage.join(out_uri, info.name), metadata={"sha256": info.sha256})
        write_shard_index(path, storage.join(out_uri, info.name), info.sha256)
        path.unlink()
        record = {**entry.__dict__, "fingerprint": cache_id, "precision": mode}
        storage.write_json(done_record_uri(out_uri, info.name), record)  # after the object: marks it done
        written.append((info.name.split("/", 1)[0], entry))
        progress.add(entry.samples)
        log(f"{entry.name}: {entry.samples} samples; {progress.line()}")

    dataset = _EncodeInput(data_uri, work, encoder.cfg.image_size, batch_size)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is)
    open_writers: dict[int, tuple[ShardWriter, int]] = {}
    # the uploads run behind the encoder (at most UPLOADS_PENDING finished shards waiting); leaving
    # this block waits for them and raises the first failed one, so the caller's manifest comes after
    with (
        tempfile.TemporaryDirectory(prefix="ltad-encode-") as tmp,
        Background(UPLOADS_PENDING, name="ltad-encode-upload") as uploads,
    ):
        for chunk in loader if work else ():
            pos = chunk["pos"]
            split, entry = work[pos]
            if pos not in open_writers:
                part, index = Path(entry.name).stem.rsplit("-", 1)
                writer = ShardWriter(tmp, split, part, partial(uploads.submit, publish), max_bytes=1 << 62)
                writer.index = int(index)  # one feature shard per image shard, same name
                open_writers[pos] = (writer, 0)
            writer, count = open_writers[pos]
            for key, files, cls in _encode_chunk(encoder, chunk["images"], chunk["samples"], device):
                writer.write(key, files, cls)
            count += len(chunk["samples"])
            open_writers[pos] = (writer, count)
            if count == entry.samples:
                writer.close()  # hands the shard to the upload thread
                del open_writers[pos]
    if open_writers:  # iterate_shard checks counts, so this means a shard of the manifest is empty
        names = sorted(work[pos][1].name for pos in open_writers)
        raise DataError(f"feature shards {names} did not receive the samples the manifest lists")
    return written


def write_cache_manifest(
    out_uri: str,
    manifest: Manifest,
    written: list[tuple[str, ShardEntry]],
    encoder: EncoderConfig,
    provenance: dict,
    mode: str = "fp32",
) -> Manifest:
    """The cache's manifest (written last), after checking that every image shard has its feature shard."""
    shards = {
        s: tuple(sorted((e for split, e in written if split == s), key=lambda e: e.name)) for s in SPLITS
    }
    for split in SPLITS:
        want = {(e.name, e.samples) for e in manifest.shards[split]}
        got = {(e.name, e.samples) for e in shards[split]}
        if want != got:
            raise DataError(
                f"feature cache {out_uri} {split} shards {sorted(got)} do not match the image shards {sorted(want)}"
            )
    cache = Manifest(
        dataset=manifest.dataset,
        classes=manifest.classes,
        split=manifest.split,
        shards=shards,
        counts=manifest.counts,
        image_sizes=manifest.image_sizes,
        extra={"kind": "features", "encoder": to_dict(encoder), "weights": provenance, "precision": mode},
        sample_index=True,
    )
    write_manifest(out_uri, cache)
    return cache


def encode(
    encoder,
    data_uri: str,
    *,
    batch_size: int = 16,
    force: bool = False,
    root: str = "",
    num_workers: int = 0,
    log: Callable[[str], None] | None = None,
) -> str:
    """Single-process `ltad encode`: the cache URI (reused when complete unless `force`; an interrupted
    encode resumes from its finished shards unless `force`)."""
    manifest = read_manifest(data_uri)
    cache_id = fingerprint(encoder.cfg, manifest)
    out_uri = storage.join(cache_root(data_uri, root), cache_id)
    if not force and storage.exists(manifest_uri(out_uri)):
        return out_uri
    storage.delete(manifest_uri(out_uri))
    written = encode_shards(
        encoder,
        data_uri,
        manifest,
        out_uri,
        cache_id=cache_id,
        batch_size=batch_size,
        num_workers=num_workers,
        resume=not force,
        log=log,
    )
    write_cache_manifest(
        out_uri, manifest, written, encoder.cfg, encoder.weights_provenance(), precision(encoder.mean.device)
    )
    return out_uri


def decode_feature_sample(sample: dict[str, Any], image_size: int, with_mask: bool) -> dict[str, Any]:
    """Feature shard sample -> `patches`, `global_emb` (fp16), `class_id`, `key` (+ `gt_mask`, `gt_label`)."""
    out: dict[str, Any] = {
        "patches": _load_npy(sample["feat.npy"]),
        "global_emb": _load_npy(sample["glob.npy"]),
        "class_id": int(sample["cls"]),
        "key": sample["__key__"],
    }
    if "anom.npy" in sample:  # a pseudo-anomalous copy's features and patch targets (the study's cache)
        out["anom_patches"] = _load_npy(sample["anom.npy"])
        out["anom_target"] = _load_npy(sample["anom_target.npy"])
    if with_mask:
        mask = np.zeros((image_size, image_size), dtype=np.float32)
        if "mask.png" in sample:
            with Image.open(io.BytesIO(sample["mask.png"])) as m:
                resized = m.convert("L").resize((image_size, image_size), Image.Resampling.NEAREST)
            mask = (np.asarray(resized) > 127).astype(np.float32)
        out["gt_mask"] = torch.from_numpy(mask)[None]
        out["gt_label"] = int(json.loads(sample["json"])["label"])
    return out


def feature_decoder(image_size: int, with_mask: bool):
    return partial(decode_feature_sample, image_size=image_size, with_mask=with_mask)


def _batched(items: Iterator[Any], n: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch
