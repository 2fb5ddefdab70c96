"""executor.py and prepare's scheduling: how worker processes start (fork only when no other Python
thread runs), every result coming back with its item's index, and shards handed out largest first."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from ltad.data.executor import Processes, start_context
from ltad.data.prepare import LANE_IMAGES, WorkItem, write_lanes
from ltad.data.records import Record


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    return x


def _slow_unless_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
    time.sleep(0.05)
    return x


class _OtherThread:
    """A second Python thread that runs until the block ends."""

    def __enter__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.stop.wait, daemon=True)
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.skipif(sys.platform != "linux", reason="fork is used on Linux only")
def test_workers_fork_only_while_no_other_python_thread_runs():
    if threading.active_count() != 1:
        pytest.skip("this test process already runs another Python thread")
    assert start_context().get_start_method() == "fork"
    with _OtherThread():
        assert start_context().get_start_method() == "forkserver"
    assert start_context().get_start_method() == "fork"


@pytest.mark.parametrize("other_thread", [False, True], ids=["fork", "forkserver"])
def test_processes_return_every_result_with_its_index_from_other_processes(other_thread):
    run = Processes(2)
    try:
        if other_thread:
            with _OtherThread():
                results = dict(run(_square_and_pid, list(range(10))))
        else:
            results = dict(run(_square_and_pid, list(range(10))))
        assert {i: r[0] for i, r in results.items()} == {i: i * i for i in range(10)}
        assert os.getpid() not in {r[1] for r in results.values()}
        again = dict(run(_square_and_pid, [7]))  # the same pool serves the next phase
        assert again[0][0] == 49
        with pytest.raises(ValueError, match="bad item 3"):
            list(run(_fails_on_three, list(range(6))))
    finally:
        run.close()


def _item(name: str, n: int) -> WorkItem:
    return WorkItem(
        name, tuple(Record(f"{name}/{i}.png", "a", 0, "train", 0, None, "good") for i in range(n))
    )


def test_write_lanes_deal_shards_largest_first_into_at_least_one_lane_per_worker():
    items = [_item("train/a-000000.tar", 2), _item("train/b-000000.tar", 9), _item("test/test-000000.tar", 4)]
    sizes = {r.path: 1000 for item in items for r in item.records}
    assert write_lanes(items, sizes, parallel=1) == [(1, 2, 0)]  # one lane, its largest shard first
    assert write_lanes(items, sizes, parallel=2) == [(1,), (2, 0)]  # the big lane first
    assert write_lanes(items, sizes, parallel=8) == [(1,), (2,), (0,)]  # never an empty lane
    many = [_item(f"train/c-{i:06d}.tar", 100) for i in range(30)]  # 3000 images: > LANE_IMAGES per lane
    lanes = write_lanes(many, {r.path: 1000 for item in many for r in item.records}, parallel=1)
    assert sorted(i for lane in lanes for i in lane) == list(range(30))
    assert len(lanes) == 3 and all(sum(len(many[i].records) for i in lane) <= LANE_IMAGES for lane in lanes)


def test_processes_keep_a_bounded_window_in_flight_and_return_every_result():
    from concurrent.futures import ProcessPoolExecutor

    run = Processes(2, window=3)
    submitted = []

    class Counting(ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
            submitted.append(args[0])
            return super().submit(fn, *args, **kwargs)

    run._pool = Counting(max_workers=2, mp_context=start_context())
    try:
        results, ahead = {}, []
        for i, (square, _pid) in run(_square_and_pid, list(range(40))):
            results[i] = square
            ahead.append(len(submitted) - len(results))  # submitted and not yet handed back
        assert results == {i: i * i for i in range(40)} and submitted == list(range(40))
        assert max(ahead) <= 3 - 1 and len(ahead) == 40  # at most the window in flight
        submitted.clear()
        with pytest.raises(ValueError, match="bad item 3"):
            list(run(_slow_unless_three, list(range(100))))
        assert len(submitted) < 10  # items past the window never started
    finally:
        run.close()


class _FakeRay:
    """What ray_tasks uses of Ray, in process: tasks finish in a seeded random order, one or more per wait."""

    class exceptions:
        class RayTaskError(Exception):
            def __init__(self, cause: BaseException) -> None:
                super().__init__(str(cause))
                self.cause = cause

    def __init__(self, cpus: int) -> None:
        import random

        self.cpus, self.rng, self.done, self.waited, self.cancelled, self.started = (
            cpus,
            random.Random(0),
            set(),
            [],
            [],
            0,
        )

    def remote(self, **_):
        fake = self

        class Ref:
            def __init__(self, fn, item):
                self.fn, self.item = fn, item
                fake.started += 1

        class Remote:
            @staticmethod
            def remote(fn, item):
                return Ref(fn, item)

        return lambda _fn: Remote

    def put(self, value):
        return value

    def cluster_resources(self):
        return {"CPU": float(self.cpus)}

    def wait(self, refs, num_returns=1, timeout=None):
        self.waited.append(len(refs))
        if timeout is None:  # blocks until one more finishes
            for ref in self.rng.sample(refs, min(len(refs), self.rng.randint(1, 3))):
                self.done.add(ref)
        ready = [r for r in refs if r in self.done][:num_returns]
        return ready, [r for r in refs if r not in ready]

    def get(self, ref):
        try:
            return ref.fn(ref.item)
        except Exception as exc:
            raise self.exceptions.RayTaskError(exc) from None

    def cancel(self, ref):
        self.cancelled.append(ref)


def test_ray_tasks_wait_over_a_bounded_window_and_return_every_result(monkeypatch):
    from ltad.errors import DataError
    from ltad.training import ray_map

    fake = _FakeRay(cpus=4)
    monkeypatch.setitem(sys.modules, "ray", fake)
    n = 2000
    results = dict(ray_map.ray_tasks(lambda x: x * 3, list(range(n))))
    assert results == {i: 3 * i for i in range(n)}
    assert max(fake.waited) <= ray_map.MIN_WINDOW  # 2 x 4 CPUs < the minimum window
    assert sum(fake.waited) < 2 * n * ray_map.MIN_WINDOW  # linear in the items, not quadratic

    def bad(x):
        if x == 50:
            raise DataError(f"image {x} is corrupt")
        return x

    fake = _FakeRay(cpus=32)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(DataError, match="image 50 is corrupt"):
        list(ray_map.ray_tasks(bad, list(range(n))))
    assert max(fake.waited) <= 64 and fake.started < 200 and fake.cancelled  # the rest never started


def test_ray_tasks_workers_is_the_clusters_cpus_so_prepare_cuts_a_lane_per_cpu(monkeypatch):
    from ltad.training import ray_map

    fake = _FakeRay(cpus=6)
    fake.is_initialized = lambda: True  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert ray_map.ray_tasks.workers == 6
    items = [_item(f"train/c-{i:06d}.tar", 10) for i in range(20)]  # 200 images: 1 lane by size alone
    sizes = {r.path: 1000 for item in items for r in item.records}
    assert len(write_lanes(items, sizes, parallel=ray_map.ray_tasks.workers)) == 6
    fake.is_initialized = lambda: False  # type: ignore[attr-defined]
    assert ray_map.ray_tasks.workers == 1  # not connected: no cluster to count
