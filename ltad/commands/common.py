"""Arguments shared by the commands and jobs that take a run config, and the one way they load it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ltad.io.uri import resolve_optional, resolve_run_locations

VOCABULARY = {
    "--out": "where a command writes",
    "--config": "the YAML it reads",
    "--set": "KEY=VALUE override",
}
"""One flag per concept across every command; older spellings are aliases that warn (`add_alias`)."""


class _Deprecated(argparse.Action):
    """An old spelling of a flag: stores into the new flag's dest and says once which flag to use."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated and will be removed; use {self.new}",
            file=sys.stderr,
        )
        if self.nargs == 0:
            setattr(namespace, self.dest, True)
        elif isinstance(getattr(namespace, self.dest, None), list):
            getattr(namespace, self.dest).append(values)
        else:
            setattr(namespace, self.dest, values)


def add_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    """Accept `old` as a hidden, warning spelling of `new` (same dest)."""
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, help=argparse.SUPPRESS)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """--config / --data / --out / --set, shared by `ltad train`, `ltad evaluate`, `ltad encode` and the jobs."""
    parser.add_argument("--config", help="run config YAML (configs/demo.yaml, configs/mvtec.yaml, ...)")
    parser.add_argument("--data", help="prepared shard prefix holding manifest.json (overrides data.uri)")
    parser.add_argument(
        "--out", dest="output", help="local dir or s3:// prefix for metrics, report, overlays, model"
    )
    add_alias(parser, "--output", "--out", "output")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")


def load_config(args: argparse.Namespace):
    """The run config of `args` (add_run_arguments), every location resolved (ltad/io/uri.py): a bad
    --data/--out names the flag, a bad key in the file or --set names the key."""
    from ltad.config import load_run_config

    data = resolve_optional(args.data, "--data")
    output = resolve_optional(getattr(args, "output", None), "--out")
    cfg = load_run_config(args.config, data=data, output=output, overrides=args.set)
    return resolve_run_locations(cfg)
