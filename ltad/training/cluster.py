"""Connecting to Ray: the one place every job, command and sweep joins (or starts) a cluster.

With `RAY_ADDRESS` set (a job submitted with `ray job submit`, or a user's cluster) it joins that
cluster; otherwise it starts a local one with the dashboard on loopback, which Tune-over-Train needs
to free finished trials' placement groups.

The driver's non-secret S3 settings (`ltad.io.storage.S3_SETTINGS`: endpoint, region) become
environment variables of the job's runtime environment, which Ray gives to every process of the job
on every node: Ray Train workers, Tune trial functions and plain tasks. A node started without
them (e.g. one with only an instance role) then reads the job's store, not AWS. Credentials are never
passed on. Ray merges `ray.init(runtime_env=...)` with the runtime env of a `ray job submit` per
environment variable and refuses a variable set in both, so a variable the submitter already set is
left to the submitter's value.

A local cluster declares `ltad_driver` like the head in cluster.yaml, so sweep trial drivers are
placed as on a real cluster (ltad/sweep/driver.py).
"""

from __future__ import annotations

import json
import os
from typing import Any

JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray in a submitted job's driver: the job config, with the submitter's runtime env."""


def submitted_env_vars() -> set[str]:
    """Environment variables the runtime env of the submitted job (if any) already sets."""
    raw = os.environ.get(JOB_CONFIG_VAR)
    if not raw:
        return set()
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return set()
    return set(runtime_env.get("env_vars") or {})


def travelling_env() -> dict[str, str]:
    """The S3 settings of this driver that the job's runtime env must carry to every worker."""
    from ltad.io.storage import s3_settings

    taken = submitted_env_vars()
    return {k: v for k, v in s3_settings().items() if k not in taken}


DRIVER_RESOURCE = "ltad_driver"
"""Custom resource of the node(s) that host sweep trial drivers (the head): one unit per driver."""
LOCAL_DRIVER_SLOTS = 8
"""`ltad_driver` units of a local head: trial drivers (idle processes while their trial trains) at once."""


def cluster_address() -> str | None:
    """RAY_ADDRESS when a driver can join it: a GCS address (host:port, `auto`, `ray://...`). An http(s)
    URL is the dashboard's job-submission address (what `ray job submit` takes, and what many users
    export): None, since `ray.init` cannot join it."""
    address = os.environ.get("RAY_ADDRESS", "")
    return None if not address or address.startswith(("http://", "https://")) else address


def connect(**kwargs: Any) -> bool:
    """`ray.init` for a driver: the cluster in RAY_ADDRESS, else a local one. False (and nothing done)
    when this process is connected already: then the caller must not shut Ray down either."""
    import ray

    if ray.is_initialized():
        return False
    env = travelling_env()
    if env:
        runtime_env = dict(kwargs.pop("runtime_env", None) or {})
        runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
        kwargs["runtime_env"] = runtime_env
    if os.environ.get("RAY_ADDRESS"):
        if cluster_address() is None:
            from ltad.errors import ConfigError

            raise ConfigError(
                f"RAY_ADDRESS '{os.environ['RAY_ADDRESS']}' is a job-submission (dashboard) URL, which a "
                "driver cannot join: submit with `ray job submit`, set RAY_ADDRESS to the cluster's GCS "
                "address (head:6379), or unset it to start a local Ray"
            )
        ray.init(**kwargs)
    else:
        kwargs.setdefault("resources", {DRIVER_RESOURCE: LOCAL_DRIVER_SLOTS})
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", **kwargs)
    return True
