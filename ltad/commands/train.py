"""`ltad train`: phase 1, phase 2 and evaluation as Ray Train runs (local Ray, or RAY_ADDRESS)."""

from __future__ import annotations

import argparse

from ltad.commands.common import add_run_arguments

STAGES = ("phase1", "phase2", "evaluate")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train both phases and evaluate on Ray Train + DeepSpeed")
    add_run_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    import ray

    from ltad.config import load_run_config
    from ltad.eval.report import text_table
    from ltad.training.cluster import connect
    from ltad.training.pipeline import run_pipeline

    cfg = load_run_config(args.config, data=args.data, output=args.output, overrides=args.set)
    connect()
    try:
        metrics = run_pipeline(cfg)
    finally:
        ray.shutdown()
    print(text_table(metrics))
    return 0
