"""Ray job: phase 1, phase 2 and evaluation of LTAD on Ray Train + DeepSpeed (= `ltad train`).

    ray job submit --working-dir . -- python jobs/train.py --config configs/demo.yaml \
        --data s3://bucket/prefix --out s3://bucket/runs/demo [--set phase2.steps=100 ...]

`--data` is a prepared shard prefix (holding manifest.json); `--out` a local directory or S3 prefix
that receives metrics.json, report.md, overlays/ and the exported model/. Rerunning the same job
(same run.name and run.storage_path) resumes unfinished phases from their latest checkpoints.
The flags, defaults and errors are those of `ltad train` (ltad/commands/train.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.cli import job_main, job_parser  # noqa: E402

PROG = "jobs/train.py"


def build_parser() -> argparse.ArgumentParser:
    return job_parser("train", PROG)


def main(argv: list[str] | None = None) -> int:
    return job_main("train", argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
