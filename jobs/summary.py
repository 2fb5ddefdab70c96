"""Summarize a sweep and single runs: results.csv, report.md and plots/*.png under --out.

python jobs/summary.py --sweep s3://bucket/sweeps/mvtec --run runs/baseline --out runs/summary
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.errors import UserError  # noqa: E402
from ltad.eval.summary import summarize  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/summary.py", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="append", default=[], metavar="URI",
                        help="sweep root holding sweep.json (local or s3://); repeatable")  # fmt: skip
    parser.add_argument("--run", action="append", default=[], metavar="URI",
                        help="run folder holding metrics.json (local or s3://); repeatable")  # fmt: skip
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (local or s3://)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.sweep and not args.run:
        parser.error("give at least one --sweep or --run")
    try:
        results = summarize(args.sweep, args.run, args.out)
    except UserError as exc:
        print(f"summary: error: {exc}", file=sys.stderr)
        return 2
    print(f"summary: {len(results)} runs -> {args.out}/report.md, results.csv, plots/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
