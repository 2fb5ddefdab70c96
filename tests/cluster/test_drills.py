"""Cluster drills on a real two-node Ray (tests/cluster/conftest.py's building blocks): a node that joins
after the job was submitted, and that node preempted (drained with reason PREEMPTION, killed, started
again) in the middle of phase 2. One job carries both drills, to keep the suite's time (each `ltad
train` pays its worker start-up and three stages). Timings are printed (`-s`) and recorded in
docs/results/cluster-drills.json; docs/CLUSTER.md and docs/RELIABILITY.md describe what is proven.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import head_and_node_b
from tests.integration.conftest import REPO, tiny_config

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.slow]
RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 10
"""scaling.worker_start_timeout_s of the drill: below node B's delay, so the first start times out."""
JOIN_DELAY_S = 25
"""Node B starts this long after the job is submitted."""
DEADLINE_S = 10
"""The drain's deadline: Ray Train tears the group down then, and the drill kills node B."""


@pytest.fixture(scope="module")
def late_cluster(s3_server, tmp_path_factory):
    """(head, node B not started yet, the environment for job submission against the head)."""
    with head_and_node_b(tmp_path_factory, "drill", start_node_b=False) as cluster:
        yield cluster


def _node_ids(node) -> set[str]:
    return {n["raylet"]["nodeId"] for n in node.head_alive_nodes()}


def _wait_log(client, job: str, pattern: str, timeout: float) -> re.Match:
    """The first match of `pattern` in the job's logs, polled every second; fails naming the job's state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, client.get_job_logs(job))
        if found:
            return found
        status = str(client.get_job_status(job))
        assert "RUNNING" in status or "PENDING" in status, (status, client.get_job_logs(job)[-4000:])
        time.sleep(1)
    raise AssertionError(f"no '{pattern}' in the job's logs after {timeout:.0f} s")


def _wait_done(client, job: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job))
        if not ("RUNNING" in status or "PENDING" in status):
            return status
        time.sleep(2)
    raise AssertionError(f"job {job} still running after {timeout:.0f} s")


def _line(path: Path, needle: str) -> str:
    return next(x for x in path.read_text(errors="ignore").splitlines() if needle in x).strip()


def _drain(head, node_id: str) -> subprocess.CompletedProcess:
    """`ray drain-node` with reason PREEMPTION and a deadline, as a cloud's spot reclaim notice does."""
    gcs = f"127.0.0.1:{head.ports()['gcs']}"
    cmd = [
        RAY, "drain-node", "--address", gcs, "--node-id", node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION",
        "--reason-message", "ltad drill: spot reclaim", "--deadline-remaining-seconds", str(DEADLINE_S),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **head.env()})


