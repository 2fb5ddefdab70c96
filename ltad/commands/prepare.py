"""`ltad prepare`: dataset + split -> WebDataset shards and manifest.json at a local dir or s3:// prefix."""

from __future__ import annotations

import argparse
import json

from ltad.data.datasets import DATASETS
from ltad.data.prepare import prepare
from ltad.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare", help="write train/test shards and a manifest to s3:// or a directory"
    )
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--split", required=True, help="split file from `ltad split` (or a published split)")
    p.add_argument("--out", required=True, help="output prefix: s3://bucket/prefix or a local directory")
    p.add_argument("--shard-size-mb", default="256", help="roll over to a new shard at this size (MB)")
    p.add_argument("--test-shard-samples", default="64", help="samples per test shard (spreads evaluation)")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        size, per_test = float(args.shard_size_mb), int(args.test_shard_samples)
    except ValueError:
        raise ConfigError(
            f"--shard-size-mb must be a number and --test-shard-samples an int, got "
            f"{args.shard_size_mb!r} and {args.test_shard_samples!r}"
        ) from None
    manifest = prepare(args.dataset, args.root, args.split, args.out, size, per_test)
    summary = {
        s: {"shards": len(manifest.shards[s]), "samples": manifest.samples(s)} for s in ("train", "test")
    }
    print(json.dumps({"out": args.out, **summary}))
    return 0
