"""Ray's preemption notice in the step loop (ltad/training/preemption.py, loop.py): a checkpoint at the
step the notice is first seen, then a hold until Ray restarts the group. Ray's notice is faked here;
tests/cluster/test_drills.py drains a real node."""

from __future__ import annotations

import torch

from ltad.training import loop
from ltad.training.preemption import HOLD_PAST_DEADLINE_S, HOLD_WITHOUT_DEADLINE_S, PreemptionNotice


class Info:  # the fields of ray.train.PreemptionInfo that ltad reads
    def __init__(self, deadline_ms=None):
        self.deadline_ms = deadline_ms
        self.preempted_node_ids = ["0123456789abcdef"]
        self.preempted_ranks = [1]


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _notice(schedule, clock=None):
    """A notice whose reads return `schedule`'s items in turn (then the last one)."""
    clock = clock or Clock()
    reads = []

    def read():
        reads.append(clock.now)
        return schedule[min(len(reads), len(schedule)) - 1]

    return PreemptionNotice(read, clock=clock, sleep=clock.sleep), reads


def test_check_is_true_once_at_the_first_step_with_a_notice():
    info = Info(deadline_ms=1_030_000)
    notice, reads = _notice([None, None, info])
    assert [notice.check(s) for s in (1, 2, 3, 4, 5)] == [False, False, True, False, False]
    assert notice.step == 3 and notice.info is info
    assert len(reads) == 3 == notice.reads  # no reads after the notice: the loop holds instead
    assert notice.seconds >= 0
    assert "01234567" in notice.describe() and "ranks [1]" in notice.describe()
    assert "deadline in 30 s" in notice.describe()


def test_hold_waits_past_the_deadline_then_goes_on():
    clock = Clock(1000.0)
    info = Info(deadline_ms=1_020_000)  # 20 s from now
    notice, reads = _notice([info], clock)
    notice.check(7)
    polls = notice.hold(poll_s=1.0)
    assert polls == 20 + HOLD_PAST_DEADLINE_S
    assert clock.now == 1000.0 + polls


def test_hold_ends_when_the_notice_is_withdrawn_and_agrees_on_the_longest_wait():
    clock = Clock()
    notice, reads = _notice([Info(), Info(), Info(), None], clock)
    notice.check(1)
    asked = []

    def agree(n):
        asked.append(n)
        return n + 5  # another rank computed a longer wait

    assert notice.hold(agree=agree, poll_s=2.0) == 3
    assert asked == [HOLD_WITHOUT_DEADLINE_S / 2]


class _Engine:
    device = torch.device("cpu")

    def __init__(self):
        self.optimizer = type("O", (), {"param_groups": [{"lr": 0.1}]})()
        self.steps = 0

    def __call__(self, batch):
        return torch.tensor(1.0), {}

    def backward(self, loss):
        pass

    def step(self):
        self.steps += 1


def test_loop_checkpoints_at_the_notice_step_then_holds(monkeypatch):
    """The notice seen at the end of step 5 (not a logged step): step 5's checkpoint is written at once,
    with no report to Ray, then the loop holds (here: the hold returns, as if Ray never restarted)."""
    saves: list[tuple[int, dict]] = []
    reports: list[int] = []
    held: list[int] = []
    monkeypatch.setattr(loop, "restore", lambda engine, root, history: 0)
    monkeypatch.setattr(loop, "_report", lambda metrics, step: reports.append(step))
    monkeypatch.setattr(loop, "save_and_report", lambda engine, step, metrics, **kw: saves.append((step, kw)))

    class Notice(PreemptionNotice):
        def hold(self, agree=int, poll_s=1.0):
            held.append(self.step)
            return 0

    notice = Notice(lambda: Info() if engine.steps >= 5 else None)
    engine = _Engine()

    def batches(start):
        while True:
            yield {"class_id": torch.zeros(2, dtype=torch.long)}

    spec = loop.LoopSpec("phase2", steps=10, log_every=4, checkpoint_every=100)
    loop.run_steps(engine, batches, spec, rank=0, notice=notice)
    assert [s for s, _ in saves] == [5, 10]
    assert saves[0][1].get("report_to_ray") is False and saves[1][1].get("final") is True
    assert held == [5] and reports == [4, 8]
    assert engine.steps == 10


def test_a_notice_at_a_logged_step_reports_with_its_checkpoint(monkeypatch):
    saves: list[int] = []
    monkeypatch.setattr(loop, "restore", lambda engine, root, history: 0)
    monkeypatch.setattr(loop, "_report", lambda metrics, step: None)
    monkeypatch.setattr(
        loop,
        "save_and_report",
        lambda engine, step, metrics, **kw: saves.append(step) or kw.get("report_to_ray"),
    )
    engine = _Engine()
    notice = PreemptionNotice(lambda: Info() if engine.steps >= 4 else None, sleep=lambda s: None)
    monkeypatch.setattr(notice, "hold", lambda agree=int, poll_s=1.0: 0)

    def batches(start):
        while True:
            yield {"class_id": torch.zeros(2, dtype=torch.long)}

    loop.run_steps(engine, batches, loop.LoopSpec("phase1", 6, 2, 100), rank=0, notice=notice)
    assert saves == [4, 6]  # step 4 (logged) saved and reported with its metrics, then the final
