"""Shared fixtures: a real SeaweedFS server for the test session, on free loopback ports."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BUCKET = "ltad-test"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """SeaweedFS in a tmp dir with AWS_* set for the session and the bucket `ltad-test` created.

    The server object has `.stop()` / `.start()` (fault tests) and `.bucket`; the environment is
    restored and the server stopped at the end of the session.
    """
    from ltad.errors import UserError
    from ltad.io import storage
    from tools.services.ports import free_base
    from tools.services.seaweed import GRPC, OFFSETS, SeaweedServer

    # A random start keeps parallel test sessions on this machine from racing for the same block; a
    # block taken between the check and the server's bind (another session's server) is tried again.
    for attempt in range(3):
        base = free_base(OFFSETS + tuple(o + GRPC for o in OFFSETS), start=random.randrange(21000, 50000, 10))
        server = SeaweedServer(tmp_path_factory.mktemp("s3"), port=base)
        try:
            server.start()
            break
        except UserError:
            if attempt == 2:
                raise
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    storage.reset_client()
    server.create_bucket(BUCKET)
    server.bucket = BUCKET
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        storage.reset_client()


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """In-process Ray with 2 CPUs; started after the S3 variables are set so workers inherit them."""
    import ray

    from tools.services.ports import free_port

    ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        object_store_memory=200 << 20,
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
