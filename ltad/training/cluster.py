"""Connecting to Ray: the one place every job, command and sweep joins (or starts) a cluster.

With `RAY_ADDRESS` set (a job submitted with `ray job submit`, or a user's cluster) it joins that
cluster; otherwise it starts a local one with the dashboard on loopback, which Tune-over-Train needs
to free finished trials' placement groups. A local cluster declares `ltad_driver` like the head in
cluster.yaml, so sweep trial drivers are placed as on a real cluster (ltad/sweep/driver.py).
"""

from __future__ import annotations

import os
from typing import Any

DRIVER_RESOURCE = "ltad_driver"
"""Custom resource of the node(s) that host sweep trial drivers (the head): one unit per driver."""
LOCAL_DRIVER_SLOTS = 8
"""`ltad_driver` units of a local head: trial drivers (idle processes while their trial trains) at once."""


def connect(**kwargs: Any) -> None:
    """`ray.init` for a driver: the cluster in RAY_ADDRESS, else a local one (no-op if connected)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
    else:
        kwargs.setdefault("resources", {DRIVER_RESOURCE: LOCAL_DRIVER_SLOTS})
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
