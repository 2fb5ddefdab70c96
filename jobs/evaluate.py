"""Ray job: evaluate a finished phase-2 checkpoint (metrics.json, report, overlays, exported model).

    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/demo.yaml \
        --data s3://bucket/prefix --output s3://bucket/runs/eval [--checkpoint s3://.../step-0000600-final]

Without --checkpoint the latest final phase-2 checkpoint of run.name under run.storage_path is used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.commands.common import add_run_arguments  # noqa: E402
from ltad.config import load_run_config  # noqa: E402
from ltad.errors import UserError  # noqa: E402
from ltad.training.pipeline import run_pipeline, stage_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/evaluate.py", description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--checkpoint", help="phase-2 checkpoint dir (default: the run's latest final one)")
    args = parser.parse_args(argv)
    try:
        from ltad.eval.report import text_table
        from ltad.training.cluster import connect

        cfg = load_run_config(args.config, data=args.data, output=args.output, overrides=args.set)
        connect()
        # a checkpoint given by path is taken as given; the run's own one is checked against the config
        given = {"phase2": stage_checkpoint(cfg, "phase2", args.checkpoint)} if args.checkpoint else None
        metrics = run_pipeline(cfg, stages=("evaluate",), checkpoints=given)
        print(text_table(metrics), flush=True)
        return 0
    except UserError as exc:
        print(f"jobs/evaluate.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