def test_late_node_and_preemption_in_one_job(late_cluster, tiny_data, s3_server, tmp_path):
    """Submitted with only the head (1 CPU; the job needs 2 one-CPU workers): the first worker group
    start times out after scaling.worker_start_timeout_s, Ray Train starts it again, node B joins and
    the job runs on both nodes. In phase 2 node B is drained (PREEMPTION, deadline 10 s): the loop
    writes the checkpoint of the step it sees the notice at and holds; node B is killed at the
    deadline and started again; the group restarts there and phase 2 resumes from that very step;
    the job finishes with the same run identity."""
    from ray.job_submission import JobSubmissionClient

    from ltad.data.manifest import read_manifest
    from ltad.io import storage

    head, node, env = late_cluster
    assert len(node.head_alive_nodes()) == 1
    prefix = f"s3://{s3_server.bucket}/drill-{tmp_path.name}"
    name = f"drill-{tmp_path.name}"[:40]
    cfg = tiny_config(
        tmp_path,
        tiny_data,
        scaling={"num_workers": 2, "cpus_per_worker": 1, "worker_start_timeout_s": START_TIMEOUT_S},
        phase2={"steps": 40, "stats_samples": 16},
        run={"log_every": 10, "checkpoint_every": 100, "max_failures": 2},
    )
    (tmp_path / "drill.yaml").write_text(cfg.to_yaml())
    client = JobSubmissionClient(env["RAY_ADDRESS"])
    entry = (
        f"python jobs/train.py --config {tmp_path / 'drill.yaml'} --data {tiny_data} --out {prefix}/out "
        f"--set run.storage_path={prefix}/ray --set run.name={name}"
    )
    # Ray Train's watcher polls the drain state every second (default 5 s) so the drill stays short
    runtime_env = {"working_dir": str(REPO), "env_vars": {"RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1"}}
    tic = time.monotonic()
    job = client.submit_job(entrypoint=entry, runtime_env=runtime_env)
    timings: dict[str, float] = {}

    # --- late join: node B arrives after the first start timed out
    time.sleep(max(0.0, JOIN_DELAY_S - (time.monotonic() - tic)))
    assert "RUNNING" in str(client.get_job_status(job)) or "PENDING" in str(client.get_job_status(job))
    assert "phase1: starting" not in client.get_job_logs(job)  # nothing ran on the head alone
    before = _node_ids(node)
    node.start()
    first_b = (_node_ids(node) - before).pop()
    timings["node_b_joined_s"] = time.monotonic() - tic
    _wait_log(client, job, r"phase2: model and ZeRO-\d engine ready", timeout=300)
    timings["phase2_started_s"] = time.monotonic() - tic
    timed_out = [
        p
        for p in (head.temp_dir / "session_latest" / "logs").glob("*")
        if p.is_file()
        and f"startup timed out after {float(START_TIMEOUT_S)} seconds" in p.read_text(errors="ignore")
    ]
    assert timed_out, "no worker group start timed out after scaling.worker_start_timeout_s"

    # --- preemption: drain node B, kill it at the deadline, start it again
    drained = _drain(head, first_b)
    assert drained.returncode == 0, drained.stdout + drained.stderr
    drain_at = time.monotonic()
    found = _wait_log(
        client, job, r"phase2: preemption checkpoint at step (\d+): node\(s\) (\w+).*", timeout=60
    )
    noticed = int(found.group(1))
    timings["notice_to_checkpoint_s"] = time.monotonic() - drain_at
    assert first_b.startswith(found.group(2)) and 0 < noticed < 40
    time.sleep(max(0.0, DEADLINE_S - (time.monotonic() - drain_at)))
    node.stop()
    before = _node_ids(node)
    node.start()
    assert _node_ids(node) - before, "node B did not come back"
    resumed = _wait_log(client, job, r"phase2: resuming from its checkpoint at step (\d+)", timeout=300)
    timings["drain_to_resumed_s"] = time.monotonic() - drain_at
    # steps lost: every step that ended before the notice was seen is in the checkpoint it resumed from
    assert int(resumed.group(1)) == noticed

    status = _wait_done(client, job, timeout=400)
    timings["job_s"] = time.monotonic() - tic
    log = client.get_job_logs(job)
    assert "SUCCEEDED" in status, (status, log[-4000:])
    metrics = storage.read_json(f"{prefix}/out/metrics.json")
    assert metrics["n_evaluated"] == read_manifest(tiny_data).samples("test")
    assert metrics["provenance"]["world_size"] == 2
    recorded = storage.read_json(f"{prefix}/ray/{name}-phase2/ltad-identity.json")
    assert metrics["provenance"]["identity"]["phase2"]["fingerprint"] == recorded["fingerprint"]
    assert len(recorded["commits"]) == 1  # resumed by the same code: one identity, one commit
    history = [json.loads(x) for x in storage.read_bytes(f"{prefix}/out/history.jsonl").decode().splitlines()]
    assert [r["step"] for r in history if r["stage"] == "phase2"] == [10, 20, 30, 40]  # no step twice
    lines = [found.group(0), resumed.group(0), _line(timed_out[0], "startup timed out after")]
    lines += re.findall(r"phase\d: Ray's preemption notice read \d+ times, [\d.]+ s in all", log)
    print(f"\n[drill] {json.dumps({k: round(v, 1) for k, v in timings.items()})}", flush=True)
    print("\n".join(f"[drill] {x}" for x in lines), flush=True)
