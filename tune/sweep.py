"""Ray Tune sweep of run-config fields across imbalance levels (a Ray job, = `ltad sweep`; docs/SWEEPS.md).

    ray job submit --working-dir . -- python tune/sweep.py --config tune/demo.yaml \
        [--root s3://bucket/sweeps/demo] [--set phase2.steps=100 ...] [--max-concurrent N] [--resume]

The search space (tune/*.yaml) names the levels (one prepared shard set each), the fields to sweep,
the base run config, ASHA and the sweep root. Rerunning the same command resumes the sweep (Tune's
`Tuner.restore`): finished trials are kept. Rerunning it with other inputs (another `--set`, other
data) under the same root is refused before anything runs: use another `--root`. Results:
`<root>/sweep.json` and `<root>/trials/<trial>/`, read by `ltad summary --sweep <root>`. The flags,
defaults and errors are those of `ltad sweep` (ltad/commands/sweep.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.cli import job_main, job_parser  # noqa: E402

PROG = "tune/sweep.py"


def build_parser() -> argparse.ArgumentParser:
    return job_parser("sweep", PROG)


def main(argv: list[str] | None = None) -> int:
    return job_main("sweep", argv, PROG)


if __name__ == "__main__":
    sys.exit(main())
