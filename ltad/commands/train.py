"""`ltad train`: phase 1, phase 2 and evaluation as Ray Train runs (local Ray, or RAY_ADDRESS)."""

from __future__ import annotations

import argparse

from ltad.commands.common import add_run_arguments, load_config
from ltad.errors import ConfigError

STAGES = ("phase1", "phase2", "evaluate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {', '.join(STAGES)} to run (default: all)")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train both phases and evaluate on Ray Train + DeepSpeed", description=__doc__
    )
    add_arguments(p)
    return p


def parse_stages(raw: str) -> tuple[str, ...]:
    """The --stages list, every name one of STAGES."""
    stages = tuple(s.strip() for s in raw.split(",") if s.strip())
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ConfigError(f"--stages '{unknown[0]}' is unknown (expected {', '.join(STAGES)})")
    if not stages:
        raise ConfigError(f"--stages is empty (expected some of {', '.join(STAGES)})")
    return stages


def run(args: argparse.Namespace) -> int:
    stages = parse_stages(args.stages)
    cfg = load_config(args)

    import ray

    from ltad.eval.report import text_table
    from ltad.training.cluster import connect
    from ltad.training.pipeline import run_pipeline

    started = connect()
    try:
        metrics = run_pipeline(cfg, stages=stages)
    finally:
        if started:  # a caller's own Ray (a notebook, a test) stays up
            ray.shutdown()
    if metrics:
        print(text_table(metrics), flush=True)
    return 0
