"""`ltad predict`: score images with an exported model (no Ray, no DeepSpeed)."""

from __future__ import annotations

import argparse

from ltad.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="score new images with an exported model")
    p.add_argument("--model", required=True, help="exported model directory (<output>/model)")
    p.add_argument("--images", required=True, help="a directory (searched recursively) or a glob")
    p.add_argument("--out", required=True, help="output directory for maps/, overlays/ and scores.csv")
    p.add_argument("--batch-size", default="8", help="images per forward pass")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return p


def run(args: argparse.Namespace) -> int:
    from ltad.predict import predict

    try:
        batch_size = int(args.batch_size)
    except ValueError:
        raise ConfigError(f"--batch-size must be an int >= 1, got {args.batch_size!r}") from None
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be an int >= 1, got {batch_size}")
    rows = predict(args.model, args.images, args.out, batch_size=batch_size, device=args.device)
    flagged = sum(r["anomalous"] for r in rows)
    print(f"scored {len(rows)} images, {flagged} anomalous; wrote {args.out}/scores.csv, maps/ and overlays/")
    return 0
