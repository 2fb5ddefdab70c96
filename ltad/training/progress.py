"""Progress lines with counts, rate and ETA for stages that log per unit of work (the encode stage).

The step loop draws a tqdm bar on rank 0 instead (loop.py): it already shows steps done of the total,
the rate and the time left; only rank 0 draws it, as Ray Train workers' stderr all reach the job log.
"""

from __future__ import annotations

import time


def eta(seconds: float) -> str:
    """`42 s`, `3 min 5 s` or `2 h 4 min`."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


class Progress:
    """`done/total unit (pct), rate/s, ETA` of a known amount of work started now."""

    def __init__(self, total: int, unit: str = "samples", clock=time.monotonic) -> None:
        self.total, self.unit, self.clock = total, unit, clock
        self.started = clock()
        self.done = 0

    def advance(self, n: int) -> str:
        self.done += n
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        when = eta(left) if left != float("inf") else "unknown"
        return f"{self.done}/{self.total} {self.unit} ({pct:.0f}%), {rate:.1f}/s, ETA {when}"
