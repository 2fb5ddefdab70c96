"""The last step of scripts/job-path-gap: the kNN row on the job's own feature cache, and the JSON.

The kNN is PatchCore with one bank for all classes (coreset 0.1, as the study's `knn` row), fitted on
the cached features of the run's training split (held-out normals excluded, as for LTAD) and scored on
the cached test features, its maps and image scores made as `LTAD.score` makes them; image AUROC is
the per-class mean of `ltad.eval.aggregate`, as in metrics.json. Both LTAD rows are the jobs'
metrics.json; the fresh-normal rates are `ltad predict`'s decisions (scores.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from ltad.baselines import PatchCore
from ltad.config import load_run_config
from ltad.data.manifest import read_manifest
from ltad.data.streams import ExactlyOnceStream, make_loader
from ltad.eval.aggregate import aggregate, to_json
from ltad.training.feature_cache import feature_decoder, find_cache


def knn_row(data: str, seed: int) -> dict:
    cfg = load_run_config("configs/demo.yaml", data=data)
    manifest = read_manifest(data)
    cache = find_cache(data, cfg.model.encoder, manifest, cfg.data.cache_uri)
    if cache is None:
        raise SystemExit(f"no complete feature cache for {data}: run the training job first")
    fman, size = read_manifest(cache), cfg.model.encoder.image_size

    def batches(split: str, with_mask: bool):
        stream = ExactlyOnceStream(
            cache, fman.shards[split], 0, 1, feature_decoder(size, with_mask=with_mask)
        )
        return make_loader(stream, 64, 0)

    tic = time.monotonic()
    bank = PatchCore(coreset_ratio=0.1, seed=seed).fit(b["patches"].float() for b in batches("train", False))
    scores, labels, ids = [], [], []
    for b in batches("test", True):
        _, s = bank.score(b["patches"].float(), size)
        scores.append(s.numpy())
        labels.append(b["gt_label"].numpy())
        ids.append(b["class_id"].numpy())
    classes = list(manifest.classes)
    report = aggregate(
        np.concatenate(scores),
        np.concatenate(labels),
        np.concatenate(ids),
        classes,
        manifest.counts["train"],
        {},
    )
    return {
        "image_AUROC": report["image_AUROC"],
        "groups": {g: v["image_AUROC"] for g, v in report["groups"].items()},
        "per_class_image_AUROC": {c: v["image_AUROC"] for c, v in report["per_class"].items()},
        "bank_size": bank.bank_size,
        "train_images": manifest.samples("train"),
        "seconds": round(time.monotonic() - tic, 1),
    }


def ltad_row(run: Path, fresh: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    rows = list(csv.DictReader((fresh / "scores.csv").open()))
    cal = metrics["calibration"]
    a, n_cal = cal["target_fpr"], cal["n_heldout"]
    flagged = sum(int(r["pred_anomalous"]) for r in rows)
    return {
        "image_AUROC": metrics["image_AUROC"],
        "pixel_AUROC": metrics["pixel_AUROC"],
        "val_image_AUROC": metrics["val_image_AUROC"],
        "groups": {g: v["image_AUROC"] for g, v in metrics["groups"].items()},
        "per_class_image_AUROC": {c: v["image_AUROC"] for c, v in metrics["per_class"].items()},
        "class_prediction_accuracy": metrics["class_prediction_accuracy"],
        "memory_banks": metrics.get("memory_banks"),
        "test_fpr_at_calibrated_thresholds": cal["test"]["fpr"],
        "test_tpr_at_calibrated_thresholds": cal["test"]["tpr"],
        "fresh_normals": {
            "n": len(rows),
            "flagged": flagged,
            "rate": flagged / len(rows),
            "target_fpr": a,
            "tolerance_3se": 3 * math.sqrt(a * (1 - a) * (1 / len(rows) + 1 / n_cal)),
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--data", "--runs", "--fresh", "--commit", "--out"):
        p.add_argument(flag, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--ratio", type=float, required=True)
    p.add_argument("--wall-s", type=int, required=True)
    args = p.parse_args()
    runs, fresh = Path(args.runs), Path(args.fresh)
    result = {
        "command": f"GAP_SEED={args.seed} GAP_RATIO={args.ratio:g} scripts/job-path-gap",
        "commit": args.commit,
        "measured": time.strftime("%Y-%m-%d") + " on the 2-core development machine, nothing else running",
        "data": f"synth generator seed {args.seed} (8 classes, 128 px, 60 train / 24 test per class), split exp "
        f"ratio {args.ratio:g} seed {args.seed} with held-out normals",
        "config": "configs/demo.yaml (2 workers, ZeRO-2); ltad_mb: the same phase-2 checkpoint evaluated with "
        "model.score.memory_bank.weight=2",
        "ltad": ltad_row(runs / "ltad", fresh / "fresh-ltad"),
        "ltad_mb": ltad_row(runs / "ltad-mb", fresh / "fresh-ltad-mb"),
        "knn": knn_row(args.data, seed=0),
        "wall_s": args.wall_s,
    }
    Path(args.out).write_text(to_json(result) + "\n")
    for name in ("ltad", "ltad_mb", "knn"):
        r = result[name]
        extra = (
            f", fresh normals flagged {100 * r['fresh_normals']['rate']:.1f} %"
            if "fresh_normals" in r
            else ""
        )
        print(f"{name:8s} image AUROC {100 * r['image_AUROC']:.1f} %{extra}")


if __name__ == "__main__":
    main()
