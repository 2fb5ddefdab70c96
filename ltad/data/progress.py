"""Progress of a long phase as log lines: count (of a total when known), rate, ETA, every few seconds.

One line per `every` seconds at most, plus a final one, through the caller's log function (stderr via
`ltad.log` by default): a job log on a cluster shows where a phase is without a terminal, and a
100 000-image phase does not print 100 000 lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ltad.log import get_logger

_log = get_logger("progress").info


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """`add(n)` as work completes; `finish()` logs the closing line. `note` carries extra counts
    (e.g. '3 uploaded, 1 unchanged') that the caller keeps up to date."""

    def __init__(
        self,
        phase: str,
        total: int | None = None,
        unit: str = "items",
        log: Callable[[str], None] = _log,
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.phase, self.total, self.unit, self.log, self.every, self.clock = (
            phase,
            total,
            unit,
            log,
            every,
            clock,
        )
        self.done = 0
        self._logged = -1  # `done` at the last line logged
        self.note = ""
        self.started = self._last = clock()

    def rate(self) -> float:
        return self.done / max(1e-9, self.clock() - self.started)

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.rate()
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        text = f"{self.phase}: {count} {self.unit}, {rate:.1f}/s"
        if self.total is not None and self.done < self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f", ETA {_duration(eta) if eta != float('inf') else '?'}"
        else:
            text += f", {_duration(elapsed)} elapsed"
        return f"{text} ({self.note})" if self.note else text

    def add(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self._last >= self.every:
            self._last, self._logged = now, self.done
            self.log(self.line())

    def finish(self) -> None:
        """The closing line, unless the last `add` already logged this count."""
        if self._logged != self.done:
            self.log(self.line())
