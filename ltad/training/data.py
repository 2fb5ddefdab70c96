"""Which stream a phase reads: cached features when a complete cache exists, images otherwise.

Both come from the data plane's streams (resampled training, exactly-once evaluation); only the
prefix and the decoder differ. Training batches are endless: one DataLoader per phase whose
persistent workers run the resampled stream epoch after epoch, so a phase runs its step count
whatever the epoch length.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from ltad.config import LTADConfig
from ltad.data.manifest import Manifest, ShardEntry, read_manifest
from ltad.data.streams import (
    ExactlyOnceStream,
    ResampledStream,
    class_weights,
    decode_image_sample,
    endless_batches,
    eval_stream,
    make_loader,
    train_stream,
)
from ltad.training.feature_cache import feature_decoder, find_cache


def feature_source(cfg: LTADConfig, data_uri: str, manifest: Manifest, *, allow: bool = True) -> str | None:
    """The feature cache prefix to read, or None to encode images online."""
    if not (allow and cfg.data.use_feature_cache):
        return None
    return find_cache(data_uri, cfg.model.encoder, manifest, cfg.data.cache_uri)


def _by_class(manifest: Manifest) -> dict[str, list[ShardEntry]]:
    by_class: dict[str, list[ShardEntry]] = {c: [] for c in manifest.classes}
    for entry in manifest.shards["train"]:
        for cls in entry.per_class:
            by_class[cls].append(entry)
    return by_class


def training_batches(
    cfg: LTADConfig,
    data_uri: str,
    manifest: Manifest,
    cache: str | None,
    *,
    seed: int,
    rank: int,
    world_size: int,
    start_step: int,
    epoch_steps: int = 100,
    batch_size: int | None = None,
    class_balance: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Endless training batches (images or cached features) for this rank, fresh after a resume.

    `batch_size` (default `data.batch_size`) is the real samples per step: phase 2 reads fewer, as its
    synthetic samples fill the rest of the step; every rank still runs `epoch_steps` steps an epoch.
    `class_balance` (default `data.class_balance`, phase 2's) sets the class weights; phase 1 passes its own.
    """
    bs = batch_size or cfg.data.batch_size
    balance = cfg.data.class_balance if class_balance is None else class_balance
    size = cfg.model.encoder.image_size
    common = dict(
        epoch_samples=bs * world_size * epoch_steps,
        seed=seed,
        rank=rank,
        world_size=world_size,
        epoch=start_step // epoch_steps,
        max_bad_samples=cfg.data.max_bad_samples,
        max_open_sources=cfg.data.max_open_sources,
        read_ahead=cfg.data.read_ahead,
    )
    if cache is None:
        stream = train_stream(data_uri, manifest, image_size=size, class_balance=balance, **common)
    else:
        fman = read_manifest(cache)
        stream = ResampledStream(
            cache,
            _by_class(fman),
            class_weights(fman.counts["train"], balance),
            decode=feature_decoder(size, with_mask=False),
            sample_index=fman.sample_index,
            **common,
        )
    # A resumed run trains on exactly the batches the uninterrupted one would: the same epoch, the
    # batches before the checkpoint read again but skipped. One loader for the whole phase: its
    # workers persist across epochs (the stream moves from epoch to epoch inside them).
    skip = start_step % epoch_steps
    for i, batch in enumerate(endless_batches(stream, bs, cfg.data.loader_workers)):
        if i >= skip:
            yield batch


def _with_shard(sample: dict[str, Any], decode) -> dict[str, Any]:
    return {**decode(sample), "shard": sample["__url__"]}


def evaluation_loader(
    cfg: LTADConfig, data_uri: str, manifest: Manifest, cache: str | None, *, rank: int, world_size: int
):
    """Every test sample once across ranks; samples also name their image shard (for overlays)."""
    size = cfg.model.encoder.image_size
    if cache is None:
        base = eval_stream(data_uri, manifest, image_size=size, rank=rank, world_size=world_size)
        decode = partial(_with_shard, decode=partial(decode_image_sample, image_size=size, with_mask=True))
        stream = ExactlyOnceStream(data_uri, base.shards, rank, world_size, decode)
    else:
        shards = read_manifest(cache).shards["test"]
        decode = partial(_with_shard, decode=feature_decoder(size, with_mask=True))
        stream = ExactlyOnceStream(cache, shards, rank, world_size, decode)
    return make_loader(stream, cfg.eval.batch_size, cfg.data.loader_workers)
