"""Ray job (or plain script): dataset + long-tailed split -> shards + manifest (= `ltad prepare`).

    python jobs/prepare.py --dataset synth --root data/synth --profile exp --ratio 10 \
        --out s3://bucket/demo/shards [--split existing_split.json]

With `--dataset synth` a missing root is generated first (--synth-* flags). The split file is stored
beside the shards as `{out}/split.json`. The flags, defaults and errors are those of `ltad prepare`
(ltad/commands/prepare.py): without --split, --profile (and --ratio unless 'full') are required.
Submitted with `ray job submit`, the work runs as Ray tasks across the cluster (as with `--ray`; give
s3:// --root and --out) unless --workers is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.cli import job_main, job_parser  # noqa: E402
from ltad.commands.prepare import job_argv  # noqa: E402

PROG = "jobs/prepare.py"


def build_parser() -> argparse.ArgumentParser:
    return job_parser("prepare", PROG)


def main(argv: list[str] | None = None) -> int:
    return job_main("prepare", job_argv(argv), PROG)


if __name__ == "__main__":
    sys.exit(main())
