"""`ltad study`: LTAD vs its ablations and a kNN baseline across imbalance levels and seeds.

Resumable: rerun the same command after an interruption. Writes rows.jsonl, report.md, summary.json
and plots/ under --out; `--report-only` rewrites the report from the rows already there.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ltad.commands.common import add_alias
from ltad.io.uri import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="spec", default="configs/study.yaml", metavar="YAML", help="study config")
    add_alias(p, "--spec", "--config", "spec")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (local)")
    p.add_argument("--work", metavar="DIR", help="dataset + feature cache folder (default: OUT/work)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from OUT's rows")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads (default: every core); 1 lets two studies of other groups share 2 cores",
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "study",
        help="the in-process quality study (ablations, kNN baseline)",
        description=__doc__.splitlines()[0],
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ltad.study.report import write_report
    from ltad.study.run import pin_spec, run_study
    from ltad.study.spec import load_spec

    spec = load_spec(resolve(args.spec, "--config", local_only=True))
    out = Path(resolve(args.out, "--out", local_only=True))
    if args.report_only:
        pin_spec(out, spec)
    else:
        work = Path(resolve(args.work, "--work", local_only=True)) if args.work else None
        run_study(spec, out, work, threads=args.threads)
    report = write_report(spec, out)
    print(f"study: {report}", flush=True)
    return 0
