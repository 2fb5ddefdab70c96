"""Fixtures of the fault-injection suite: a tiny synthetic dataset, its split, and local shards.

Everything runs the real code: the `ltad` console script and `jobs/*.py` in subprocesses, the real
SeaweedFS server of `tests/conftest.py`, local Ray for the training cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[2]
LTAD = str(REPO / ".venv" / "bin" / "ltad") if (REPO / ".venv" / "bin" / "ltad").exists() else "ltad"


@dataclass(frozen=True)
class Ran:
    """A finished subprocess: exit code and its output."""

    rc: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    @property
    def error_lines(self) -> list[str]:
        """stderr lines of the form 'PROG: error: ...' (progress lines and argparse's usage aside)."""
        return [ln for ln in self.lines if ": error: " in ln]


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> Ran:
    """`ltad ARGS` (or `python jobs/x.py ARGS` when args[0] ends in .py) in the repo, captured."""
    cmd = [sys.executable, *args] if args[0].endswith(".py") else [LTAD, *args]
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    return Ran(done.returncode, done.stdout, done.stderr)


def run_in_process(args: list[str], env: dict[str, str], capfd, monkeypatch) -> Ran:
    """The same command as `run_cli`, called in this process (`ltad.cli.main` or the job's `main`):
    what a subprocess adds (interpreter start, imports) is the same for every case, so all but a
    few cases run here. stdout/stderr are captured at the file descriptors, as a terminal sees them."""
    import importlib

    from ltad.io import storage

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    storage.reset_client()  # a changed endpoint or credentials take effect, as in a fresh process
    monkeypatch.chdir(REPO)
    capfd.readouterr()
    try:
        if args[0].endswith(".py"):
            module = importlib.import_module(args[0].removesuffix(".py").replace("/", "."))
            rc = module.main(args[1:])
        else:
            from ltad import cli

            rc = cli.main(args)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code if isinstance(exc.code, int) else 2
    finally:
        storage.reset_client()
    out, err = capfd.readouterr()
    return Ran(int(rc or 0), out, err)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """3 synthetic classes at 32 px (MVTec layout): small enough to copy per test."""
    from ltad.data.synth import synthesize

    tmp = tmp_path_factory.mktemp("rel-synth")
    return synthesize(tmp / "synth", classes=3, image_size=32, train_per_class=6, test_per_class=4, seed=0)


@pytest.fixture(scope="session")
def split_file(synth_root, tmp_path_factory) -> Path:
    from ltad.data.datasets import read_dataset
    from ltad.data.splits import make_split

    split = make_split(read_dataset("synth", synth_root), "exp", ratio=3, seed=0)
    return split.save(tmp_path_factory.mktemp("rel-split") / "split.json")


@pytest.fixture(scope="session")
def local_shards(synth_root, split_file, tmp_path_factory) -> Path:
    """The tiny dataset prepared into a local directory (test shards of 3 samples)."""
    from ltad.data.prepare import prepare

    out = tmp_path_factory.mktemp("rel-shards") / "shards"
    prepare("synth", synth_root, split_file, str(out), test_shard_samples=3, log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def s3_shards(s3_server, synth_root, split_file) -> str:
    """The tiny dataset prepared onto the test SeaweedFS (test shards of 3 samples)."""
    from ltad.data.prepare import prepare

    uri = f"s3://{s3_server.bucket}/rel-shards"
    prepare("synth", synth_root, split_file, uri, test_shard_samples=3, log=lambda _m: None)
    return uri
