"""Ray Tune sweep of prompt length x synthesis ratio across imbalance levels (a Ray job).

    ray job submit --working-dir . -- python tune/sweep.py --space tune/demo.yaml \
        [--root s3://bucket/sweeps/demo] [--set phase2.steps=100 ...] [--max-concurrent N] [--resume]

The search space (tune/*.yaml) names the levels (one prepared shard set each), the values to sweep,
the base run config, ASHA and the sweep root. Rerunning the same command resumes the sweep (Tune's
`Tuner.restore`): finished trials are kept. Rerunning it with other inputs (another `--set`, other
data) under the same root is refused before anything runs: use another `--root`. Results:
`<root>/sweep.json` and `<root>/trials/<trial>/`, read by `jobs/summary.py --sweep <root>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tune/sweep.py", description=__doc__.splitlines()[0])
    parser.add_argument("--space", required=True, help="search space YAML (tune/demo.yaml, tune/mvtec.yaml)")
    parser.add_argument("--root", help="sweep root: s3://bucket/prefix or a directory (overrides `root`)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the base run config, e.g. phase2.steps=100")  # fmt: skip
    parser.add_argument("--max-concurrent", type=int, metavar="N",
                        help="at most N trials at once (default: as many as the cluster places, as it grows)")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="require an interrupted sweep to resume (resuming is automatic anyway)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from ltad.data import storage
        from ltad.sweep.driver import run_sweep
        from ltad.sweep.space import load_space
        from ltad.training.cluster import connect

        space = load_space(args.space, overrides=args.set, root=args.root, max_concurrent=args.max_concurrent)
        if args.resume and not storage.list(storage.join(space.root, "tune")):
            raise UserError(
                f"--resume: no sweep to resume under {space.root}/tune (start it without --resume)"
            )
        connect()
        sweep = run_sweep(space)
    except UserError as exc:
        print(f"tune/sweep.py: error: {exc}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for trial in sweep["trials"]:
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    print(f"sweep {space.name}: {counts} -> {space.root}/sweep.json", flush=True)
    return 0 if set(counts) <= {"finished", "stopped"} else 1


if __name__ == "__main__":
    sys.exit(main())
