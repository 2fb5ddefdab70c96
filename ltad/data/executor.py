"""Run one function over many items: in this process, in N local processes, or (ltad/training/ray_map.py) as
Ray tasks. `prepare` is written against this one signature, so where its work runs is a flag.

An executor yields (index, result) as items finish, in any order; the first failure is raised (with
the items not yet started cancelled), so a bad image stops the phase instead of waiting for the rest.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from ltad.errors import ConfigError

Executor = Callable[[Callable[[Any], Any], Sequence[Any]], Iterator[tuple[int, Any]]]


def serial(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """Every item in this process, in order (`--workers 1`)."""
    for i, item in enumerate(items):
        yield i, fn(item)


def processes(workers: int) -> Executor:
    """An executor over `workers` local processes (spawned: no forked boto3 or thread state);
    `workers == 1` runs in this process."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an int >= 1, got {workers!r}")
    if workers == 1:
        return serial

    def run(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        if not items:
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=context) as pool:
            pending: dict[Future, int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in sorted(done, key=lambda f: pending[f]):
                        index = pending.pop(future)
                        yield index, future.result()
            finally:
                for future in pending:
                    future.cancel()

    return run
