"""A two-node Ray cluster on this machine that shares no disk and no S3 endpoint setting by accident.

The head (1 CPU) is a `scripts/ray-local` head started with the test's S3 environment. Node B (1 CPU)
runs in its own mount namespace with an empty tmpfs over the pytest temp folders (local data, outputs,
SeaweedFS's files), over the head's Ray temp dir and over this checkout (only its runs/ and .local/
when the venv lives in it); its environment has the S3 credentials but no AWS_ENDPOINT_URL, like a cluster node that
has only an instance role. With `scaling.num_workers=2, cpus_per_worker=1` a job gets one Ray Train
worker on each node. Module-scoped; never at the same time as the integration suite's Ray.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, tiny_data  # noqa: F401 - the session's tiny shard set

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
NO_ENDPOINT = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@contextlib.contextmanager
def head_and_node_b(tmp_path_factory, name: str, start_node_b: bool = True):
    """A 1-CPU head (started) and node B in its own mount namespace (started unless `start_node_b` is
    false: the late-join drill starts it itself), with the environment for `ray job submit`."""
    from tools.services.ray_local import RayHead, RayWorkerNode

    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux `unshare` for node B's own mount namespace")
    head = RayHead(tmp_path_factory.mktemp(f"{name}-head"), num_cpus=1)
    # node B's own state (and Ray temp dir) outside every folder hidden from it
    node_state = Path(tempfile.mkdtemp(prefix="ltad-nb-", dir="/tmp"))
    hidden = [tmp_path_factory.getbasetemp(), head.temp_dir]
    if not Path(sys.prefix).is_relative_to(REPO):
        hidden.append(REPO)
    else:  # node B needs the checkout's venv: hide the folders local runs write instead
        for folder in (REPO / "runs", REPO / ".local"):
            folder.mkdir(exist_ok=True)
            hidden.append(folder)
    node = RayWorkerNode(node_state, head, num_cpus=1, hidden=tuple(hidden), drop_env=NO_ENDPOINT)
    head.start()
    try:
        head.temp_dir.mkdir(parents=True, exist_ok=True)
        if start_node_b:
            node.start()
        yield head, node, {**os.environ, **head.env()}
    finally:
        node.stop()
        head.stop()
        shutil.rmtree(node_state, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes(s3_server, tmp_path_factory):
    """(head, node B, the environment for `ray job submit` against the head)."""
    with head_and_node_b(tmp_path_factory, "cluster") as cluster:
        yield cluster
