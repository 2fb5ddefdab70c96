"""ltad/io/inflight.py: reads ahead in order with a bound, background writes with a bound, and every
error surfaced (at its position, at the next submit, or at finish), never dropped."""

from __future__ import annotations

import threading
import time

import pytest

from ltad.io.inflight import Background, ordered_map


class _Gauge:
    """Counts calls running at once (and the most at once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


def test_ordered_map_keeps_order_and_a_bounded_number_in_flight():
    gauge = _Gauge()

    def slow(x: int) -> int:
        with gauge:
            time.sleep(0.002 * (x % 5))  # later items often finish first
            return x * 10

    assert list(ordered_map(slow, range(60), in_flight=8)) == [x * 10 for x in range(60)]
    assert 1 < gauge.most <= 8
    assert list(ordered_map(slow, range(5), in_flight=1)) == [0, 10, 20, 30, 40]


def test_ordered_map_starts_nothing_past_the_bound_while_the_consumer_waits():
    started: list[int] = []
    stream = ordered_map(started.append, range(100), in_flight=4)
    next(stream)
    time.sleep(0.05)
    assert len(started) <= 5  # the 4 in flight and the one that replaced the delivered one
    stream.close()
    time.sleep(0.05)
    assert len(started) <= 5


def test_ordered_map_raises_the_first_failure_in_item_order_after_the_earlier_results():
    def fails(x: int) -> int:
        if x == 7:
            time.sleep(0.05)  # item 9 fails sooner, but 7 comes first
            raise ValueError("bad item 7")
        if x == 9:
            raise ValueError("bad item 9")
        return x

    got: list[int] = []
    with pytest.raises(ValueError, match="bad item 7"):
        for value in ordered_map(fails, range(20), in_flight=6):
            got.append(value)
    assert got == list(range(7))


def test_background_bounds_pending_calls_and_finish_waits_for_all():
    gauge = _Gauge()
    done: list[int] = []
    queued_most = 0

    def write(x: int) -> None:
        with gauge:
            time.sleep(0.01)
            done.append(x)

    with Background(pending=2) as uploads:
        for x in range(10):
            uploads.submit(write, x)
            queued_most = max(queued_most, len(uploads._futures))
    assert done == list(range(10))  # one thread: in order; all finished when the block ends
    assert gauge.most == 1 and queued_most <= 2


def test_background_error_is_raised_at_the_next_submit_or_at_finish():
    def fail(x: int) -> None:
        raise OSError(f"upload {x} failed")

    uploads = Background(pending=1)
    uploads.submit(fail, 1)
    with pytest.raises(OSError, match="upload 1 failed"):
        uploads.submit(fail, 2)  # pending=1: waits for the first, which failed
    uploads.finish()  # the failed call was collected; nothing else is pending
    last = Background(pending=2)
    last.submit(fail, 3)
    with pytest.raises(OSError, match="upload 3 failed"):
        last.finish()


def test_background_left_by_an_error_waits_for_the_running_call():
    running = threading.Event()
    finished = threading.Event()

    def slow() -> None:
        running.set()
        time.sleep(0.05)
        finished.set()

    with pytest.raises(RuntimeError, match="encoder failed"), Background(pending=2) as uploads:
        uploads.submit(slow)
        running.wait(5)
        raise RuntimeError("encoder failed")
    assert finished.is_set()  # never outlives the block (the files it reads are deleted after it)


def test_background_skips_what_was_queued_after_a_failure():
    ran: list[int] = []
    gate = threading.Event()

    def write(x: int) -> None:
        if x == 0:
            gate.wait(5)
            raise OSError("upload 0 failed")
        ran.append(x)

    uploads = Background(pending=3)
    uploads.submit(write, 0)
    uploads.submit(write, 1)  # queued behind the one that will fail
    gate.set()
    with pytest.raises(OSError, match="upload 0 failed"):
        uploads.finish()
    assert ran == []


def test_threads_reading_ahead_share_one_s3_client(monkeypatch):
    import boto3

    from ltad.io import storage

    made: list[int] = []
    real = boto3.session.Session.client

    def counting(self, *args, **kwargs):
        made.append(1)
        time.sleep(0.05)  # a slow construction: every thread arrives while the first is making it
        return real(self, *args, **kwargs)

    monkeypatch.setattr(boto3.session.Session, "client", counting)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage.reset_client()
    try:
        clients = list(ordered_map(lambda _i: storage.client(), range(16), in_flight=16))
    finally:
        storage.reset_client()
    assert len(made) == 1 and all(c is clients[0] for c in clients)
