"""Summarize a sweep and single runs: results.csv, report.md and plots/*.png (= `ltad summary`).

python jobs/summary.py --sweep s3://bucket/sweeps/mvtec --run runs/baseline --out runs/summary
The flags, defaults and errors are those of `ltad summary` (ltad/commands/summary.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.cli import job_main, job_parser  # noqa: E402

PROG = "jobs/summary.py"


def build_parser() -> argparse.ArgumentParser:
    return job_parser("summary", PROG)


def main(argv: list[str] | None = None) -> int:
    return job_main("summary", argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
