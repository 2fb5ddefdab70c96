"""Evaluation work on one Ray Train worker: score its share of the test set and of the held-out
normal images (threshold calibration) with their pseudo-anomalous copies (validation), read overlay
images.

Each worker scores its exactly-once share of the test shards (images encoded online, or cached
features) into a typed `ShareScores` for rank 0, in memory that does not grow with the test set:
- pixel metrics stream into one `StreamingPixelAccumulator` per class (no anomaly map is kept, no range
  is needed beforehand, no collective); rank 0 merges the workers' accumulators by addition (error
  bound in ltad/eval/metrics.py);
- overlay candidates are at most `eval.overlays_per_class` per (class, label) per worker, each with its
  map and, when the batch holds images, its image and mask at evaluation resolution; they stay on the
  worker, rank 0 gets their keys, and only the chosen ones' maps go to rank 0 (`send_chosen`);
- what grows is one small `ScoredSample` per test sample (scores.csv needs them all).
With cached features the batch holds no image: rank 0 then reads the image shards of the chosen
candidates only, and stops reading a shard once its candidates are found (`overlay_images`). Ranged
reads by a per-sample index would cut that to the chosen samples alone.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ltad.data.pseudo_defects import GENERATORS, pseudo_key
from ltad.data.shards import iterate_shard
from ltad.data.streams import ExactlyOnceStream, decode_image_sample, make_loader
from ltad.eval.metrics import StreamingPixelAccumulator
from ltad.eval.outputs import (
    CandidateRef,
    OverlayCandidate,
    ScoredSample,
    ShareScores,
    candidate_refs,
    chosen_candidates,
)
from ltad.io import storage
from ltad.training.data import evaluation_loader
from ltad.training.dist import broadcast_from_rank0, gather_to_rank0
from ltad.training.objectives import features

if TYPE_CHECKING:
    from ltad.training.worker import Worker


def score_share(w: Worker, model, cache: str | None) -> tuple[ShareScores, list[OverlayCandidate]]:
    """Score this worker's test samples in bounded memory (no collective): what goes to rank 0 (with
    the candidates' keys only), and the overlay candidates with their pixels, kept here until chosen."""
    size = w.cfg.model.encoder.image_size
    oracle = w.cfg.model.score.class_mode == "oracle"
    samples: list[ScoredSample] = []
    pixel = [
        StreamingPixelAccumulator(w.cfg.eval.pixel_bins, w.cfg.eval.aupro_fpr_limit)
        for _ in w.manifest.classes
    ]
    candidates: dict[tuple[int, int], list[OverlayCandidate]] = defaultdict(list)
    per_kind = w.cfg.eval.overlays_per_class
    loader = evaluation_loader(w.cfg, w.data_uri, w.manifest, cache, rank=w.rank, world_size=w.world_size)
    for batch in loader:
        tensors = {k: v.to(w.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        patches, glob, y = features(model, tensors)
        out = model.score(patches, glob, (size, size), class_id=y if oracle else None)
        amap = out.anomaly_map.float().cpu().numpy()
        gt = batch["gt_mask"][:, 0].numpy() > 0.5
        class_ids = batch["class_id"].numpy()
        for cid in np.unique(class_ids):
            rows = class_ids == cid
            pixel[int(cid)].update(amap[rows], gt[rows])
        for i, key in enumerate(batch["key"]):
            cid, label = int(class_ids[i]), int(batch["gt_label"][i])
            samples.append(ScoredSample(key, cid, label, float(out.pred_score[i]), int(out.pred_class[i])))
            if len(candidates[(cid, label)]) < per_kind:
                candidates[(cid, label)].append(_candidate(batch, i, label, amap[i], gt[i]))
    kept = [c for cs in candidates.values() for c in cs]
    return ShareScores(samples, pixel, candidate_refs(dict(candidates))), kept


def send_chosen(
    w: Worker, chosen: dict[int, list[CandidateRef]] | None, kept: list[OverlayCandidate]
) -> dict[int, list[OverlayCandidate]] | None:
    """Collective: rank 0's chosen overlays go to every rank, each rank sends back the chosen ones it
    holds (maps, images); on rank 0 the chosen overlays with their pixels, None elsewhere."""
    chosen = broadcast_from_rank0(chosen, w.world_size)
    assert chosen is not None
    wanted = {r.key for refs in chosen.values() for r in refs}
    pieces = gather_to_rank0([c for c in kept if c.key in wanted], w.rank, w.world_size)
    return None if pieces is None else chosen_candidates(chosen, pieces)


def _candidate(
    batch: dict[str, Any], i: int, label: int, amap: np.ndarray, gt: np.ndarray
) -> OverlayCandidate:
    """An overlay candidate with its map, and its image and mask when the batch holds images."""
    image = None
    if "image" in batch:
        hwc = batch["image"][i].permute(1, 2, 0).numpy()
        image = np.clip(np.rint(hwc * 255.0), 0, 255).astype(np.uint8)
    return OverlayCandidate(
        batch["key"][i],
        batch["shard"][i],
        label,
        amap.astype(np.float16),
        image=image,
        gt_mask=gt.copy() if image is not None else None,
    )


def score_heldout(w: Worker, model) -> tuple[list[ScoredSample], list[ScoredSample]]:
    """Score this worker's exactly-once share of the held-out normal shards, and a pseudo-anomalous
    copy of each (ltad/data/pseudo_defects.py, label 1): (normals, pseudo-anomalies); none: empty lists.

    Exactly as `ltad predict` scores an image: encoded online from its image shard (no feature
    cache) and with the predicted class (never the oracle one), so the calibrated thresholds apply
    to what predict computes, and the validation AUROC ranks what predict would score.
    """
    size = w.cfg.model.encoder.image_size
    normals: list[ScoredSample] = []
    pseudo: list[ScoredSample] = []
    for keys, cids, images in heldout_batches(w, w.rank, w.world_size):
        for imgs, out, label in ((images[0], normals, 0), (images[1], pseudo, 1)):
            scored = _score_images(model, imgs.to(w.device), size)
            for i, key in enumerate(keys):
                name = key if label == 0 else pseudo_key(key)
                out.append(
                    ScoredSample(name, cids[i], label, float(scored.pred_score[i]), int(scored.pred_class[i]))
                )
    return normals, pseudo


def heldout_batches(w: Worker, rank: int, world_size: int):
    """(keys, class ids, (normal images, their pseudo-anomalous copies)) per batch of reader `rank`'s
    exactly-once share of the held-out normal shards (nothing when the data has none)."""
    shards = w.manifest.val_shards()
    if not shards:
        return
    size = w.cfg.model.encoder.image_size
    decode = partial(decode_image_sample, image_size=size, with_mask=False)
    stream = ExactlyOnceStream(w.data_uri, shards, rank, world_size, decode)
    for batch in make_loader(stream, w.cfg.eval.batch_size, w.cfg.data.loader_workers):
        keys = list(batch["key"])
        pseudo = pseudo_batch(batch["image"], keys, w.cfg.eval.pseudo_defect)
        yield keys, [int(c) for c in batch["class_id"]], (batch["image"], pseudo)


def _score_images(model, images: torch.Tensor, size: int):
    enc = model.encoder.encode_images(images)
    return model.score(enc.patches.float(), enc.global_emb.float(), (size, size))


def pseudo_batch(images: torch.Tensor, keys: list[str], kind: str = "blend") -> torch.Tensor:
    """B x 3 x H x W images in [0, 1] -> their pseudo-anomalous copies (one synthetic defect each, made
    by the `eval.pseudo_defect` generator `kind`)."""
    make = GENERATORS[kind]
    hwc = images.permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([make(hwc[i], key)[0] for i, key in enumerate(keys)])
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32))


def overlay_images(w: Worker, candidates: list[OverlayCandidate]) -> dict[str, dict[str, Any]]:
    """Decoded image and mask of each candidate without a captured image, read from its image shard
    (rank 0): only the shards holding such candidates, each read up to its last wanted sample."""
    size = w.cfg.model.encoder.image_size
    wanted: dict[str, set[str]] = defaultdict(set)
    for c in candidates:
        if c.image is None:
            wanted[_image_shard(w.data_uri, c.shard)].add(c.key)
    counts = {storage.join(w.data_uri, e.name): e.samples for e in w.manifest.shards["test"]}
    found: dict[str, dict[str, Any]] = {}
    for url in sorted(wanted):
        keys = wanted[url]
        samples = iterate_shard(url, counts.get(url))
        for sample in samples:
            if sample["__key__"] in keys:
                found[sample["__key__"]] = decode_image_sample(sample, size, with_mask=True)
                if keys <= found.keys():
                    samples.close()  # the rest of the shard is never read
                    break
    return found


def _image_shard(data_uri: str, url: str) -> str:
    """The image shard of a sample read from an image or a feature shard (same relative name)."""
    split_name = "/".join(url.rsplit("/", 2)[-2:])
    return storage.join(data_uri, split_name)
