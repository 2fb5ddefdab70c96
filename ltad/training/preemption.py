"""Ray's preemption notice, read by the step loop: a node of the worker group is being drained.

A cloud reclaiming a spot node (or `ray drain-node --reason=PREEMPTION`) marks the node as draining
in Ray's GCS, usually with a deadline. Ray Train 2.60 watches the drain state of the group's nodes
(every RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S, default 5 s), hands it to the workers, and at the
deadline tears the group down and restarts it (preemptions have their own retry budget,
`FailureConfig.max_preemption_failures`, unlimited by default). `ray.train.get_preemption_info()`
reads the notice, agreed across ranks: it is a collective, so every rank asks at the same steps.

`PreemptionNotice.check(step)` says once, at the first step after the notice, that a checkpoint is
due (loop.py writes it at once); `hold()` then waits until Ray restarts the group, since every step
trained after that checkpoint on a doomed group would be lost with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ltad.log import get_logger

log = get_logger("preemption")

HOLD_PAST_DEADLINE_S = 60.0
"""How long past the notice's deadline `hold` waits for Ray's restart before training on."""
HOLD_WITHOUT_DEADLINE_S = 180.0
"""How long `hold` waits when the notice has no deadline (Ray Train waits 120 s in that case)."""


def ray_notice() -> Any:
    """Ray Train's preemption info for this worker group (a collective), or None."""
    import ray.train

    return ray.train.get_preemption_info()


class PreemptionNotice:
    """The step loop's view of Ray's preemption notice (every rank must call `check` at every step)."""

    def __init__(
        self,
        read: Callable[[], Any] = ray_notice,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._read = read
        self._clock = clock
        self._sleep = sleep
        self.info: Any = None
        """The notice acted on (Ray's `PreemptionInfo`), None until one is seen."""
        self.step: int | None = None
        """The step after which the preemption checkpoint was written."""
        self.reads = 0
        self.seconds = 0.0
        """Reads by `check` and the time they took (the notice's cost per step)."""

    def check(self, step: int) -> bool:
        """True once: at the first step whose end finds a notice (the loop checkpoints at once)."""
        if self.info is not None:
            return False
        tic = time.perf_counter()
        info = self._read()
        self.reads += 1
        self.seconds += time.perf_counter() - tic
        if info is None:
            return False
        self.info, self.step = info, step
        return True

    def describe(self) -> str:
        """One line on the notice acted on: nodes, ranks, deadline."""
        info = self.info
        deadline = getattr(info, "deadline_ms", None)
        left = f"deadline in {deadline / 1000 - self._clock():.0f} s" if deadline else "no deadline"
        nodes = ", ".join(n[:8] for n in getattr(info, "preempted_node_ids", []))
        ranks = getattr(info, "preempted_ranks", [])
        return f"node(s) {nodes} (ranks {ranks}) being drained for preemption, {left}"

    def hold(self, agree: Callable[[int], int] = int, poll_s: float = 1.0) -> int:
        """After the preemption checkpoint: wait (reading the notice every `poll_s`, a collective) until
        Ray tears the group down, the notice is withdrawn, or the deadline is well past; then training
        goes on. `agree` makes every rank wait the same number of polls (the max over ranks); the polls
        done."""
        deadline_ms = getattr(self.info, "deadline_ms", None)
        now = self._clock()
        wait = deadline_ms / 1000 + HOLD_PAST_DEADLINE_S - now if deadline_ms else HOLD_WITHOUT_DEADLINE_S
        polls = agree(max(1, math.ceil(wait / poll_s)))
        for done in range(1, polls + 1):
            self._sleep(poll_s)
            if self._read() is None:
                log.warning("preemption notice withdrawn: training goes on")
                return done
        log.warning("no restart after the preemption deadline: training goes on")
        return polls
