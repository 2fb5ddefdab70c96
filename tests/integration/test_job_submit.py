"""`ray job submit --working-dir . -- python jobs/train.py ...` against a local head (scripts/ray-local).

The one job submission also carries the secret-leak check (formerly its own job in
tests/reliability/test_security.py): the session's SeaweedFS has a random secret, which must appear
in no log, job metadata, file of the Ray head or stored object. Its encode stage builds the encoder
from an s3:// checkpoint into a cache outside the data prefix (formerly its own Ray run in
tests/integration/test_encoder_weights.py, `test_ray_workers_encode_with_weights_from_s3`).
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


def _submit(env: dict, *args: str, job_env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [RAY, "job", "submit", "--address", env["RAY_ADDRESS"], "--working-dir", "."]
    if job_env:
        cmd += ["--runtime-env-json", json.dumps({"env_vars": job_env})]
    cmd += ["--", *args]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def test_job_submit_runs_cache_both_phases_and_evaluation(ray_head, tiny_data, s3_server, tmp_path):
    """The whole job through `ray job submit`. Its encode stage runs on 2 Ray Train workers (in Ray's
    own working dirs) and builds the encoder from an s3:// checkpoint: the feature cache is keyed by its
    sha256 and records it; it is written to `data.cache_uri` (outside the data prefix), decoded in a
    DataLoader worker, and leaves a verified done-record for every shard (what a restarted encode
    skips). Its own weights and cache root make the encode stage run here whatever ran before."""
    import hashlib

    from ray.job_submission import JobStatus, JobSubmissionClient

    from ltad.config import EncoderConfig
    from ltad.data.manifest import manifest_uri, read_manifest
    from ltad.io import storage
    from ltad.training.feature_cache import cache_uri, find_cache, fingerprint, verified_shard
    from tests.integration.conftest import TINY_MODEL, encoder_checkpoint

    prefix = f"s3://{s3_server.bucket}/job-{tmp_path.name}"
    out = f"{prefix}/out"
    local = encoder_checkpoint(tmp_path / "clip.pt")
    weights_uri = f"{prefix}/weights/clip.pt"
    storage.upload_file(local, weights_uri)
    root = f"{prefix}/caches-elsewhere"
    cfg = tiny_config(
        tmp_path,
        tiny_data,
        model={"encoder": {**TINY_MODEL["encoder"], "pretrained": weights_uri}},
        data={"use_feature_cache": True, "cache_uri": root, "loader_workers": 1},
    )
    config = tmp_path / "tiny.yaml"
    config.write_text(cfg.to_yaml())
    cache = tmp_path / "cache" / "weights"  # the job's LTAD_CACHE_DIR: workers fetch the weights there
    proc = _submit(
        ray_head, "python", "jobs/train.py", "--config", str(config), "--data", tiny_data, "--out", out,
        "--set", f"run.storage_path={prefix}/ray", "--set", "run.name=job",
        job_env={"LTAD_CACHE_DIR": str(tmp_path / "cache")},
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

    # the feature cache: under data.cache_uri, not in the data prefix, keyed by the weights' sha256
    assert find_cache(tiny_data, cfg.model.encoder, manifest) is None  # not in the data prefix
    found = find_cache(tiny_data, cfg.model.encoder, manifest, root)
    assert found is not None and found.startswith(root + "/")
    assert metrics["provenance"]["feature_cache"].startswith(root + "/")
    assert found != cache_uri(tiny_data, EncoderConfig(**TINY_MODEL["encoder"]), manifest, root)
    cached = read_manifest(found)
    assert cached.extra["precision"] == "fp32"
    cache_id = fingerprint(cfg.model.encoder, manifest)
    for split in ("train", "test"):
        assert [verified_shard(found, e.name, cache_id, "fp32") for e in cached.shards[split]] == list(
            cached.shards[split]
        )
    weights = cached.extra["weights"]
    sha = hashlib.sha256(local.read_bytes()).hexdigest()
    assert weights["source"] == weights_uri and weights["sha256"] == sha
    assert [p.name for p in (cache / "blobs").iterdir()] == [f"{sha}.pt"]  # one node, one copy
    assert storage.exists(manifest_uri(found))
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
    objects = storage.list(prefix) + storage.list(f"{tiny_data}/features")  # the cache is under prefix
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
