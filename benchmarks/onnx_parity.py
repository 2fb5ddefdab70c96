"""Print JSON: the ONNX and OpenVINO exports of a trained model against `ltad predict`'s torch model on real images.

Exports --model (a run's `<output>/model`, e.g. runs/demo/model after `make demo`) with `ltad export
--format onnx` and `--format openvino` (uint8 graphs that decide per class), synthesizes the demo
dataset's test images (or takes --images), scores every image with `ltad.Predictor` (what `ltad
predict` runs) on the torch export and on both graphs (CPU), and reports per graph the largest
absolute difference of the anomaly maps, raw and normalised scores, and whether classes and decisions
are the same. Exits 1 when a map or score differs by more than the exports' own tolerance (1e-4) or a
class or decision differs.
Usage: .venv/bin/python benchmarks/onnx_parity.py --model runs/demo/model [--images DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

from ltad import Predictor  # noqa: E402
from ltad.data.synth import synthesize  # noqa: E402
from ltad.inference.export import class_normalisation, export_model  # noqa: E402
from ltad.inference.graphs import PARITY_TOLERANCE  # noqa: E402

GRAPHS = ("onnx", "openvino")


def compare(t, g) -> dict:
    """A graph's Prediction against the torch one."""
    return {
        "max_abs_map_diff": max(float(np.abs(a - b).max()) for a, b in zip(t.maps, g.maps)),
        "max_abs_score_diff": float(np.abs(t.scores - g.scores).max()),
        "max_abs_normalised_score_diff": float(np.abs(t.scores_normalised - g.scores_normalised).max()),
        "same_classes": t.pred_class == g.pred_class,
        "same_decisions": bool((t.decisions == g.decisions).all()),
        "anomalous": int(g.decisions.sum()),
    }


def margin(meta: dict, t) -> float:
    """The smallest |torch score - its predicted class's threshold|: how close a decision came to flipping."""
    thresholds = [class_normalisation(meta, c)["threshold"] for c in t.pred_class]
    return float(np.abs(t.scores - np.array(thresholds)).min())


def missed(row: dict) -> list[str]:
    """The targets a graph's row misses, in words."""
    out = [
        f"{key} {row[key]:.3g} > {PARITY_TOLERANCE}"
        for key in ("max_abs_map_diff", "max_abs_score_diff", "max_abs_normalised_score_diff")
        if row[key] > PARITY_TOLERANCE
    ]
    return out + [key for key in ("same_classes", "same_decisions") if not row[key]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a run's exported torch model folder")
    p.add_argument("--images", help="a folder of test images (default: the demo dataset's test set)")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--batch-size", type=int, default=16)
    add_json_flag(p)
    args = p.parse_args(argv)
    meta = json.loads((Path(args.model) / "export.json").read_text())
    with tempfile.TemporaryDirectory(prefix="ltad-onnx-parity-") as tmp:
        work = Path(args.work or tmp)
        if args.images:
            images = sorted(q for q in Path(args.images).rglob("*.png"))
        else:
            root = synthesize(work / "synth")  # the demo's dataset (8 classes, 128 px, seed 0)
            images = sorted(root.glob("*/test/*/*.png"))
        folders, export_s = {"torch": Path(args.model)}, {}
        for fmt in GRAPHS:
            started = time.monotonic()
            folders[fmt] = export_model(args.model, fmt, work / fmt, overwrite=True)
            export_s[fmt] = round(time.monotonic() - started, 1)
        checks = {fmt: json.loads((folders[fmt] / "export.json").read_text())[fmt]["check"] for fmt in GRAPHS}
        results = {
            fmt: Predictor.load(folder, batch_size=args.batch_size).predict(images)
            for fmt, folder in folders.items()
        }
    rows = {
        fmt: {**compare(results["torch"], results[fmt]), "runtime": checks[fmt]["runtime"]} for fmt in GRAPHS
    }
    misses = {fmt: missed(row) for fmt, row in rows.items() if missed(row)}
    result = {
        "what": "ltad.Predictor (ltad predict) on the torch export vs the uint8 ONNX and OpenVINO graphs, CPU",
        "model": {
            "folder": args.model,
            "git_commit": meta.get("provenance", {}).get("git_commit"),
            "image_size": meta["image_size"],
            "classes": len(meta["classes"]),
            "calibrated": bool(meta.get("calibration")),
        },
        "images": len(images),
        "images_from": args.images
        or "the demo dataset's test set (ltad synth defaults: 8 classes, 128 px, seed 0)",
        "torch_anomalous": int(results["torch"].decisions.sum()),
        "min_abs_score_minus_threshold": margin(meta, results["torch"]),
        "tolerance": PARITY_TOLERANCE,
        "parity": rows,
        "export_seconds": export_s,
        "missed": misses,
    }
    emit(result, args.json, argv)
    for fmt, words in misses.items():
        print(f"onnx_parity: {fmt} missed: {'; '.join(words)}", file=sys.stderr)
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
