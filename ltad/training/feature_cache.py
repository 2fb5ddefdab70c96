"""The feature cache: the frozen encoder runs once over the image shards and writes fp16 feature shards.

Feature shards sit beside the image shards at `{prefix}/features/{fingerprint}/{split}/...`, one
feature shard per image shard with the same name and the same samples in the same order, so they
reuse the data plane's shard writer, manifest (with its per-shard counts) and streams. The
fingerprint hashes the encoder config, the sha256 of its checkpoint file (local or s3://) and the image
shards' hashes: a different encoder, a replaced checkpoint or re-prepared shards get a new cache, never a
stale one. Samples: `key.feat.npy` (fp16 D x g x g), `key.glob.npy`
(fp16 E), `key.cls`, `key.json`, and `key.mask.png` for defective test samples.

Tolerance: fp16 storage rounds each value to 11 significant bits, so a cached feature differs from the
online fp32 one by at most 2^-11 of its magnitude (checked in tests/integration/test_training.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ltad.config import EncoderConfig, to_dict
from ltad.data import blobs, storage
from ltad.data.manifest import SPLITS, Manifest, ShardEntry, manifest_uri, read_manifest, write_manifest
from ltad.data.shards import ShardInfo, ShardWriter, iterate_shard
from ltad.data.streams import decode_image_sample
from ltad.errors import DataError, StorageError
from ltad.log import get_logger
from ltad.training.progress import Progress

FP16_RTOL = 2.0**-11
"""Relative rounding bound of the fp16 cache (documented tolerance of cached vs online features)."""
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
    """Content hash of a checkpoint file or s3:// object (config load makes existing paths absolute)."""
    if not (storage.is_s3(pretrained) or Path(pretrained).is_absolute()):
        return None
    try:
        return blobs.resolve(pretrained).sha256
    except StorageError as exc:
        raise StorageError(f"model.encoder.pretrained '{pretrained}': {exc}") from None


def cache_uri(data_uri: str, encoder: EncoderConfig, manifest: Manifest) -> str:
    return storage.join(data_uri, "features", fingerprint(encoder, manifest))


def find_cache(data_uri: str, encoder: EncoderConfig, manifest: Manifest) -> str | None:
    """The complete cache for this encoder and these shards (its manifest exists), or None."""
    uri = cache_uri(data_uri, encoder, manifest)
    return uri if storage.exists(manifest_uri(uri)) else None


def _npy(array: torch.Tensor) -> bytes:
    values = array.detach().cpu().to(torch.float16).numpy()
    if not np.isfinite(values).all():
        raise DataError("encoder features overflow fp16 (values beyond +-65504): the cache cannot hold them")
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=False)
    return buf.getvalue()


def _load_npy(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))


def _encode_batch(
    encoder, raw: list[dict[str, Any]], image_size: int
) -> list[tuple[str, dict[str, bytes], str]]:
    images = torch.stack([decode_image_sample(s, image_size, with_mask=False)["image"] for s in raw])
    enc = encoder.encode_images(images.to(encoder.mean.device))
    out = []
    for i, sample in enumerate(raw):
        files = {"feat.npy": _npy(enc.patches[i]), "glob.npy": _npy(enc.global_emb[i])}
        files.update({k: sample[k] for k in ("cls", "json", "mask.png") if k in sample})
        out.append((sample["__key__"], files, json.loads(sample["json"])["class_name"]))
    return out


def encode_shards(
    encoder,
    data_uri: str,
    manifest: Manifest,
    out_uri: str,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 16,
    log: Callable[[str], None] | None = None,
) -> list[tuple[str, ShardEntry]]:
    """Encode this rank's share of all train + test shards; returns (split, entry) of each written shard."""
    log = log or get_logger("encode").info
    work = [(split, e) for split in SPLITS for e in manifest.shards[split]][rank::world_size]
    written: list[tuple[str, ShardEntry]] = []
    progress = Progress(sum(e.samples for _, e in work))

    def on_done(path: Path, info: ShardInfo) -> None:
        storage.upload_file(path, storage.join(out_uri, info.name), metadata={"sha256": info.sha256})
        path.unlink()
        written.append(
            (
                info.name.split("/", 1)[0],
                ShardEntry(info.name, info.samples, info.bytes, info.sha256, info.per_class),
            )
        )

    with tempfile.TemporaryDirectory(prefix="ltad-encode-") as tmp:
        for split, entry in work:
            part, index = Path(entry.name).stem.rsplit("-", 1)
            writer = ShardWriter(tmp, split, part, on_done, max_bytes=1 << 62)
            writer.index = int(index)  # one feature shard per image shard, same name
            for raw in _batched(iterate_shard(storage.join(data_uri, entry.name), entry.samples), batch_size):
                for key, files, cls in _encode_batch(encoder, raw, encoder.cfg.image_size):
                    writer.write(key, files, cls)
            writer.close()
            log(f"{entry.name}: {entry.samples} samples; rank {rank}: {progress.advance(entry.samples)}")
    return written


def write_cache_manifest(
    out_uri: str,
    manifest: Manifest,
    written: list[tuple[str, ShardEntry]],
    encoder: EncoderConfig,
    provenance: dict,
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
        extra={"kind": "features", "encoder": to_dict(encoder), "weights": provenance},
    )
    write_manifest(out_uri, cache)
    return cache


def encode(encoder, data_uri: str, *, batch_size: int = 16, force: bool = False) -> str:
    """Single-process `ltad encode`: the cache URI (reused when complete unless `force`)."""
    manifest = read_manifest(data_uri)
    out_uri = cache_uri(data_uri, encoder.cfg, manifest)
    if not force and storage.exists(manifest_uri(out_uri)):
        return out_uri
    storage.delete(manifest_uri(out_uri))
    written = encode_shards(encoder, data_uri, manifest, out_uri, batch_size=batch_size)
    write_cache_manifest(out_uri, manifest, written, encoder.cfg, encoder.weights_provenance())
    return out_uri


def decode_feature_sample(sample: dict[str, Any], image_size: int, with_mask: bool) -> dict[str, Any]:
    """Feature shard sample -> `patches`, `global_emb` (fp16), `class_id`, `key` (+ `gt_mask`, `gt_label`)."""
    out: dict[str, Any] = {
        "patches": _load_npy(sample["feat.npy"]),
        "global_emb": _load_npy(sample["glob.npy"]),
        "class_id": int(sample["cls"]),
        "key": sample["__key__"],
    }
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
