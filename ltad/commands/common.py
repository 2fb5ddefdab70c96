"""Arguments shared by the commands and jobs that take a run config, and the one way they load it."""

from __future__ import annotations

import argparse

from ltad.data.uri import resolve_optional, resolve_run_locations


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--config / --data / --output / --set, shared by `ltad train`, `ltad evaluate`, `ltad encode` and the jobs."""
    parser.add_argument("--config", help="run config YAML (configs/demo.yaml, configs/mvtec.yaml, ...)")
    parser.add_argument("--data", help="prepared shard prefix holding manifest.json (overrides data.uri)")
    parser.add_argument("--output", help="local dir or s3:// prefix for metrics, report, overlays, model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")


def load_config(args: argparse.Namespace):
    """The run config of `args` (add_run_arguments), every location resolved (ltad/data/uri.py): a bad
    --data/--output names the flag, a bad key in the file or --set names the key."""
    from ltad.config import load_run_config

    data = resolve_optional(args.data, "--data")
    output = resolve_optional(getattr(args, "output", None), "--output")
    cfg = load_run_config(args.config, data=data, output=output, overrides=args.set)
    return resolve_run_locations(cfg)
