"""`ltad inspect URI`: stream every shard sample, print per-split counts as JSON, exit 1 on a mismatch."""

from __future__ import annotations

import argparse
import json

from ltad.data.inspect import inspect


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="check prepared shards against their manifest (JSON)")
    p.add_argument("uri", help="shard prefix holding manifest.json: s3://bucket/prefix or a local directory")
    return p


def run(args: argparse.Namespace) -> int:
    report = inspect(args.uri)
    print(json.dumps(report, indent=2))
    return 0 if report["matches_manifest"] else 1
