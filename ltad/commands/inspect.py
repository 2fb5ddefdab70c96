"""`ltad inspect URI`: stream every shard sample, print per-split counts as JSON, exit 1 on a mismatch."""

from __future__ import annotations

import argparse
import json

from ltad.io.uri import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="shard prefix holding manifest.json: s3://bucket/prefix or a local directory")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "inspect", help="check prepared shards against their manifest (JSON)", description=__doc__
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ltad.data.inspect import inspect

    report = inspect(resolve(args.uri, "URI"))
    print(json.dumps(report, indent=2))
    return 0 if report["matches_manifest"] else 1
