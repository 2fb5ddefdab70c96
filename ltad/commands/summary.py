"""`ltad summary`: summarize sweeps and single runs: results.csv, report.md and plots/*.png under --out."""

from __future__ import annotations

import argparse

from ltad.errors import ConfigError
from ltad.io.uri import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", action="append", default=[], metavar="URI",
                   help="sweep root holding sweep.json (local or s3://); repeatable")  # fmt: skip
    p.add_argument("--run", action="append", default=[], metavar="URI",
                   help="run folder holding metrics.json (local or s3://); repeatable")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (local or s3://)")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "summary", help="tables, report and plots of sweeps and runs", description=__doc__
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ltad.eval.summary import choice_lines, evaluated, summarize

    if not args.sweep and not args.run:
        raise ConfigError("give at least one --sweep or --run")
    sweeps = [resolve(u, "--sweep") for u in args.sweep]
    runs = [resolve(u, "--run") for u in args.run]
    out = resolve(args.out, "--out")
    results = summarize(sweeps, runs, out)
    print(f"summary: {len(evaluated(results))} runs -> {out}/report.md, results.csv, plots/")
    print("\n".join(choice_lines(results)), flush=True)
    return 0
