"""`ltad calibrate`: recalibrate an exported model's thresholds from normal images only (a new export).

--model is an exported model (a folder or s3:// prefix, torch, ONNX or OpenVINO); --normals are normal images
of the line (a folder, searched recursively, a glob, or an s3:// prefix). The model scores them,
each class predicted for them gets the threshold of ltad/eval/calibration.py at --target-fpr (with
its n and the false-positive rate it guarantees at 90 % confidence; classes with too few normals are
uncovered), and a copy of the model with the new thresholds in export.json is written to --out, a
new or empty folder; the model it came from is not changed. Exit 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ltad.errors import ConfigError
from ltad.io.uri import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="exported model (torch, ONNX or OpenVINO): a directory or s3:// prefix"
    )
    p.add_argument(
        "--normals",
        required=True,
        help="normal images: a directory (searched recursively), a glob or s3:// prefix",
    )
    p.add_argument(
        "--target-fpr",
        default="0.05",
        help="false-positive rate each class's threshold guarantees (90 %% conf.)",
    )
    p.add_argument(
        "--mix",
        help="deployment mix the pooled fallback is weighted to, CLASS=WEIGHT,... (default: uniform over classes)",
    )
    p.add_argument("--out", required=True, help="new (or empty) local directory for the recalibrated model")
    p.add_argument("--batch-size", default="8", help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "calibrate",
        help="new thresholds for an exported model from normal images (writes a new export)",
        description=__doc__.splitlines()[0],
    )
    add_arguments(p)
    return p


def target_fpr(value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = float("nan")
    if not 0 < rate <= 0.5:
        raise ConfigError(f"--target-fpr must be a number in (0, 0.5], got {value!r}")
    return rate


def download_images(uri: str, folder: Path) -> str:
    """Copy the image objects under an s3:// prefix into `folder` (relative paths kept); the folder."""
    from ltad.errors import DataError
    from ltad.inference.predict import SUFFIXES
    from ltad.io import storage

    prefix = uri.rstrip("/")
    objects = [o for o in storage.list(prefix) if Path(o).suffix.lower() in SUFFIXES]
    if not objects:
        raise DataError(f"--normals '{uri}' holds no image files ({', '.join(SUFFIXES)})")
    for obj in objects:
        target = folder / obj[len(prefix) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(obj))
    return str(folder)


def run(args: argparse.Namespace) -> int:
    from ltad.commands.predict import batch_size, download_model
    from ltad.eval.calibration import describe
    from ltad.inference.calibrate import check_out, parse_mix, recalibrate
    from ltad.inference.export import read_meta
    from ltad.inference.predict import find_images
    from ltad.inference.predictor import check_device
    from ltad.io.uri import is_s3

    rate = target_fpr(args.target_fpr)
    size = batch_size(args.batch_size)
    check_device(args.device)
    model = resolve(args.model, "--model")
    normals = resolve(args.normals, "--normals")
    out = resolve(args.out, "--out", local_only=True)
    check_out(Path(out))  # before any download
    if not is_s3(normals):
        find_images(normals, "--normals")
    with tempfile.TemporaryDirectory(prefix="ltad-calibrate-") as tmp:
        local_model = str(download_model(model, Path(tmp) / "model")) if is_s3(model) else model
        mix = parse_mix(args.mix, list(read_meta(local_model)["classes"]))
        local_normals = download_images(normals, Path(tmp) / "normals") if is_s3(normals) else normals
        meta, got = recalibrate(
            local_model,
            local_normals,
            out,
            rate,
            mix=mix,
            batch_size=size,
            device=args.device,
            source={"model": model, "normals": normals},
        )
    calibration = meta["calibration"]
    print(describe(calibration))
    skipped = f", {len(got.unreadable)} unreadable skipped" if got.unreadable else ""
    uncovered = calibration["uncovered"]
    print(
        f"calibrated on {len(got.scores)} normal images{skipped}; "
        + (f"{len(uncovered)} uncovered: {', '.join(uncovered)}; " if uncovered else "every class covered; ")
        + f"wrote {out} (a copy of {model} with the new thresholds; {model} is unchanged)"
    )
    return 0
