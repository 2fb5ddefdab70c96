"""Print a benchmark's figures as JSON and, with `--json FILE`, commit-ready: the same object plus how it was made.

Every figure the README quotes must come from a committed file under docs/results/ that says which
command produced it, when, at which commit and on what machine (cores, load), so a reader can rerun it.
The benchmarks import this module (it sits beside them, so `python benchmarks/x.py` finds it).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _git_commit() -> str:
    """LTAD_GIT_COMMIT (set when running from an exported tree, as for jobs), else `git rev-parse`."""
    if os.environ.get("LTAD_GIT_COMMIT"):
        return os.environ["LTAD_GIT_COMMIT"]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The command line (from the repository root), UTC time, git commit and machine facts of this run."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(ROOT))
    except ValueError:
        script_name = str(script)
    args = sys.argv[1:] if argv is None else argv
    return {
        "command": shlex.join(["python", script_name, *args]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_1min_at_end": round(os.getloadavg()[0], 2),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }


def emit(result: dict[str, Any], json_path: str | None, argv: list[str] | None = None) -> None:
    """Print `result` as JSON on stdout; with `json_path`, also write it there with its provenance."""
    print(json.dumps(result, indent=2), flush=True)
    if json_path:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**result, "provenance": provenance(argv)}, indent=2) + "\n")
        tmp.replace(path)  # never a half-written result that looks complete


def finish(
    result: dict[str, Any], missed: list[str], json_path: str | None, argv: list[str] | None = None
) -> int:
    """Emit `result` with `missed` (the targets not met, one sentence each) and say each on stderr: the
    exit code every benchmark with a target returns (1 when one was missed)."""
    emit({**result, "met": not missed, "missed": missed}, json_path, argv)
    for line in missed:
        print(f"TARGET MISSED: {line}", file=sys.stderr)
    return 1 if missed else 0


def add_json_flag(parser) -> None:
    """The `--json FILE` flag every benchmark takes."""
    parser.add_argument(
        "--json", metavar="FILE", help="also write the figures with command, date, commit and machine to FILE"
    )
