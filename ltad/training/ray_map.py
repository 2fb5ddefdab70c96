"""A `ltad.data.executor.Executor` over Ray tasks: `ltad prepare --ray` (and jobs/prepare.py on a cluster).

Each item becomes one task (1 CPU) that may run on any node, so what it reads and writes must be
reachable by URI from every node: an s3:// root and output on a cluster of several nodes (checked by
`check_reachable`). The first failed task is raised as its own error (a DataError naming the image,
not a RayTaskError wrapper) and the tasks not yet finished are cancelled. A task whose worker or
node is lost (a spot reclaim) is retried up to `RETRIES` times: its writes are idempotent (a shard is
rewritten whole, the manifest comes last); an error the task raises itself is never retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ltad.errors import ConfigError, UserError
from ltad.io import storage

RETRIES = 3
MIN_WINDOW = 16
"""Tasks in flight at least; `ray_tasks` keeps twice the cluster's CPUs in flight when that is more,
so each wait is over that window, not over every item (quadratic at 30k items)."""


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def check_reachable(
    *locations: tuple[str, str],
    work: str = "prepare's Ray tasks",
    fix: str = "give s3:// locations for --root and --out with --ray (or run without --ray)",
) -> None:
    """(flag, location) pairs: on a multi-node cluster (`preflight.is_multi_node` for 1-CPU tasks: more
    than one node, an autoscaler that may add some, or a head without CPUs) each must be s3://."""
    from ltad.training.preflight import cluster_is_multi_node

    local = [(flag, loc) for flag, loc in locations if not storage.is_s3(loc)]
    if local and cluster_is_multi_node(cpus=1):
        flag, loc = local[0]
        raise ConfigError(
            f"{flag} '{loc}' is a local path, but {work} may run on other nodes of this "
            f"cluster (several nodes, an autoscaler that adds them, or a head without CPUs) that share "
            f"no disk: {fix}"
        )


def _ray_tasks(fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """(index, fn(item)) as Ray tasks finish; Ray must be connected (ltad.training.cluster.connect)."""
    import ray

    remote = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(_call)
    fn_ref = ray.put(fn)
    window = max(MIN_WINDOW, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: dict[Any, int] = {}
    upcoming = iter(enumerate(items))
    try:
        while True:
            for i, item in upcoming:  # items start in their order, at most `window` in flight
                pending[remote.remote(fn_ref, item)] = i
                if len(pending) >= window:
                    break
            if not pending:
                return
            # the first task to finish, then every other one finished by now: waits over the window only
            done, rest = ray.wait(list(pending), num_returns=1)
            if rest:
                done += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for ref in sorted(done, key=lambda r: pending[r]):
                index = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, (UserError, OSError)):
                        raise cause from None
                    raise
                yield index, result
    finally:
        for ref in pending:
            ray.cancel(ref)


class RayTasks:
    """The Ray executor (`ray_tasks(fn, items)`), with the cluster's CPU count as `workers`: `prepare`
    cuts its work into at least that many lanes, so a small dataset still spreads over the cluster."""

    def __call__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        return _ray_tasks(fn, items)

    @property
    def workers(self) -> int:
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 1


ray_tasks = RayTasks()
