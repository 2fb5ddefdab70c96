"""`ltad evaluate`: evaluate a finished phase-2 checkpoint on the test shards (Ray Train workers)."""

from __future__ import annotations

import argparse

from ltad.commands.common import add_run_arguments


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="metrics, overlays, report and export of a trained run")
    add_run_arguments(p)
    p.add_argument("--checkpoint", help="phase-2 checkpoint dir (default: the run's latest final one)")
    return p


def run(args: argparse.Namespace) -> int:
    import ray

    from ltad.config import load_run_config
    from ltad.eval.report import text_table
    from ltad.training.cluster import connect
    from ltad.training.pipeline import run_pipeline, stage_checkpoint

    cfg = load_run_config(args.config, data=args.data, output=args.output, overrides=args.set)
    connect()
    try:
        # a checkpoint given by path is taken as given; the run's own one is checked against the config
        ckpt = {"phase2": stage_checkpoint(cfg, "phase2", args.checkpoint)} if args.checkpoint else None
        metrics = run_pipeline(cfg, stages=("evaluate",), checkpoints=ckpt)
    finally:
        ray.shutdown()
    print(text_table(metrics))
    return 0
