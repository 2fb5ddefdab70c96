"""Run one function over many items: in this process, in N local processes, or (ltad/training/ray_map.py) as
Ray tasks. `prepare` is written against this one signature, so where its work runs is a flag.

An executor yields (index, result) as items finish, in any order; the first failure is raised (with
the items not yet started cancelled), so a bad image stops the phase instead of waiting for the rest.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from ltad.errors import ConfigError

Executor = Callable[[Callable[[Any], Any], Sequence[Any]], Iterator[tuple[int, Any]]]


def serial(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """Every item in this process, in order (`--workers 1`)."""
    for i, item in enumerate(items):
        yield i, fn(item)


PRELOAD = ["ltad.data.prepare"]


def start_context() -> multiprocessing.context.BaseContext:
    """How worker processes start. On Linux, from a process that runs no other Python thread: a plain
    fork (a few ms, everything already imported; `storage.client` makes a new boto3 client in a new
    pid, so none is shared). Otherwise a fork server that has imported `ltad.data.prepare` once, so
    no worker inherits another thread's held locks; it costs a fresh interpreter, that import and a
    re-import of the main module in each worker: seconds on a busy 2-core machine (docs/SCALE.md).
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


WINDOW_PER_WORKER = 4
"""Items a `Processes` executor has submitted and not yet handed back, per worker: enough to keep
every worker busy, and each wait is over this window, not over every item (quadratic at 30k)."""


class Processes:
    """An executor over `workers` local processes, one pool for every phase (`close()` ends it).

    The pool starts on the first call (`start_context`: fork when safe, else a fork server). Items
    start in their order; at most `window` (default `WINDOW_PER_WORKER` x workers) are in flight.
    """

    def __init__(self, workers: int, window: int | None = None) -> None:
        self.workers = workers
        self.window = window or WINDOW_PER_WORKER * workers
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if not items:
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=start_context())
        pool = self._pool
        pending: dict[Future, int] = {}
        upcoming = iter(enumerate(items))

        def submit() -> None:
            for i, item in upcoming:
                pending[pool.submit(fn, item)] = i
                if len(pending) >= self.window:
                    return

        try:
            submit()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: pending[f]):
                    index = pending.pop(future)
                    yield index, future.result()
                submit()
        finally:
            for future in pending:
                future.cancel()
            if pending:  # stopped early (an error): wait for the running items before going on
                wait(pending)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def processes(workers: int) -> Executor:
    """An executor over `workers` local processes (`Processes`); `workers == 1` runs in this process."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an int >= 1, got {workers!r}")
    return serial if workers == 1 else Processes(workers)
