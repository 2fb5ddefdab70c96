"""scripts/s3 and scripts/ray-local as a user runs them: start, env, status, data across restarts, stop."""

from __future__ import annotations

import os
import random
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tools.services.ports import free_base
from tools.services.seaweed import GRPC, OFFSETS

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(REPO / "scripts" / script), *args], env=env, capture_output=True, text=True, timeout=180
    )


def _exports(line: str) -> dict[str, str]:
    words = shlex.split(line)
    assert words[0] == "export"
    return dict(w.split("=", 1) for w in words[1:])


def test_s3_script_lifecycle(tmp_path):
    port = free_base(OFFSETS + tuple(o + GRPC for o in OFFSETS), start=random.randrange(21000, 50000, 10))
    env = {**os.environ, "S3_DIR": str(tmp_path / "s3"), "S3_PORT": str(port)}
    started = _run("s3", "start", "--bucket", "demo", env=env)
    assert started.returncode == 0, started.stderr
    try:
        creds = tmp_path / "s3" / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        exported = _exports(_run("s3", "env", env=env).stdout.strip())
        assert exported["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        assert exported["AWS_DEFAULT_REGION"] == "us-east-1"
        assert exported["AWS_SECRET_ACCESS_KEY"] in creds.read_text()
        client = boto3.client(
            "s3",
            endpoint_url=exported["AWS_ENDPOINT_URL"],
            aws_access_key_id=exported["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=exported["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        client.put_object(Bucket="demo", Key="k", Body=b"kept across restarts")
        bad = boto3.client(
            "s3",
            endpoint_url=exported["AWS_ENDPOINT_URL"],
            aws_access_key_id="x",
            aws_secret_access_key="y",
            region_name="us-east-1",
        )
        with pytest.raises(Exception, match="InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied"):
            bad.list_buckets()
        assert _run("s3", "status", env=env).returncode == 0
        assert _run("s3", "stop", env=env).stdout.strip() == "stopped"
        assert _run("s3", "status", env=env).returncode == 1
        assert not list(Path("/tmp").glob(f"seaweedfs-*-grpc-{port + GRPC}.sock"))
        # Restart with data: `start` returns only once old objects are readable again.
        assert _run("s3", "start", env=env).returncode == 0
        assert _exports(_run("s3", "env", env=env).stdout.strip()) == exported  # same credentials
        assert client.get_object(Bucket="demo", Key="k")["Body"].read() == b"kept across restarts"
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
        ours = [line.split()[3] for line in listening.splitlines() if f":{port}" in line.split()[3]]
        assert ours and all(addr.startswith("127.0.0.1:") for addr in ours)
    finally:
        _run("s3", "stop", env=env)


@pytest.mark.slow
def test_ray_local_lifecycle_and_job_env(tmp_path):
    env = {**os.environ, "RAY_DIR": str(tmp_path / "ray"), "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    started = _run("ray-local", "start", env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        exported = _exports(_run("ray-local", "env", env=env).stdout.strip())
        assert exported["RAY_AUTH_MODE"] == "disabled"
        assert exported["RAY_ADDRESS"].startswith("http://127.0.0.1:")
        from ray.job_submission import JobStatus, JobSubmissionClient

        os.environ["RAY_AUTH_MODE"] = "disabled"
        client = JobSubmissionClient(exported["RAY_ADDRESS"])
        job = client.submit_job(
            entrypoint=f"{sys.executable} -c \"import os; print('S3', os.environ['AWS_ENDPOINT_URL'])\""
        )
        deadline = time.monotonic() + 90
        while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            assert time.monotonic() < deadline, "job did not finish"
            time.sleep(0.5)
        assert client.get_job_status(job) == JobStatus.SUCCEEDED
        assert "S3 http://127.0.0.1:1" in client.get_job_logs(job)  # the head passed the S3 env on
        assert _run("ray-local", "status", env=env).returncode == 0
    finally:
        stopped = _run("ray-local", "stop", env=env)
    assert stopped.stdout.strip() == "stopped"
    assert _run("ray-local", "status", env=env).returncode == 1
