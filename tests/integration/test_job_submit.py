"""`ray job submit --working-dir . -- python jobs/train.py ...` against a local head (scripts/ray-local).

The one job submission also carries the secret-leak check (formerly its own job in
tests/reliability/test_security.py): the session's SeaweedFS has a random secret, which must appear
in no log, job metadata, file of the Ray head or stored object.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import REPO, tiny_config
from tools.services.ray_local import RayHead

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RAY = str(Path(sys.executable).parent / "ray")


def _submit(env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [RAY, "job", "submit", "--address", env["RAY_ADDRESS"], "--working-dir", "."]
    cmd += ["--", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_job_submit_runs_cache_both_phases_and_evaluation(ray_head, tiny_data, s3_server, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from ltad.data.manifest import read_manifest
    from ltad.io import storage

    out = f"s3://{s3_server.bucket}/job-{tmp_path.name}/out"
    cfg = tiny_config(tmp_path, tiny_data, data={"use_feature_cache": True})
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.to_yaml())
    proc = _submit(
        ray_head, "python", "jobs/train.py", "--config", str(config), "--data", tiny_data, "--out", out,
        "--set", f"run.storage_path=s3://{s3_server.bucket}/job-{tmp_path.name}/ray", "--set", "run.name=job",
        "--set", "model.encoder.text_seed=1",  # a cache of its own: the encode stage always runs here
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "[mean]" in log and "feature cache: encoding" in log  # table and progress streamed back
    metrics = storage.read_json(f"{out}/metrics.json")
    manifest = read_manifest(tiny_data)
    assert metrics["n_evaluated"] == manifest.samples("test")
    assert 0.0 <= metrics["image_AUROC"] <= 1.0 and set(metrics["per_class"]) == set(manifest.classes)
    # no LTAD_GIT_COMMIT anywhere: the job read the commit from the .git/HEAD and refs the upload carries
    checkout = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert metrics["provenance"]["git_commit"] == f"{checkout.strip()}+unverified"
    assert metrics["provenance"]["feature_cache"].startswith(f"{tiny_data}/features/")
    assert storage.exists(f"{out}/model/weights.pt") and storage.exists(f"{out}/report.md")
    client = JobSubmissionClient(ray_head["RAY_ADDRESS"])
    jobs = client.list_jobs()
    assert any(j.status == JobStatus.SUCCEEDED and "jobs/train.py" in j.entrypoint for j in jobs)

    # the S3 secret leaks nowhere: logs, job metadata, the head's session dir (logs, uploaded working
    # dir), every object the job stored (checkpoints, outputs, cache)
    secret = ray_head["AWS_SECRET_ACCESS_KEY"]
    metadata = json.dumps([j.dict() if hasattr(j, "dict") else vars(j) for j in jobs], default=str)
    job_logs = "".join(client.get_job_logs(j.submission_id) for j in jobs if j.submission_id)
    assert secret not in log and secret not in job_logs and secret not in metadata
    head = RayHead(Path(ray_head["RAY_DIR"]))
    assert _files_holding(secret.encode(), [head.temp_dir, head.state_dir]) == []
    objects = storage.list(f"s3://{s3_server.bucket}/job-{tmp_path.name}") + storage.list(
        f"{tiny_data}/features"
    )
    assert any(u.endswith("model.pt") for u in objects)
    assert [u for u in objects if secret.encode() in storage.read_bytes(u)] == []
    # the head's dashboard listens on loopback only
    dash = int(ray_head["RAY_ADDRESS"].rsplit(":", 1)[1])
    conns = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert {c.laddr.ip for c in conns if c.laddr.port == dash} <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _files_holding(secret: bytes, roots: list[Path]) -> list[str]:
    hits = []
    for root in roots:
        for path in (p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            try:
                if secret in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


def test_job_with_bad_data_fails_with_one_clear_line(ray_head, s3_server):
    missing = f"s3://{s3_server.bucket}/nothing-here"
    proc = _submit(ray_head, "python", "jobs/train.py", "--data", missing)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"jobs/train.py: error: no manifest.json at {missing}: run ltad prepare first" in log
    assert "Traceback" not in log
