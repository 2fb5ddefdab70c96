"""A bounded number of storage requests in flight, for code that would otherwise wait on each one.

An object store answers each request after 20-50 ms whatever its size, so a loop that reads (or
uploads) one object at a time spends most of its time waiting. Two shapes cover ltad's loops:

- `ordered_map(fn, items, in_flight)`: reads ahead on a thread pool and hands results back in the
  items' order; the first failure (in that order) is raised where its result would have been, and
  nothing past the bound is started, so memory stays `in_flight` results.
- `Background(pending)`: runs writes on one thread behind the caller, which blocks when `pending`
  are queued; an error is raised at the next `submit` or at `finish`, never dropped, nothing queued
  after a failed call runs, and `finish` returns only when every write has ended (so a completeness
  marker written after it is true).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], in_flight: int) -> Generator[R, None, None]:
    """`fn(item)` for each item, in order, with up to `in_flight` calls running ahead on threads.

    `in_flight <= 1` calls `fn` in this thread (no pool). Stopping early (an error, or the consumer
    closing the generator) cancels the calls not yet started and waits for the running ones."""
    if in_flight <= 1:
        for item in items:
            yield fn(item)
        return
    upcoming = iter(items)
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(in_flight, thread_name_prefix="ltad-inflight") as pool:
        try:
            for item in upcoming:
                window.append(pool.submit(fn, item))
                if len(window) >= in_flight:
                    break
            while window:
                result = window.popleft().result()  # the first failure in order is raised here
                for item in upcoming:
                    window.append(pool.submit(fn, item))
                    break
                yield result
        finally:
            for future in window:
                future.cancel()


class Skipped(RuntimeError):
    """A queued `Background` call not run because an earlier one failed (that error is raised first)."""


class Background:
    """Calls run one after another on a background thread, at most `pending` of them queued or running.

    `submit` blocks while `pending` calls are unfinished and raises the error of any finished one;
    `finish` waits for all and raises the first error. Once a call has failed, the queued calls are
    skipped (each would raise `Skipped`), so no write lands after the one that failed. Use as a context manager: leaving the block
    by an exception still waits for the running call (so it never outlives the files it reads) and
    drops the queued ones; leaving it normally is `finish()`.
    """

    def __init__(self, pending: int = 2, name: str = "ltad-background") -> None:
        if pending < 1:
            raise ValueError(f"pending must be >= 1, got {pending}")
        self.pending = pending
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._futures: deque[Future[Any]] = deque()
        self._failed = threading.Event()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._collect(block_until=self.pending - 1)
        self._futures.append(self._pool.submit(self._run, fn, *args))

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._failed.is_set():
            raise Skipped(f"{getattr(fn, '__name__', fn)}: skipped after an earlier call failed")
        try:
            return fn(*args)
        except BaseException:
            self._failed.set()
            raise

    def _collect(self, block_until: int) -> None:
        """Drop finished calls (raising the first error), waiting until at most `block_until` remain."""
        while self._futures and (self._futures[0].done() or len(self._futures) > block_until):
            self._futures.popleft().result()

    def finish(self) -> None:
        try:
            self._collect(block_until=0)
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.finish()
            return
        for future in self._futures:
            future.cancel()
        wait(self._futures)
        self._pool.shutdown(wait=True)
