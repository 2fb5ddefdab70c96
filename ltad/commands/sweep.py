"""`ltad sweep`: Ray Tune sweep of prompt length x synthesis ratio across imbalance levels.

The search space (tune/*.yaml) names the levels (one prepared shard set each), the values to sweep,
the base run config, ASHA and the sweep root. Rerunning the same command resumes the sweep (Tune's
`Tuner.restore`): finished trials are kept; rerunning it with other inputs (another `--set`, other
data) under the same root is refused before anything runs. Results: `<root>/sweep.json` and `<root>/trials/<trial>/`,
read by `ltad summary --sweep <root>`. `tune/sweep.py` is the same command as a Ray job entry point.
"""

from __future__ import annotations

import argparse

from ltad.commands.common import add_alias
from ltad.errors import UserError
from ltad.io.uri import resolve, resolve_optional


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", dest="space", help="search space YAML (tune/demo.yaml, tune/mvtec.yaml)")
    add_alias(p, "--space", "--config", "space")
    p.add_argument(
        "--out", dest="root", help="sweep root: s3://bucket/prefix or a directory (overrides `root`)"
    )
    add_alias(p, "--root", "--out", "root")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the base run config, e.g. phase2.steps=100")  # fmt: skip
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="at most N trials at once (default: as many as the cluster places, as it grows)")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="require an interrupted sweep to resume (resuming is automatic anyway)")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "sweep", help="Ray Tune sweep over imbalance levels (resumable)", description=__doc__.splitlines()[0]
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ltad.io import storage
    from ltad.sweep.driver import run_sweep
    from ltad.sweep.space import load_space
    from ltad.training.cluster import connect

    if not args.space:
        raise UserError("the search space is missing: pass --config tune/demo.yaml (or another space YAML)")
    space_file = resolve(args.space, "--config", local_only=True)
    space = load_space(
        space_file,
        overrides=args.set,
        root=resolve_optional(args.root, "--out"),
        max_concurrent=args.max_concurrent,
    )
    if args.resume and not storage.list(storage.join(space.root, "tune")):
        raise UserError(f"--resume: no sweep to resume under {space.root}/tune (start it without --resume)")
    connect()
    sweep = run_sweep(space)
    counts: dict[str, int] = {}
    for trial in sweep["trials"]:
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    print(f"sweep {space.name}: {counts} -> {space.root}/sweep.json", flush=True)
    return 0 if set(counts) <= {"finished", "stopped"} else 1
