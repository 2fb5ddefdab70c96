"""Evaluation as a `TorchTrainer` train function: exactly-once test stream, results gathered to rank 0.

Each worker scores its share of the test shards (images encoded online, or cached features). Image
scores and labels are gathered to rank 0 sample by sample; pixel metrics use one binned accumulator
per class whose value range is the global min..max of all maps (an all-reduce), so the workers'
accumulators merge by addition (error bound in ltad/eval/metrics.py). Rank 0 checks that every test
sample was scored exactly once, then writes metrics.json, scores.csv, overlays, the report and the
exported model into a directory it reports as the run's checkpoint (the driver copies it to the
output, so workers never need to reach the output location).
"""

from __future__ import annotations

import csv
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ltad.data import storage
from ltad.data.shards import iterate_shard
from ltad.data.streams import decode_image_sample
from ltad.errors import DataError
from ltad.eval.aggregate import aggregate, to_json
from ltad.eval.metrics import PixelMetricAccumulator, f1_max_threshold
from ltad.eval.report import write_report
from ltad.eval.visualize import class_gallery, overlay_panel
from ltad.export import write_export
from ltad.training.checkpoint import load_model_state
from ltad.training.data import evaluation_loader, feature_source
from ltad.training.loop import all_reduce
from ltad.training.objectives import features
from ltad.training.phases import Worker, worker
from ltad.training.weights import build_model, load_trained

EVALUATED = "evaluated"
"""Key of every evaluation report (test samples scored): how a listener tells it from training reports."""


def score_shard_share(w: Worker, model, cache: str | None) -> dict[str, Any]:
    """Score this worker's test samples: per-sample rows, maps/masks by class, overlay candidates."""
    size = w.cfg.model.encoder.image_size
    oracle = w.cfg.model.score.class_mode == "oracle"
    rows: list[dict[str, Any]] = []
    maps: dict[int, list[np.ndarray]] = defaultdict(list)
    masks: dict[int, list[np.ndarray]] = defaultdict(list)
    candidates: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
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
            rows.append(
                {
                    "key": key,
                    "class_id": cid,
                    "gt_label": label,
                    "pred_score": float(out.pred_score[i]),
                    "pred_class": int(out.pred_class[i]),
                }
            )
            maps[cid].append(amap[i].astype(np.float16))
            masks[cid].append(gt[i])
            if len(candidates[(cid, label)]) < per_kind:
                candidates[(cid, label)].append(
                    {
                        "key": key,
                        "shard": batch["shard"][i],
                        "map": amap[i].astype(np.float16),
                        "label": label,
                    }
                )
    return {"rows": rows, "maps": maps, "masks": masks, "candidates": candidates}


