"""Ray job: phase 1, phase 2 and evaluation of LTAD on Ray Train + DeepSpeed.

    ray job submit --working-dir . -- python jobs/train.py --config configs/demo.yaml \
        --data s3://bucket/prefix --output s3://bucket/runs/demo [--set phase2.steps=100 ...]

`--data` is a prepared shard prefix (holding manifest.json); `--output` a local directory or S3 prefix
that receives metrics.json, report.md, overlays/ and the exported model/. Rerunning the same job
(same run.name and run.storage_path) resumes unfinished phases from their latest checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.commands.common import add_run_arguments  # noqa: E402
from ltad.config import load_run_config  # noqa: E402
from ltad.errors import UserError  # noqa: E402
from ltad.training.pipeline import run_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/train.py", description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--stages", default="phase1,phase2,evaluate", help="comma-separated subset to run")
    args = parser.parse_args(argv)
    try:
        from ltad.eval.report import text_table
        from ltad.training.cluster import connect

        cfg = load_run_config(args.config, data=args.data, output=args.output, overrides=args.set)
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        unknown = sorted(set(stages) - {"phase1", "phase2", "evaluate"})
        if unknown:
            raise UserError(f"--stages '{unknown[0]}' is unknown (expected phase1, phase2, evaluate)")
        connect()
        metrics = run_pipeline(cfg, stages=stages)
        if metrics:
            print(text_table(metrics), flush=True)
        return 0
    except UserError as exc:
        print(f"jobs/train.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
