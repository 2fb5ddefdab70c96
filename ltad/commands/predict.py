"""`ltad predict`: score images with an exported model, torch, ONNX or OpenVINO, in one process or on Ray.

The model is a local folder or an s3:// prefix (`<output>/model` of a run, or an `ltad export`
folder). Without a cluster (no --workers, RAY_ADDRESS unset, or --workers 0) one local process
scores a local folder or glob into scores.csv and errors.csv (no Ray, no DeepSpeed). With --workers N
(N >= 1), or RAY_ADDRESS a cluster address (not the http:// job-submission URL), it is a Ray Data job (N scoring actors; GPU actors where the nodes
have GPUs): --images and --out may be s3://, the output is Parquet parts with a plan and a manifest,
and a rerun with the same --out resumes (docs/SCORING.md, 'Batch predict on a cluster'). Maps and
overlays only with --maps. Exit 0 when at least one image was scored, 1 when every image was
unreadable or the job stopped before the end (rerun to resume), 2 on bad input.
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
    p.add_argument(
        "--images",
        required=True,
        help="a directory (searched recursively) or a glob; on Ray also an s3:// prefix",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output directory (on Ray also s3://): scores.csv + errors.csv, on Ray plan.json, parts/, "
        "manifest.json; maps/ and overlays/ with --maps",
    )
    p.add_argument("--batch-size", default="8", help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (a local run; Ray actors choose)")
    p.add_argument(
        "--workers",
        default=None,
        help="scoring actors of a Ray Data job (on the cluster in RAY_ADDRESS, else a local Ray); "
        "0 = one local process; default: Ray when RAY_ADDRESS is a cluster address (not an http:// URL), else one local process",
    )
    p.add_argument(
        "--maps", action="store_true", help="also write maps/ and overlays/ (one PNG each per image)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="remove earlier predictions under --out first (else: resume)"
    )
    p.add_argument("--part-size", default="256", help="images per committed part of a Ray job")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="score new images with an exported model", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    return p


def download_model(uri: str, folder: Path) -> Path:
    """Copy the exported model at an s3:// prefix into `folder` (read_meta then checks its files)."""
    from ltad.inference.model_files import download_model as download

    return download(uri, folder)


def positive_int(flag: str, value: str, minimum: int = 1) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{flag} must be an int >= {minimum}, got {value!r}") from None
    if n < minimum:
        raise ConfigError(f"{flag} must be an int >= {minimum}, got {n}")
    return n


def batch_size(value: str) -> int:
    return positive_int("--batch-size", value)


def on_ray(workers: str | None) -> int | None:
    """Where to run: -1 = one local process (--workers 0, or no --workers and no cluster to join); N = a
    Ray job with N actors (--workers N); None = a Ray job sized to the cluster (RAY_ADDRESS a cluster
    address, no --workers). An http(s) RAY_ADDRESS (the job-submission URL) is not a cluster to join."""
    from ltad.training.cluster import cluster_address

    if workers is not None:
        n = positive_int("--workers", workers, minimum=0)
        return n if n else -1
    return None if cluster_address() else -1


def run(args: argparse.Namespace) -> int:
    size = batch_size(args.batch_size)
    part_size = positive_int("--part-size", args.part_size)
    workers = on_ray(args.workers)
    model = resolve(args.model, "--model")
    if workers == -1:
        return _run_local(args, model, size)
    images = resolve(args.images, "--images")
    out = resolve(args.out, "--out")
    return _run_ray(args, model, images, out, size, part_size, workers)


def _run_local(args: argparse.Namespace, model: str, size: int) -> int:
    from ltad.inference.predict import check_out, find_images, predict_folder
    from ltad.inference.predictor import Predictor, check_device
    from ltad.io.uri import is_s3

    check_device(args.device)
    for flag, value in (("--images", args.images), ("--out", args.out)):
        if is_s3(value):
            raise ConfigError(
                f"{flag} '{value}' is an S3 URI: that needs a Ray job, add --workers N (or set RAY_ADDRESS)"
            )
    images = resolve(args.images, "--images", local_only=True)
    out = resolve(args.out, "--out", local_only=True)
    find_images(images)
    if args.overwrite:
        from ltad.inference.batch import remove_outputs

        remove_outputs(out)
    check_out(Path(out))
    with tempfile.TemporaryDirectory(prefix="ltad-model-") as tmp:
        local_model = str(download_model(model, Path(tmp))) if is_s3(model) else model
        predictor = Predictor.load(local_model, device=args.device, batch_size=size)
    summary = predict_folder(predictor, images, out, maps=args.maps)
    total = summary.scored + summary.failed
    if summary.scored == 0:  # every image unreadable: one line, exit 1 (not a usage error)
        print(f"{args._prog}: error: {all_failed(out, total)}", file=sys.stderr)
        return 1
    failed = f", {summary.failed} unreadable (see {out}/errors.csv)" if summary.failed else ""
    drawn = ", maps/ and overlays/" if args.maps else ""
    print(
        f"scored {summary.scored} of {total} images in {summary.seconds:.1f} s, {summary.anomalous} "
        f"anomalous{failed}; wrote {out}/scores.csv{drawn}"
    )
    return 0


def _run_ray(
    args: argparse.Namespace,
    model: str,
    images: str,
    out: str,
    size: int,
    part_size: int,
    workers: int | None,
) -> int:
    import ray

    from ltad.inference import ray_predict
    from ltad.log import get_logger
    from ltad.training.cluster import connect
    from ltad.training.ray_map import check_reachable

    started = connect()
    try:
        check_reachable(
            ("--model", model),
            ("--images", images),
            ("--out", out),
            work="batch predict's Ray tasks",
            fix="give s3:// locations for --model, --images and --out (or run without --workers)",
        )
        try:
            manifest = ray_predict.run(
                images,
                model,
                out,
                workers=workers,
                batch_size=size,
                part_size=part_size,
                maps=args.maps,
                overwrite=args.overwrite,
                log=get_logger("ltad.predict").info,
            )
        except ray_predict.Interrupted as exc:
            print(f"{args._prog}: error: {exc}", file=sys.stderr)
            return 1
    finally:
        if started:
            ray.shutdown()
    total = manifest["scored"] + manifest["failed"]
    errors = f"{out}/parts/errors-*.parquet"
    if manifest["scored"] == 0:
        print(f"{args._prog}: error: none of the {total} images could be read; see {errors}", file=sys.stderr)
        return 1
    failed = f", {manifest['failed']} unreadable (see {errors})" if manifest["failed"] else ""
    print(
        f"scored {manifest['scored']} of {total} images in {manifest['seconds']:.1f} s on Ray, "
        f"{manifest['anomalous']} anomalous{failed}; wrote {out}/manifest.json and "
        f"{len(manifest['parts'])} parts"
    )
    return 0


def all_failed(out: str, total: int) -> str:
    with (Path(out) / "errors.csv").open() as f:
        first = next(csv.DictReader(f))
    return f"none of the {total} images could be read ({first['error']}); see {out}/errors.csv"
