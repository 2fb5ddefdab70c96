"""`ltad predict`: score images with an exported model (no Ray, no DeepSpeed).

The model is a local folder or an s3:// prefix (`<output>/model` of a run: downloaded to a temporary
folder first); images and the output folder are local.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ltad.data.uri import resolve
from ltad.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="exported model: a directory or s3:// prefix (<output>/model)"
    )
    p.add_argument("--images", required=True, help="a directory (searched recursively) or a glob")
    p.add_argument("--out", required=True, help="output directory for maps/, overlays/ and scores.csv")
    p.add_argument("--batch-size", default="8", help="images per forward pass")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict", help="score new images with an exported model", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    return p


def download_model(uri: str, folder: Path) -> Path:
    """Copy the exported model at an s3:// prefix into `folder` (load_export then checks its files)."""
    from ltad.data import storage
    from ltad.errors import DataError

    prefix = uri.rstrip("/")
    objects = storage.list(prefix)
    names = {obj.rsplit("/", 1)[-1] for obj in objects}
    missing = [n for n in ("weights.pt", "config.yaml", "export.json") if n not in names]
    if missing:
        raise DataError(f"'{uri}' is not an exported ltad model: {', '.join(missing)} missing")
    for obj in objects:
        rel = obj[len(prefix) + 1 :]
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(obj))
    return folder


def run(args: argparse.Namespace) -> int:
    from ltad.data.uri import is_s3
    from ltad.predict import predict

    try:
        batch_size = int(args.batch_size)
    except ValueError:
        raise ConfigError(f"--batch-size must be an int >= 1, got {args.batch_size!r}") from None
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be an int >= 1, got {batch_size}")
    model = resolve(args.model, "--model")
    images = resolve(args.images, "--images", local_only=True)
    out = resolve(args.out, "--out", local_only=True)
    with tempfile.TemporaryDirectory(prefix="ltad-model-") as tmp:
        local_model = str(download_model(model, Path(tmp))) if is_s3(model) else model
        rows = predict(local_model, images, out, batch_size=batch_size, device=args.device)
    flagged = sum(r["anomalous"] for r in rows)
    print(f"scored {len(rows)} images, {flagged} anomalous; wrote {out}/scores.csv, maps/ and overlays/")
    return 0
