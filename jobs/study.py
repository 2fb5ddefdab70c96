"""Quality study: LTAD vs its ablations and a kNN baseline (= `ltad study`).

python jobs/study.py --config configs/study.yaml --out runs/study         # the full study (~1 h, 2 CPUs)
python jobs/study.py --config configs/study-smoke.yaml --out runs/smoke  # the CI smoke (~2 min)
The flags, defaults and errors are those of `ltad study` (ltad/commands/study.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ltad.cli import job_main, job_parser  # noqa: E402

PROG = "jobs/study.py"


def build_parser() -> argparse.ArgumentParser:
    return job_parser("study", PROG)


def main(argv: list[str] | None = None) -> int:
    return job_main("study", argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
