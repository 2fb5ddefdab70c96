"""Arguments shared by the commands and jobs that take a run config."""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--config / --data / --output / --set, shared by `ltad train`, `ltad evaluate`, `ltad encode` and the jobs."""
    parser.add_argument("--config", help="run config YAML (configs/demo.yaml, configs/mvtec.yaml, ...)")
    parser.add_argument("--data", help="prepared shard prefix holding manifest.json (overrides data.uri)")
    parser.add_argument("--output", help="local dir or s3:// prefix for metrics, report, overlays, model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
