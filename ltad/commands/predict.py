"""`ltad predict`: score images with an exported model, torch, ONNX or OpenVINO (no Ray, no DeepSpeed).

The model is a local folder or an s3:// prefix (`<output>/model` of a run, or an `ltad export`
folder: downloaded to a temporary folder first); images and the output folder are local. Exit 0
when at least one image was scored, 1 when every image was unreadable (see errors.csv), 2 on bad
input.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

from ltad.errors import ConfigError
from ltad.io.uri import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="exported model (torch, ONNX or OpenVINO): a directory or s3:// prefix (<output>/model, "
        "ltad export --out)",
    )
    p.add_argument("--images", required=True, help="a directory (searched recursively) or a glob")
    p.add_argument(
        "--out", required=True, help="new output directory for maps/, overlays/, scores.csv and errors.csv"
    )
    p.add_argument("--batch-size", default="8", help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="score new images with an exported model", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    return p


def download_model(uri: str, folder: Path) -> Path:
    """Copy the exported model at an s3:// prefix into `folder` (read_meta then checks its files)."""
    from ltad.errors import DataError
    from ltad.io import storage

    prefix = uri.rstrip("/")
    objects = storage.list(prefix)
    names = {obj.rsplit("/", 1)[-1] for obj in objects}
    missing = [n for n in ("config.yaml", "export.json") if n not in names]
    if not {"weights.pt", "model.onnx", "model.xml"} & names:
        missing.insert(0, "weights.pt (or model.onnx, model.xml)")
    if missing:
        raise DataError(f"'{uri}' is not an exported ltad model: {', '.join(missing)} missing")
    for obj in objects:
        rel = obj[len(prefix) + 1 :]
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(obj))
    return folder


def batch_size(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--batch-size must be an int >= 1, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"--batch-size must be an int >= 1, got {n}")
    return n


def run(args: argparse.Namespace) -> int:
    from ltad.inference.predict import check_out, find_images, predict_folder
    from ltad.inference.predictor import Predictor, check_device
    from ltad.io.uri import is_s3

    size = batch_size(args.batch_size)
    check_device(args.device)
    model = resolve(args.model, "--model")
    images = resolve(args.images, "--images", local_only=True)
    out = resolve(args.out, "--out", local_only=True)
    find_images(images)
    check_out(Path(out))
    with tempfile.TemporaryDirectory(prefix="ltad-model-") as tmp:
        local_model = str(download_model(model, Path(tmp))) if is_s3(model) else model
        predictor = Predictor.load(local_model, device=args.device, batch_size=size)
    summary = predict_folder(predictor, images, out)
    total = summary.scored + summary.failed
    if summary.scored == 0:  # every image unreadable: one line, exit 1 (not a usage error)
        print(f"{args._prog}: error: {all_failed(out, total)}", file=sys.stderr)
        return 1
    failed = f", {summary.failed} unreadable (see {out}/errors.csv)" if summary.failed else ""
    print(
        f"scored {summary.scored} of {total} images in {summary.seconds:.1f} s, {summary.anomalous} "
        f"anomalous{failed}; wrote {out}/scores.csv, maps/ and overlays/"
    )
    return 0


def all_failed(out: str, total: int) -> str:
    with (Path(out) / "errors.csv").open() as f:
        first = next(csv.DictReader(f))
    return f"none of the {total} images could be read ({first['error']}); see {out}/errors.csv"
