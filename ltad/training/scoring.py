"""Evaluation work on one Ray Train worker: score its share of the test set and of the held-out
normal images (threshold calibration), read overlay images.

Each worker scores its exactly-once share of the test shards (images encoded online, or cached
features) into a typed `ShareScores` for rank 0. Pixel metrics use one binned accumulator per class
whose value range is the global min..max of all maps (one all-reduce), so the workers' accumulators
merge by addition on rank 0 (error bound in ltad/eval/metrics.py).
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ltad.data import storage
from ltad.data.shards import iterate_shard
from ltad.data.streams import ExactlyOnceStream, decode_image_sample, make_loader
from ltad.eval.metrics import PixelMetricAccumulator
from ltad.eval.outputs import OverlayCandidate, ScoredSample, ShareScores
from ltad.training.data import evaluation_loader
from ltad.training.dist import global_range
from ltad.training.objectives import features

if TYPE_CHECKING:
    from ltad.training.stages import Worker


def score_share(w: Worker, model, cache: str | None) -> ShareScores:
    """Score this worker's test samples; pixel accumulators over the global map range (collective)."""
    size = w.cfg.model.encoder.image_size
    oracle = w.cfg.model.score.class_mode == "oracle"
    samples: list[ScoredSample] = []
    maps: dict[int, list[np.ndarray]] = defaultdict(list)
    masks: dict[int, list[np.ndarray]] = defaultdict(list)
    candidates: dict[tuple[int, int], list[OverlayCandidate]] = defaultdict(list)
    per_kind = w.cfg.eval.overlays_per_class
    loader = evaluation_loader(w.cfg, w.data_uri, w.manifest, cache, rank=w.rank, world_size=w.world_size)
    for batch in loader:
        tensors = {k: v.to(w.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        patches, glob, y = features(model, tensors)
        out = model.score(patches, glob, (size, size), class_id=y if oracle else None)
        amap = out.anomaly_map.float().cpu().numpy()
        gt = batch["gt_mask"][:, 0].numpy() > 0.5
        for i, key in enumerate(batch["key"]):
            cid, label = int(batch["class_id"][i]), int(batch["gt_label"][i])
            samples.append(ScoredSample(key, cid, label, float(out.pred_score[i]), int(out.pred_class[i])))
            maps[cid].append(amap[i].astype(np.float16))
            masks[cid].append(gt[i])
            if len(candidates[(cid, label)]) < per_kind:
                candidates[(cid, label)].append(
                    OverlayCandidate(key, batch["shard"][i], label, amap[i].astype(np.float16))
                )
    pixel = pixel_accumulators(
        maps, masks, len(w.manifest.classes), w.cfg.eval.pixel_bins, w.cfg.eval.aupro_fpr_limit
    )
    return ShareScores(samples, pixel, dict(candidates))


def score_heldout(w: Worker, model) -> list[ScoredSample]:
    """Score this worker's exactly-once share of the held-out normal shards (none: an empty list).

    Exactly as `ltad predict` scores an image: encoded online from its image shard (no feature
    cache) and with the predicted class (never the oracle one), so the calibrated thresholds apply
    to what predict computes.
    """
    shards = w.manifest.val_shards()
    if not shards:
        return []
    size = w.cfg.model.encoder.image_size
    decode = partial(decode_image_sample, image_size=size, with_mask=False)
    stream = ExactlyOnceStream(w.data_uri, shards, w.rank, w.world_size, decode)
    samples: list[ScoredSample] = []
    for batch in make_loader(stream, w.cfg.eval.batch_size, w.cfg.data.loader_workers):
        enc = model.encoder.encode_images(batch["image"].to(w.device))
        out = model.score(enc.patches.float(), enc.global_emb.float(), (size, size))
        for i, key in enumerate(batch["key"]):
            cid = int(batch["class_id"][i])
            samples.append(ScoredSample(key, cid, 0, float(out.pred_score[i]), int(out.pred_class[i])))
    return samples


def pixel_accumulators(
    maps: dict[int, list[np.ndarray]],
    masks: dict[int, list[np.ndarray]],
    num_classes: int,
    bins: int,
    fpr_limit: float,
) -> list[PixelMetricAccumulator]:
    """Per-class accumulators over the global map range (collective: every rank must call it)."""
    all_maps = [m for ms in maps.values() for m in ms]
    lo = min((float(m.min()) for m in all_maps), default=float("inf"))
    hi = max((float(m.max()) for m in all_maps), default=float("-inf"))
    lo, hi = global_range(lo, hi)
    if not hi > lo:
        hi = lo + 1.0
    accs = [PixelMetricAccumulator(bins, fpr_limit, value_range=(lo, hi)) for _ in range(num_classes)]
    for cid, ms in maps.items():
        accs[cid].update(np.stack(ms).astype(np.float32), np.stack(masks[cid]))
    return accs


def overlay_images(w: Worker, candidates: list[OverlayCandidate]) -> dict[str, dict[str, Any]]:
    """Decoded image and mask of each candidate, read from its image shard (rank 0)."""
    size = w.cfg.model.encoder.image_size
    keys = {c.key for c in candidates}
    counts = {storage.join(w.data_uri, e.name): e.samples for e in w.manifest.shards["test"]}
    found = {}
    for url in sorted({_image_shard(w.data_uri, c.shard) for c in candidates}):
        for sample in iterate_shard(url, counts.get(url)):
            if sample["__key__"] in keys:
                found[sample["__key__"]] = decode_image_sample(sample, size, with_mask=True)
    return found


def _image_shard(data_uri: str, url: str) -> str:
    """The image shard of a sample read from an image or a feature shard (same relative name)."""
    split_name = "/".join(url.rsplit("/", 2)[-2:])
    return storage.join(data_uri, split_name)
