"""Print JSON: the ONNX export of a trained model against the torch model on real test images.

Exports --model (a run's `<output>/model`, e.g. runs/demo/model after `make demo`) with
`ltad export --format onnx`, synthesizes the demo dataset's test images (or takes --images), scores
every image with `ltad.Predictor` on both exports (CPU) and reports the largest absolute difference of
the anomaly maps and image scores, and whether classes and decisions agree.
Usage: .venv/bin/python benchmarks/onnx_parity.py --model runs/demo/model [--images DIR] [--work DIR]
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

from ltad import Predictor  # noqa: E402
from ltad.data.synth import synthesize  # noqa: E402
from ltad.inference.export import export_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a run's exported torch model folder")
    p.add_argument("--images", help="a folder of test images (default: the demo dataset's test set)")
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ltad-onnx-parity-") as tmp:
        work = Path(args.work or tmp)
        if args.images:
            images = sorted(q for q in Path(args.images).rglob("*.png"))
        else:
            root = synthesize(work / "synth")  # the demo's dataset (8 classes, 128 px, seed 0)
            images = sorted(root.glob("*/test/*/*.png"))
        started = time.monotonic()
        onnx_dir = export_model(args.model, "onnx", work / "onnx", overwrite=True)
        export_s = time.monotonic() - started
        results = {
            name: Predictor.load(folder, batch_size=args.batch_size).predict(images)
            for name, folder in (("torch", Path(args.model)), ("onnx", onnx_dir))
        }
    t, o = results["torch"], results["onnx"]
    print(
        json.dumps(
            {
                "model": args.model,
                "images": len(images),
                "max_abs_map_diff": max(float(np.abs(a - b).max()) for a, b in zip(t.maps, o.maps)),
                "max_abs_score_diff": float(np.abs(t.scores - o.scores).max()),
                "same_classes": t.pred_class == o.pred_class,
                "same_decisions": bool((t.decisions == o.decisions).all()),
                "export_seconds": round(export_s, 1),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
