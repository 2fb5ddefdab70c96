"""executor.py and prepare's scheduling: how worker processes start (fork only when no other Python
thread runs), every result coming back with its item's index, and shards handed out largest first."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from ltad.data.executor import Processes, serial, start_context
from ltad.data.prepare import WorkItem, largest_first
from ltad.data.records import Record


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def _fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad item {x}")
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


def test_largest_first_hands_out_big_shards_first_and_keeps_each_items_index():
    items = [_item("train/a-000000.tar", 2), _item("train/b-000000.tar", 9), _item("test/test-000000.tar", 4)]
    sizes = {r.path: 1000 for item in items for r in item.records}
    seen: list[str] = []

    def name(item: WorkItem) -> str:
        seen.append(item.name)
        return item.name

    results = list(largest_first(serial, name, items, sizes))
    assert seen == ["train/b-000000.tar", "test/test-000000.tar", "train/a-000000.tar"]
    assert all(items[index].name == result for index, result in results)
    assert sorted(index for index, _ in results) == [0, 1, 2]
