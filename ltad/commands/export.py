"""`ltad export`: a trained run's model as a deployable folder, torch, ONNX or OpenVINO (encoder included).

--model is `<output>/model` of a run (a local folder or an s3:// prefix). `--format onnx` writes
model.onnx (uint8 images N x S x S x 3 -> anomaly maps, scores, predicted classes and the per-class
decision; dynamic batch axis), config.yaml and export.json, and checks the graph against torch with
onnxruntime; `--format openvino` writes that graph as OpenVINO IR (model.xml + model.bin) and checks
it with OpenVINO; `--format torch` writes a self-contained copy. All load with `ltad predict --model`
and `ltad.Predictor.load`; docs/SCORING.md shows the graph's inputs and outputs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ltad.io.uri import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a run's exported model: a directory or s3:// prefix")
    p.add_argument("--format", required=True, choices=("torch", "onnx", "openvino"), help="what to write")
    p.add_argument("--out", required=True, help="new (or empty) local directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out when it is an ltad export")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="write a deployable torch, ONNX or OpenVINO model", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ltad.commands.predict import download_model
    from ltad.inference.export import GRAPH_RECORD, check_out, export_model, read_meta
    from ltad.io.uri import is_s3

    model = resolve(args.model, "--model")
    out = resolve(args.out, "--out", local_only=True)
    check_out(Path(out), args.overwrite)  # before a download
    with tempfile.TemporaryDirectory(prefix="ltad-model-") as tmp:
        local = str(download_model(model, Path(tmp))) if is_s3(model) else model
        written = export_model(local, args.format, out, overwrite=args.overwrite)
    meta = read_meta(written)
    check = meta.get(GRAPH_RECORD.get(meta["format"], ""), {}).get("check")
    parity = (
        f"; {check['runtime']} vs torch max |map difference| {check['max_abs_map_diff']:.2g}" if check else ""
    )
    print(f"wrote {args.format} export {written}{parity}")
    return 0
