"""Ray job: evaluate a finished phase-2 checkpoint (= `ltad evaluate`).

    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/demo.yaml \
        --data s3://bucket/prefix --out s3://bucket/runs/eval [--checkpoint s3://.../step-0000600-final]

Without --checkpoint the latest final phase-2 checkpoint of run.name under run.storage_path is used.
The flags, defaults and errors are those of `ltad evaluate` (ltad/commands/evaluate.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.cli import job_main, job_parser  # noqa: E402

PROG = "jobs/evaluate.py"


def build_parser() -> argparse.ArgumentParser:
    return job_parser("evaluate", PROG)


def main(argv: list[str] | None = None) -> int:
    return job_main("evaluate", argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
