"""The training job and the sweep on a two-node cluster (tests/cluster/conftest.py), as users submit them.

Each case is timed (printed with `-s`; docs/RELIABILITY.md "Two-node cluster suite" has the figures).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import REPO, encoder_checkpoint, tiny_config

pytestmark = [pytest.mark.cluster, pytest.mark.integration, pytest.mark.slow]
RAY = str(Path(sys.executable).parent / "ray")
PYTHON = str(Path(sys.executable))


def _submit(
    env: dict, *args: str, timeout: float = 900, job_env: dict | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    env_vars = dict(job_env or {})  # no LTAD_GIT_COMMIT: the job reads the commit from the uploaded refs
    cmd = [RAY, "job", "submit", "--address", env["RAY_ADDRESS"], "--working-dir", "."]
    cmd += ["--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *args]
    tic = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - tic
    print(f"\n[cluster] {' '.join(args[:2])}: {took:.0f} s, exit {proc.returncode}", flush=True)
    return proc, took


def _job_id(env: dict, marker: str) -> str:
    """The Ray job id of the submitted job whose entrypoint holds `marker`."""
    from ray.job_submission import JobSubmissionClient

    jobs = [j for j in JobSubmissionClient(env["RAY_ADDRESS"]).list_jobs() if marker in j.entrypoint]
    assert len(jobs) == 1, [j.entrypoint for j in jobs]
    return jobs[0].job_id


def _train_worker_nodes(env: dict, job_id: str) -> list[str]:
    """Node ids of every Ray Train worker actor the job created (alive or finished)."""
    from ray.util.state import list_actors

    actors = list_actors(
        address=env["RAY_ADDRESS"],
        filters=[("class_name", "=", "RayTrainWorker"), ("job_id", "=", job_id)],
        detail=True,
        limit=1000,
        raise_on_missing_output=False,
    )
    return [a.node_id for a in actors]


def _config(tmp: Path, data: str, **sections) -> Path:
    cfg = tiny_config(tmp, data, scaling={"num_workers": 2, "cpus_per_worker": 1}, **sections)
    path = tmp / "tiny.yaml"
    path.write_text(cfg.to_yaml())
    return path


def _other_data(s3_server, tmp_path: Path) -> str:
    """Shards of another synthetic dataset (another seed): the same run name must refuse them."""
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    root = synthesize(
        tmp_path / "other", classes=3, image_size=64, train_per_class=8, test_per_class=6, seed=5
    )
    split = make_split(read_dataset("synth", root), "exp", ratio=4, seed=5).save(tmp_path / "other.json")
    uri = f"s3://{s3_server.bucket}/cluster-other-{tmp_path.name}"
    prepare("synth", root, split, uri, test_shard_samples=5, log=lambda _msg: None)
    return uri


def test_job_runs_on_both_nodes_with_everything_on_s3(two_nodes, tiny_data, s3_server, tmp_path):
    """The job on both nodes, encoder weights from s3:// (each node fetches its own copy into its own
    cache), data, output and checkpoints on S3, within its traffic budget (counted at a proxy in front
    of the store: `_traffic_budget`); then the same run name with other data is refused."""
    import hashlib
    from urllib.parse import urlsplit

    from ltad.data.manifest import read_manifest
    from ltad.io import storage
    from tools.services.s3_proxy import CountingProxy

    head, node, env = two_nodes
    assert len(node.head_alive_nodes()) == 2
    prefix = f"s3://{s3_server.bucket}/cluster-{tmp_path.name}"
    weights = encoder_checkpoint(tmp_path / "clip.pt", seed=7)
    storage.upload_file(weights, f"{prefix}/weights/clip.pt")
    proxy = CountingProxy(urlsplit(storage.endpoint()).port)  # the job's every S3 request goes through it
    # a cache dir under the pytest folders: node B sees its own empty tmpfs there, so it downloads itself
    job_env = {"LTAD_CACHE_DIR": str(tmp_path / "cache"), "AWS_ENDPOINT_URL": proxy.endpoint}
    run = [
        "--out", f"{prefix}/out", "--set", f"run.storage_path={prefix}/ray", "--set", f"run.name={tmp_path.name}",
        "--set", f"model.encoder.pretrained={prefix}/weights/clip.pt",
    ]  # fmt: skip
    config = str(_config(tmp_path, tiny_data))
    try:
        proc, took = _submit(
            env, "python", "jobs/train.py", "--config", config, "--data", tiny_data, *run, job_env=job_env
        )
        records = proxy.records()
    finally:
        proxy.stop()
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "preflight: multi-node cluster; data manifest readable on 1 other node(s)" in log
    metrics = storage.read_json(f"{prefix}/out/metrics.json")
    assert metrics["n_evaluated"] == read_manifest(tiny_data).samples("test")
    assert metrics["provenance"]["world_size"] == 2
    checkout = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    assert metrics["provenance"]["git_commit"] == f"{checkout.strip()}+unverified"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert metrics["provenance"]["weights"]["sha256"] == sha
    assert metrics["provenance"]["weights"]["source"] == f"{prefix}/weights/clip.pt"
    assert any(p.name == sha or sha in p.name for p in (tmp_path / "cache").rglob("*")), "head's cached copy"
    # one worker group for the whole job (every stage): one worker on the head, one on node B
    nodes = _train_worker_nodes(env, _job_id(env, tmp_path.name))
    assert len(nodes) == 2, nodes
    assert len(set(nodes)) == 2
    assert took < 600
    _traffic_budget(records, prefix, weights, worker_nodes=len(set(nodes)), tmp_path=tmp_path)

    other = _other_data(s3_server, tmp_path)
    job_env.pop("AWS_ENDPOINT_URL")  # the proxy is gone: the head's own endpoint
    proc, took = _submit(
        env, "python", "jobs/train.py", "--config", config, "--data", other, *run, job_env=job_env
    )
    log = proc.stdout + proc.stderr
    line = next((x for x in log.splitlines() if x.startswith("jobs/train.py: error: ")), "")
    assert "already holds a phase1 run made from other inputs (data.manifest_sha256 differs)" in line, log[
        -3000:
    ]
    print(f"[cluster] {line}", flush=True)
    assert "exit code 2" in log and "Traceback" not in log and "phase1: starting" not in log
    assert storage.read_json(f"{prefix}/out/metrics.json") == metrics  # the finished run is untouched
    assert took < 90


def _get(record: dict, part: str) -> bool:
    """A GET of an object whose key holds `part` (not a listing)."""
    return record["method"] == "GET" and not record["query"] and part in record["key"]


def _traffic_budget(
    records: list[dict], prefix: str, weights: Path, *, worker_nodes: int, tmp_path: Path
) -> None:
    """What one two-node job may ask of the store (docs/RELIABILITY.md "Traffic budget"): the encoder
    weights fetched once per node that runs workers (the driver names them by HEAD only); one copy
    of them per run (the published model's, by server-side copy: checkpoints and the evaluation refer
    to them by sha256); publishing by server-side copies only; no rank reads ZeRO state it did not
    need (a fresh run restores nothing). The counts are printed (docs/results/cluster-suite.json)."""
    from ltad.io import storage
    from tools.services.s3_proxy import summarise

    base = prefix.removeprefix("s3://")
    (tmp_path / "traffic.json").write_text(json.dumps(records))  # for a failed budget's post-mortem
    weights_key, size = f"{base}/weights/clip.pt", weights.stat().st_size
    fetches = [r for r in records if r["key"] == weights_key and r["method"] == "GET"]
    assert len(fetches) == worker_nodes and sum(r["down"] for r in fetches) == worker_nodes * size, fetches
    copies = [u for u, n in storage.list_sizes(prefix) if n == size]
    assert copies == [f"{prefix}/out/model/encoder.pt", f"{prefix}/weights/clip.pt"], copies
    out = f"{base}/out/"
    writes = [r for r in records if r["key"].startswith(out) and r["method"] in ("PUT", "POST")]
    uploaded = [r["key"] for r in writes if not r["copy_source"]]
    assert uploaded == [f"{out}history.jsonl"] * len(uploaded), uploaded  # the driver's own file only
    copied = {r["key"]: r["copy_source"] for r in writes if r["copy_source"]}
    assert copied[f"{out}model/encoder.pt"] == weights_key and f"{out}metrics.json" in copied
    read = {r["key"].split("/evaluation-", 1)[1].split("/", 1)[1] for r in records if _get(r, "/evaluation-")}
    assert read <= {"model/export.json"}, read  # the driver reads the weights' record, never the files
    zero = [r["key"] for r in records if _get(r, "zero_pp_rank_")]
    assert zero == [], zero
    budget = {
        "requests": len(records),
        "by_method": summarise(records, ""),
        "by_method_under_the_run_prefix": summarise(records, base),
        "weights_gets": len(fetches),
        "weights_bytes_down": sum(r["down"] for r in fetches),
        "weights_copies_stored": len(copies),
        "publish_server_side_copies": len(copied),
        "publish_uploads": len(uploaded),
        "zero_state_gets": len(zero),
        "bytes_down": sum(r["down"] for r in records),
        "bytes_up": sum(r["up"] for r in records),
    }
    print(f"[cluster] traffic {json.dumps(budget)}", flush=True)


def test_local_output_is_refused_before_any_stage(two_nodes, tiny_data, tmp_path):
    _, _, env = two_nodes
    out = tmp_path / "out"
    proc, took = _submit(
        env, "python", "jobs/train.py", "--config", str(_config(tmp_path, tiny_data)), "--data", tiny_data,
        "--out", str(out), "--set", f"run.name=refused-{tmp_path.name}",
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    expected = (
        f"jobs/train.py: error: run.output '{out}' is a local path, but this Ray cluster has several nodes "
        "that share no disk: use an s3:// URI, or set run.shared_fs=true if "
        f"'{out}' is on a filesystem mounted at the same path on every node"
    )
    assert expected in log, log[-3000:]
    print(f"[cluster] {expected}", flush=True)
    assert "exit code 2" in log and "Traceback" not in log
    assert "phase1: starting" not in log and not out.exists()
    assert _train_worker_nodes(env, _job_id(env, f"refused-{tmp_path.name}")) == []
    assert took < 60


def test_data_on_a_falsely_declared_shared_fs_is_refused_by_the_other_node(
    two_nodes, tiny_data, s3_server, tmp_path
):
    from ltad.io import storage

    _, _, env = two_nodes
    local = tmp_path / "shards"  # on the head only: node B has an empty tmpfs over the pytest folders
    for uri in storage.list(tiny_data):
        storage.write_bytes(str(local / uri[len(tiny_data) + 1 :]), storage.read_bytes(uri))
    prefix = f"s3://{s3_server.bucket}/cluster-{tmp_path.name}"
    proc, took = _submit(
        env, "python", "jobs/train.py", "--config", str(_config(tmp_path, str(local))), "--data", str(local),
        "--out", f"{prefix}/out", "--set", f"run.storage_path={prefix}/ray", "--set", "run.shared_fs=true",
        "--set", f"run.name=nfs-{tmp_path.name}",
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    line = next((x for x in log.splitlines() if x.startswith("jobs/train.py: error: ")), "")
    assert line.startswith(f"jobs/train.py: error: data.uri '{local}' cannot be read on node "), log[-3000:]
    assert line.endswith(f"where workers run: no manifest.json at {local}: run ltad prepare first")
    print(f"[cluster] {line}", flush=True)
    assert "exit code 2" in log and "Traceback" not in log and "phase1: starting" not in log
    assert not storage.exists(f"{prefix}/out/metrics.json")
    assert took < 60


def test_open_sweep_across_both_nodes_reaches_results_csv_and_mlflow(
    two_nodes, tiny_data, s3_server, tmp_path
):
    """An open sweep (ltad/sweep/space.py `params`) searched by Optuna, submitted as a Ray job to the
    two nodes: two fields the grid sweeps cannot search (`phase2.lr` loguniform, the scoring weight
    `model.score.fusion_lambda` uniform), two trials of 2 workers each (one per node), two steps per
    phase. Neither field shapes phase 1, so both trials share one phase-1 run. Each trial's own values
    reach its run config, sweep.json, the summary's results.csv and MLflow (Tune's callback runs in the
    job's driver on the head, so a store on this machine works). This test also carries what
    tests/integration/test_open_sweep.py checked in process (that file is gone; its one-node cost was
    83 s)."""
    import csv
    import io
    import math

    from mlflow.tracking import MlflowClient

    from ltad.eval.summary import read_sweep
    from ltad.io import storage
    from ltad.sweep.driver import TRIAL_STAGE, launches
    from ltad.sweep.space import load_space
    from ltad.training.tracking import allow_file_store, mlflow_uri

    fields = ("phase2.lr", "model.score.fusion_lambda")
    _, _, env = two_nodes
    root = f"s3://{s3_server.bucket}/cluster-sweep-{tmp_path.name}"
    cfg = tiny_config(
        tmp_path,
        tiny_data,
        data={"use_feature_cache": True, "cache_uri": f"{root}/cache"},
        phase1={"steps": 2},
        phase2={"steps": 2, "validate_every": 2},
        # 2 workers of 0.99 CPU + the trial's 0.01-CPU driver fit the 2 one-CPU nodes
        scaling={"num_workers": 2, "cpus_per_worker": 0.99},
        run={
            "log_every": 2,
            "checkpoint_every": 2,
            "max_failures": 0,
            "loggers": ["mlflow"],
            "tracking_uri": str(tmp_path / "mlruns"),
        },
    )
    (tmp_path / "base.yaml").write_text(cfg.to_yaml())
    space = {
        "name": "cluster",
        "config": str(tmp_path / "base.yaml"),
        "levels": [{"profile": "exp", "ratio": 4, "data": tiny_data}],
        "params": {
            "phase2.lr": {"loguniform": [1e-4, 1e-2]},
            "model.score.fusion_lambda": {"uniform": [0.5, 2.0]},
        },
        "search": "optuna",
        "num_samples": 2,
        "metric": "val_image_AUROC",
        "mode": "max",
        "root": root,
    }
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    loaded = load_space(space_file)
    assert loaded.phase1_keys() == () and [r.name for r in loaded.phase1_runs()] == ["exp4"]

    proc, took = _submit(env, "python", "tune/sweep.py", "--config", str(space_file))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "sweep cluster: {'finished': 2}" in log
    sweep = read_sweep(root)
    trials = sweep["trials"]
    assert len(trials) == 2 and {t["status"] for t in trials} == {"finished"}, trials
    values = {t["name"]: tuple(t["params"][k] for k in fields) for t in trials}
    assert len(set(values.values())) == 2  # Optuna proposed two settings
    for lr, lam in values.values():
        assert 1e-4 <= lr <= 1e-2 and 0.5 <= lam <= 2.0
    for t in trials:
        metrics = storage.read_json(f"{root}/{t['path']}/metrics.json")
        assert metrics["provenance"]["world_size"] == 2
        recorded = metrics["provenance"]["config"]  # each trial ran with its own values
        assert (recorded["phase2"]["lr"], recorded["model"]["score"]["fusion_lambda"]) == values[t["name"]]
    assert launches(loaded, "phase1") == ["exp4"] and sorted(launches(loaded, TRIAL_STAGE)) == sorted(values)
    nodes = _train_worker_nodes(env, _job_id(env, str(space_file)))
    assert len(set(nodes)) == 2, nodes

    summary = subprocess.run(
        [PYTHON, "jobs/summary.py", "--sweep", root, "--out", f"{root}/summary"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "summary: 2 runs" in summary.stdout
    assert storage.exists(f"{root}/summary/report.md")
    rows = {
        r["trial"]: r
        for r in csv.DictReader(io.StringIO(storage.read_bytes(f"{root}/summary/results.csv").decode()))
    }
    assert set(rows) == set(values)
    for name, (lr, lam) in values.items():
        assert math.isclose(float(rows[name]["phase2.lr"]), lr)
        assert math.isclose(float(rows[name]["model.score.fusion_lambda"]), lam)

    uri = mlflow_uri(loaded.base.run)  # the file: URI the driver logged to
    allow_file_store(uri)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    logged = {
        (float(r.data.params["phase2.lr"]), float(r.data.params["model.score.fusion_lambda"])) for r in runs
    }
    assert {r.data.params["level"] for r in runs} == {"exp4"}
    assert {r.data.tags["trial_name"] for r in runs} == set(values)  # MLflow runs named as the trials
    assert all(
        any(math.isclose(a, lr) and math.isclose(b, lam) for a, b in logged) for lr, lam in values.values()
    )
    print(f"[cluster] open sweep + summary: {took:.0f} s", flush=True)