def pixel_accumulators(share: dict[str, Any], num_classes: int, bins: int, fpr_limit: float) -> list:
    """Per-class accumulators over the global map range (collective: every rank must call it)."""
    all_maps = [m for ms in share["maps"].values() for m in ms]
    lo = min((float(m.min()) for m in all_maps), default=float("inf"))
    hi = max((float(m.max()) for m in all_maps), default=float("-inf"))
    bounds = torch.tensor([-lo, hi], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        bounds = all_reduce(bounds, op=dist.ReduceOp.MAX)
    lo, hi = -float(bounds[0]), float(bounds[1])
    if not hi > lo:
        hi = lo + 1.0
    accs = [PixelMetricAccumulator(bins, fpr_limit, value_range=(lo, hi)) for _ in range(num_classes)]
    for cid, ms in share["maps"].items():
        accs[cid].update(np.stack(ms).astype(np.float32), np.stack(share["masks"][cid]))
    return accs


def gather_to_rank0(obj: Any, rank: int, world_size: int) -> list[Any] | None:
    if world_size == 1:
        return [obj]
    out = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def evaluate(config: dict[str, Any]) -> None:
    """Train function of the evaluation run (see the module docstring)."""
    evaluate_state(worker(config), load_model_state(config["phase2_checkpoint"]), config)


def evaluate_state(
    w: Worker, state: dict[str, torch.Tensor], config: dict[str, Any], extra: dict[str, float] | None = None
) -> None:
    """Score the test set with the model in `state` (every rank); rank 0 reports the evaluation checkpoint
    with the summary metrics and `extra` (e.g. the last phase-2 metrics of a combined stage)."""
    import ray.train

    model = build_model(w.cfg, len(w.manifest.classes))
    load_trained(model, state)
    model.to(w.device).eval()
    cache = feature_source(w.cfg, w.data_uri, w.manifest)
    w.log(f"evaluate: scoring this worker's test shards ({cache or 'images encoded online'})")
    share = score_shard_share(w, model, cache)
    w.log(f"evaluate: scored {len(share['rows'])} samples on rank 0")
    accs = pixel_accumulators(
        share, len(w.manifest.classes), w.cfg.eval.pixel_bins, w.cfg.eval.aupro_fpr_limit
    )
    gathered = gather_to_rank0(
        {"rows": share["rows"], "accs": accs, "candidates": share["candidates"]}, w.rank, w.world_size
    )
    if w.rank != 0:
        ray.train.report({EVALUATED: len(share["rows"])})
        return
    with tempfile.TemporaryDirectory(prefix="ltad-eval-") as tmp:
        metrics = finish(
            w,
            model,
            gathered,
            Path(tmp),
            cache=cache,
            git_commit=config.get("git_commit", "unknown"),
            training=config.get("training", {}),
            identity=config.get("identity", {}),
        )
        w.log(f"evaluate: {metrics['n_evaluated']} test samples, each exactly once; outputs written")
        summary = {k: metrics[k] for k in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1max")}
        ray.train.report(
            {**(extra or {}), **summary, EVALUATED: metrics["n_evaluated"]},
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name="evaluation",
        )


def finish(
    w: Worker,
    model,
    gathered: list[dict],
    out: Path,
    *,
    cache: str | None,
    git_commit: str,
    training: dict | None = None,
    identity: dict | None = None,
) -> dict:
    """Rank 0: exactly-once check, metrics.json, scores.csv, overlays, report and export under `out`."""
    rows = [r for g in gathered for r in g["rows"]]
    check_exactly_once(rows, w.manifest)
    classes = list(w.manifest.classes)
    accs = gathered[0]["accs"]
    for g in gathered[1:]:
        for a, b in zip(accs, g["accs"]):
            a.merge(b)
    scores = np.array([r["pred_score"] for r in rows], dtype=np.float64)
    labels = np.array([r["gt_label"] for r in rows], dtype=np.int64)
    ids = np.array([r["class_id"] for r in rows], dtype=np.int64)
    pixel = {classes[c]: accs[c].compute() for c in range(len(classes))}
    metrics = aggregate(scores, labels, ids, classes, w.manifest.counts["train"], pixel)
    metrics["class_prediction_accuracy"] = float(np.mean([r["pred_class"] == r["class_id"] for r in rows]))
    metrics["pixel_error_bounds"] = {classes[c]: accs[c].error_bounds() for c in range(len(classes))}
    metrics["n_evaluated"] = len(rows)
    # corrupt training samples skipped per phase (None: that phase was not run by this pipeline call)
    metrics["training"] = dict(training or {})
    threshold = (
        f1_max_threshold(scores, labels) if labels.any() and not labels.all() else float(np.median(scores))
    )
    metrics["threshold"] = {"image_score": threshold, "rule": "F1-max over all test images"}
    metrics["provenance"] = {
        "git_commit": git_commit,
        "config": w.cfg.to_dict(),
        "split_sha256": w.manifest.split.sha256,
        "split": {
            "profile": w.manifest.split.profile,
            "ratio": w.manifest.split.ratio,
            "seed": w.manifest.split.seed,
        },
        "dataset": w.manifest.dataset,
        "data_uri": w.data_uri,
        "feature_cache": cache,
        "weights": model.encoder.weights_provenance(),
        "seed": w.cfg.run.seed,
        "world_size": w.world_size,
        # per stage: the fingerprint of its inputs and the commits that ran it (ltad/training/identity.py)
        "identity": dict(identity or {}),
    }
    (out / "metrics.json").write_text(to_json(metrics))
    _write_scores(out / "scores.csv", rows, classes, threshold)
    candidates: dict[tuple[int, int], list[dict]] = defaultdict(list)
    for g in gathered:
        for k, v in g["candidates"].items():
            candidates[k].extend(v)
    overlays = write_overlays(w, candidates, out / "overlays", threshold)
    write_export(out / "model", model, w.cfg, classes, scores, threshold, metrics["provenance"])
    write_report(out / "report.md", metrics, overlays)
    return metrics


def check_exactly_once(rows: list[dict], manifest) -> None:
    keys = [r["key"] for r in rows]
    expected = manifest.samples("test")
    if len(keys) != expected or len(set(keys)) != expected:
        raise DataError(
            f"evaluation scored {len(keys)} samples ({len(set(keys))} distinct) but the manifest lists {expected} "
            "test samples: a shard was read twice or not at all"
        )


def _write_scores(path: Path, rows: list[dict], classes: list[str], threshold: float) -> None:
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["key", "class", "gt_label", "pred_score", "pred_anomalous", "pred_class"])
        for r in sorted(rows, key=lambda r: r["key"]):
            anomalous = int(r["pred_score"] >= threshold)
            out.writerow(
                [
                    r["key"],
                    classes[r["class_id"]],
                    r["gt_label"],
                    f"{r['pred_score']:.6g}",
                    anomalous,
                    classes[r["pred_class"]],
                ]
            )


def write_overlays(w: Worker, candidates: dict, out: Path, threshold: float) -> dict[str, str]:
    """One gallery PNG per class: anomalous samples first, then normal ones, images read from their shards."""
    classes = list(w.manifest.classes)
    size = w.cfg.model.encoder.image_size
    n = w.cfg.eval.overlays_per_class
    chosen: dict[int, list[dict]] = {}
    for cid in range(len(classes)):
        bad = sorted(candidates.get((cid, 1), []), key=lambda c: c["key"])
        good = sorted(candidates.get((cid, 0), []), key=lambda c: c["key"])
        take = bad[: max(n - n // 2, n - len(good))]
        chosen[cid] = take + good[: n - len(take)]
    wanted = {c["key"] for cs in chosen.values() for c in cs}
    images = _fetch_images(
        w, {_image_shard(w, c["shard"]) for cs in chosen.values() for c in cs}, wanted, size
    )
    all_maps = [c["map"].astype(np.float32) for cs in chosen.values() for c in cs]
    value_range = (
        (min(float(m.min()) for m in all_maps), max(float(m.max()) for m in all_maps)) if all_maps else None
    )
    written = {}
    for cid, cs in chosen.items():
        if not cs:
            continue
        panels = [
            overlay_panel(
                images[c["key"]]["image"].permute(1, 2, 0).numpy(),
                c["map"].astype(np.float32),
                images[c["key"]]["gt_mask"][0].numpy(),
                threshold,
                value_range=value_range,
                title=f"{c['key']} (label {c['label']})",
            )
            for c in cs
        ]
        path = class_gallery(panels, out / f"{classes[cid]}.png", title=classes[cid])
        written[classes[cid]] = str(path.relative_to(out.parent))
    return written


def _image_shard(w: Worker, url: str) -> str:
    """The image shard of a sample read from an image or a feature shard (same relative name)."""
    split_name = "/".join(url.rsplit("/", 2)[-2:])
    return storage.join(w.data_uri, split_name)


def _fetch_images(w: Worker, shards: set[str], keys: set[str], size: int) -> dict[str, dict]:
    counts = {storage.join(w.data_uri, e.name): e.samples for e in w.manifest.shards["test"]}
    found = {}
    for url in sorted(shards):
        for sample in iterate_shard(url, counts.get(url)):
            if sample["__key__"] in keys:
                found[sample["__key__"]] = decode_image_sample(sample, size, with_mask=True)
    return found
