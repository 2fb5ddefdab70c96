"""The evaluation stage's fitting of `ltad_mb`'s per-class memory banks (`model.score.memory_bank`).

Runs before any test image is scored, on every rank of the evaluation (or sweep-trial) worker group:
- the classes with at least `min_images` training images are dealt to the ranks (class i to rank
  i mod world size), so the coreset selections run in parallel;
- each rank reads the first `max_images` training images of each of its classes in manifest order
  (cached features, else images encoded online), and only those samples' bytes: a class's shards
  until they hold them, by ranged reads of the sample index (ltad/data/class_prefix.py), so a head
  class 50x the others costs no more than they do; it fits a class's bank as soon as it has them
  all, so its raw patches are freed at once;
- rank 0 gathers the banks and broadcasts them: every rank scores with the same model, and the
  export holds them.
Memory on a rank: the patches of its classes still being read, at most max_images x grid^2 x D each
(fp16), plus the fitted banks. The training split only: held-out normals stay unseen, so they
score like new images when the thresholds are calibrated on them (as well as there are enough of
them: docs/RESULTS.md, "Through the job path").
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from ltad.baselines.class_banks import fit_class_bank
from ltad.data.class_prefix import ClassPrefixStream
from ltad.data.manifest import read_manifest
from ltad.data.streams import decode_image_sample, make_loader
from ltad.models.memory_banks import ClassBank
from ltad.training.dist import broadcast_from_rank0, gather_to_rank0
from ltad.training.feature_cache import feature_decoder
from ltad.training.objectives import features

if TYPE_CHECKING:
    from ltad.models.ltad import LTAD
    from ltad.training.worker import Worker


def bank_classes(counts: list[int], min_images: int) -> list[int]:
    """Class ids with enough training images for a bank."""
    return [cid for cid, n in enumerate(counts) if n >= min_images]


def fit_memory_banks(w: Worker, model: LTAD, cache: str | None) -> dict[str, Any] | None:
    """Fit the banks into `model.memory_banks` on every rank; what metrics.json records of them, or
    None when the variant is off (weight 0: the paper's score)."""
    mb = w.cfg.model.score.memory_bank
    if mb.weight == 0:
        return None
    tic = time.monotonic()
    eligible = bank_classes(w.class_counts, mb.min_images)
    mine = eligible[w.rank :: w.world_size]
    own = _fit_own(w, model, cache, mine) if mine else {}
    gathered = gather_to_rank0(own, w.rank, w.world_size)
    merged = {cid: b for part in gathered for cid, b in part.items()} if gathered is not None else None
    banks: dict[int, ClassBank] = broadcast_from_rank0(merged, w.world_size)
    model.memory_banks.set_banks(banks)
    classes = list(w.manifest.classes)
    info = {
        "weight": mb.weight,
        "min_images": mb.min_images,
        "max_images": mb.max_images,
        "coreset_ratio": mb.coreset_ratio,
        "classes": [classes[c] for c in sorted(banks)],
        "bank_rows": {classes[c]: int(b.rows.shape[0]) for c, b in sorted(banks.items())},
        "fit_s": round(time.monotonic() - tic, 1),
    }
    w.log(
        f"evaluate: memory banks (ltad_mb, weight {mb.weight}) for {len(banks)} of {len(classes)} classes "
        f"(>= {mb.min_images} training images) in {info['fit_s']} s"
    )
    return info


def _fit_own(w: Worker, model: LTAD, cache: str | None, mine: list[int]) -> dict[int, ClassBank]:
    """This rank's classes' banks, from their first max_images training images in reading order."""
    mb = w.cfg.model.score.memory_bank
    classes = list(w.manifest.classes)
    size = w.cfg.model.encoder.image_size
    if cache is not None:
        uri, shards = cache, read_manifest(cache).shards["train"]
        decode = feature_decoder(size, with_mask=False)
    else:
        uri, shards = w.data_uri, w.manifest.shards["train"]
        decode = partial(decode_image_sample, image_size=size, with_mask=False)
    need = {cid: min(mb.max_images, w.class_counts[cid]) for cid in mine}
    pending: dict[int, list[torch.Tensor]] = {cid: [] for cid in mine}
    held: dict[int, int] = dict.fromkeys(mine, 0)
    banks: dict[int, ClassBank] = {}

    def fit(cid: int) -> None:
        patches = torch.cat(pending.pop(cid))
        banks[cid] = fit_class_bank(patches, mb.coreset_ratio, w.cfg.run.seed)

    # this rank reads its classes' first `need` samples alone (every DataLoader worker a part of them)
    stream = ClassPrefixStream(uri, shards, {classes[c]: n for c, n in need.items()}, decode)
    with torch.no_grad():
        for batch in make_loader(stream, w.cfg.eval.batch_size, w.cfg.data.loader_workers):
            tensors = {k: v.to(w.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
            patches, _, y = features(model, tensors)
            for cid in y.unique().tolist():
                if cid not in pending:
                    continue
                take = patches[y == cid][: need[cid] - held[cid]]
                pending[cid].append(take.half().cpu())
                held[cid] += len(take)
                if held[cid] >= need[cid]:
                    fit(cid)
            if not pending:
                break  # every class of this rank is fitted: the rest of the shards is never read
    for cid in list(pending):  # fewer images read than the manifest counts: fit what there is
        if held[cid] >= 2:
            fit(cid)
        else:
            pending.pop(cid)
            w.log(f"evaluate: class {classes[cid]} has {held[cid]} readable training images: no bank")
    return banks
