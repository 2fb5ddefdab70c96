"""The driver's wait loops stay flat in the number of work items; prints JSON.

At a million images prepare has ~30k work items. A driver that waits over every pending item once per
result (`ray.wait` / `concurrent.futures.wait` over all of them) spends time quadratic in the items:
minutes at 30k. `ltad.data.executor.Processes` and `ltad.training.ray_map.ray_tasks` keep a bounded
window in flight and wait over it only. This runs each over `--small` and `--large` no-op items
(`--large` = 10 x `--small` by default: 3k and 30k) and reports the driver's seconds per item at each;
the target is the ratio large/small <= 1.5 (flat). `--reference` also runs the loop they replaced
(every item submitted at once, each wait over every pending future) at 1/10 of the sizes, to show the
check fails on it.

Ray runs a local instance (`ray.init(num_cpus=2)`, started before the clock); `--no-ray` skips it.

Usage: .venv/bin/python benchmarks/driver.py [--quick] [--no-ray] [--reference] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from record import add_json_flag, finish  # noqa: E402  (benchmarks/record.py, beside this script)

TARGET_RATIO = 1.5


def noop(x: int) -> int:
    return x


def unbounded(workers: int) -> Callable[[Callable, Sequence[Any]], Iterator[tuple[int, Any]]]:
    """The loop the window replaced: every item submitted at once, each wait over every pending future."""
    from ltad.data.executor import start_context

    def run(fn: Callable, items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        with ProcessPoolExecutor(workers, mp_context=start_context()) as pool:
            pending = {pool.submit(fn, item): i for i, item in enumerate(items)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()

    return run


def timed(run: Callable, n: int) -> dict:
    tic = time.perf_counter()
    got = sum(1 for _ in run(noop, list(range(n))))
    seconds = time.perf_counter() - tic
    assert got == n, f"{got} results for {n} items"
    return {"items": n, "seconds": round(seconds, 3), "us_per_item": round(1e6 * seconds / n, 1)}


def pair(run: Callable, small: int, large: int) -> dict:
    """Per-item time at `small` and `large` items (the small run repeated after, its median kept)."""
    timed(run, min(small, 500))  # warm: the pool's start is not the loop's cost
    first, big, second = timed(run, small), timed(run, large), timed(run, small)
    per_small = sorted([first["us_per_item"], second["us_per_item"]])[0]
    return {
        "small": first,
        "small_again": second,
        "large": big,
        "ratio_large_vs_small": round(big["us_per_item"] / per_small, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k items")
    parser.add_argument("--small", type=int)
    parser.add_argument("--large", type=int)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--reference", action="store_true", help="also the unbounded loop, at 1/10 the sizes")
    add_json_flag(parser)
    args = parser.parse_args(argv)
    small = args.small or (1000 if args.quick else 3000)
    large = args.large or 10 * small

    from ltad.data.executor import Processes

    started = time.monotonic()
    result: dict[str, Any] = {"items": {"small": small, "large": large}}
    processes = Processes(2)
    try:
        result["processes_2_workers"] = pair(processes, small, large)
    finally:
        processes.close()
    if args.reference:
        result["unbounded_reference_2_workers"] = pair(unbounded(2), small // 10, large // 10)
    if not args.no_ray:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local instance, as the tests start it
        import ray

        from ltad.training.ray_map import ray_tasks

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            result["ray_tasks_2_cpus"] = pair(ray_tasks, small, large)
        finally:
            ray.shutdown()
    missed = [
        f"{name}: {fig['ratio_large_vs_small']} x the per-item time at {large} vs {small} items, target "
        f"<= {TARGET_RATIO}"
        for name, fig in result.items()
        if name in ("processes_2_workers", "ray_tasks_2_cpus") and fig["ratio_large_vs_small"] > TARGET_RATIO
    ]
    result.update({
        "targets": {"ratio_large_vs_small": f"<= {TARGET_RATIO}"},
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    })  # fmt: skip
    return finish(result, missed, args.json, argv)


if __name__ == "__main__":
    sys.exit(main())
