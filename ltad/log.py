"""One logger for every ltad process: driver, Ray Train workers, sweeps, studies and commands.

Messages go to stderr (the job log on a cluster) as `[ltad <part> HH:MM:SS] message`. Inside a distributed
stage only rank 0 speaks unless a call asks for every rank (`log.info(..., extra=ALL_RANKS)`), so a
job log does not repeat each line once per worker; `set_rank` is called when a worker joins its
process group. Ray Train patches `print` in workers and would log every printed line twice, which is
why nothing in ltad prints progress.
"""

from __future__ import annotations

import logging
import sys
import time

ROOT = "ltad"
ALL_RANKS = {"all_ranks": True}
"""`extra=` of a record that every rank logs (e.g. a corrupt sample one worker skipped)."""

_rank = 0
_started: float | None = None


def set_rank(rank: int) -> None:
    """Called when a stage worker joins its process group: its rank, and the clock lines show from now."""
    global _rank, _started
    _rank, _started = rank, time.monotonic()


class _RankFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _rank == 0 or bool(getattr(record, "all_ranks", False))


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        name = record.name.removeprefix(ROOT).lstrip(".")
        where = f" {name}" if name else ""
        if _started is not None:  # inside a stage: which worker, and seconds since it started
            where += f" rank {_rank} +{time.monotonic() - _started:.1f}s"
        return f"[ltad{where} {stamp}] {record.getMessage()}"


def get_logger(name: str = "") -> logging.Logger:
    """The `ltad` logger (or its child `ltad.<name>`), writing to stderr at INFO."""
    root = logging.getLogger(ROOT)
    if not root.handlers:
        handler = logging.StreamHandler(_Stderr())
        handler.setFormatter(_Format())
        handler.addFilter(_RankFilter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root.getChild(name) if name else root


class _Stderr:
    """Writes to whatever sys.stderr is now (pytest and Ray swap it after import)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()
