"""`ltad evaluate`: evaluate a finished phase-2 checkpoint on the test shards (Ray Train workers)."""

from __future__ import annotations

import argparse

from ltad.commands.common import add_run_arguments, load_config
from ltad.io.uri import resolve_optional


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--checkpoint", help="phase-2 checkpoint dir (default: the run's latest final one)")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="metrics, overlays, report and export of a trained run", description=__doc__
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    checkpoint = resolve_optional(args.checkpoint, "--checkpoint")

    import ray

    from ltad.eval.report import text_table
    from ltad.training.cluster import connect
    from ltad.training.pipeline import run_pipeline, stage_checkpoint

    started = connect()
    try:
        # a checkpoint given by path is taken as given; the run's own one is checked against the config
        given = {"phase2": stage_checkpoint(cfg, "phase2", checkpoint)} if checkpoint else None
        metrics = run_pipeline(cfg, stages=("evaluate",), checkpoints=given)
    finally:
        if started:  # a caller's own Ray (a notebook, a test) stays up
            ray.shutdown()
    print(text_table(metrics), flush=True)
    return 0
