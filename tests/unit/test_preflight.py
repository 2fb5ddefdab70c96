"""Preflight rules (ltad.training.preflight) and what travels with a job (ltad.training.cluster)."""

from __future__ import annotations

import json

import pytest

from ltad.config import LTADConfig, ScalingConfig
from ltad.errors import ConfigError
from ltad.sweep.space import Space
from ltad.sweep.space import SweepLevel as Level
from ltad.training import cluster, preflight


def _cfg(**run) -> LTADConfig:
    base = {
        "data": {"uri": "s3://b/data"},
        "run": {"output": "s3://b/out", "storage_path": "s3://b/ray", **run},
    }
    return LTADConfig.from_dict(base)


def _node(i: int, **resources: float) -> dict:
    """One entry of `ray.nodes()` (the fields preflight reads)."""
    return {"NodeID": f"node{i}", "Alive": True, "NodeManagerAddress": f"10.0.0.{i}", "Resources": resources}


HEAD_ONLY = [_node(0, CPU=4)]
TWO_NODES = [_node(0, CPU=4), _node(1, CPU=4)]
CPU0_HEAD = [_node(0, CPU=0)]  # an autoscaled cluster with min_workers 0, before any worker node
GPU_LESS_HEAD = [_node(0, CPU=2), _node(1, CPU=8, GPU=1), _node(2, CPU=8, GPU=1)]


def _check(cfg: LTADConfig, nodes: int = 2) -> None:
    multi = preflight.is_multi_node(
        [_node(i, CPU=4) for i in range(nodes)], "node0", **preflight.worker_demand(cfg.scaling)
    )
    preflight.check_locations(preflight.run_locations(cfg), multi_node=multi, shared_fs=cfg.run.shared_fs)


@pytest.mark.parametrize(
    ("nodes", "scaling", "autoscaling", "multi"),
    [
        (HEAD_ONLY, {}, False, False),  # one machine: local paths are fine
        (TWO_NODES, {}, False, True),
        (CPU0_HEAD, {}, False, True),  # a head that runs no workers (num-cpus=0): they come later
        (HEAD_ONLY, {}, True, True),  # a head with CPUs alone, but an autoscaler that may add nodes
        (GPU_LESS_HEAD, {"use_gpu": True}, False, True),
        ([_node(0, CPU=8)], {"use_gpu": True}, False, True),  # a GPU-less head, GPU workers to come
        ([_node(0, CPU=8, GPU=1)], {"use_gpu": True}, False, False),
        ([_node(0, CPU=1)], {"cpus_per_worker": 2}, False, True),
        ([_node(0, CPU=4), {**_node(1, CPU=4), "Alive": False}], {}, False, False),  # a dead node
    ],
)
def test_multi_node_rule(nodes, scaling, autoscaling, multi):
    demand = preflight.worker_demand(ScalingConfig(**scaling))
    assert preflight.is_multi_node(nodes, "node0", **demand, autoscaling=autoscaling) is multi


def test_an_autoscaler_config_on_the_head_means_worker_nodes_may_come(tmp_path):
    """`ray up` leaves its config on the head: cluster.yaml's worker types (min_workers 0) may start."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    assert preflight.has_autoscaler(str(repo / "cluster.yaml"))
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("head_node_type: head\navailable_node_types:\n  head: {max_workers: 0}\n")
    assert not preflight.has_autoscaler(str(fixed))
    assert not preflight.has_autoscaler(str(tmp_path / "absent.yaml"))


@pytest.fixture
def fake_cluster(monkeypatch):
    """Point preflight at a faked `ray.nodes()` list (the driver on node0); returns the setter."""
    import ray

    class _Context:
        def get_node_id(self) -> str:
            return "node0"

    def use(nodes: list[dict], autoscaling: bool = False) -> None:
        monkeypatch.setattr(ray, "nodes", lambda: nodes)
        monkeypatch.setattr(ray, "get_runtime_context", lambda: _Context())
        monkeypatch.setattr(preflight, "has_autoscaler", lambda *a: autoscaling)

    return use


@pytest.mark.parametrize(
    ("nodes", "autoscaling", "refused"),
    [(TWO_NODES, False, True), (CPU0_HEAD, False, True), (HEAD_ONLY, True, True), (HEAD_ONLY, False, False)],
)
def test_prepare_with_ray_refuses_a_local_root_wherever_tasks_may_leave_the_head(
    fake_cluster, nodes, autoscaling, refused
):
    from ltad.training.ray_map import check_reachable

    fake_cluster(nodes, autoscaling)
    check_reachable(("--root", "s3://b/raw"), ("--out", "s3://b/shards"))
    if not refused:
        check_reachable(("--root", "/data/raw"), ("--out", "/data/shards"))
        return
    with pytest.raises(ConfigError) as err:
        check_reachable(("--root", "s3://b/raw"), ("--out", "/data/shards"))
    assert str(err.value).startswith("--out '/data/shards' is a local path, but prepare's Ray tasks may run")
    assert "\n" not in str(err.value)


def test_batch_predict_on_two_nodes_names_its_own_flags(fake_cluster, monkeypatch, capsys, tmp_path):
    """`ltad predict --workers N` shares prepare's rule, with its own flags in the sentence."""
    from ltad import cli

    fake_cluster(TWO_NODES, False)
    monkeypatch.setattr("ltad.training.cluster.connect", lambda **_: False)  # no Ray: the check comes first
    images = tmp_path / "new"
    images.mkdir()
    argv = ["predict", "--model", "s3://b/model", "--images", str(images), "--out", "s3://b/scores"]
    assert cli.main([*argv, "--workers", "2"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("ltad predict: error: ") and line.endswith(
        f"--images '{images}' is a local path, but batch predict's Ray tasks may run on other nodes of this "
        "cluster (several nodes, an autoscaler that adds them, or a head without CPUs) that share no disk: "
        "give s3:// locations for --model, --images and --out (or run without --workers)"
    ), line
    assert "\n" not in line


def test_evaluate_with_a_local_checkpoint_on_many_nodes_is_refused_before_any_work(
    fake_cluster, tmp_path, monkeypatch, capsys
):
    """`ltad evaluate --checkpoint /local/dir` on a cluster: each worker reads the checkpoint, so a
    folder on the driver's disk is one ConfigError (exit 2) before Ray Train starts."""
    from ltad.cli import main
    from ltad.training import cluster as cluster_module
    from ltad.training import pipeline

    ckpt = tmp_path / "step-0000004-final"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(b"x")
    fake_cluster(GPU_LESS_HEAD)
    monkeypatch.setattr(cluster_module, "connect", lambda **kw: False)
    monkeypatch.setattr(pipeline, "Tracker", None)  # never reached: the preflight refuses first
    args = ["evaluate", "--data", "s3://b/data", "--out", "s3://b/out"]
    args += ["--set", "run.storage_path=s3://b/ray"]
    assert main([*args, "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        f"error: --checkpoint '{ckpt}' is a local path, but this Ray cluster has several nodes that share "
        f"no disk: use an s3:// URI, or set run.shared_fs=true if '{ckpt}' is on a filesystem mounted at "
        "the same path on every node"
    ), err


def test_s3_everywhere_passes_on_many_nodes():
    _check(_cfg(), nodes=5)


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ({"run": {"output": "/tmp/out"}}, "run.output", "/tmp/out"),
        ({"run": {"storage_path": "/mnt/ray"}}, "run.storage_path", "/mnt/ray"),
        ({"data": {"uri": "/data/shards"}}, "data.uri", "/data/shards"),
        ({"model": {"encoder": {"pretrained": "/w/clip.pt"}}}, "model.encoder.pretrained", "/w/clip.pt"),
        ({"data": {"cache_uri": "/srv/features"}}, "data.cache_uri", "/srv/features"),
    ],
)
def test_local_location_on_many_nodes_is_one_line_naming_key_and_value(override, key, value):
    raw = _cfg().to_dict()
    for section, values in override.items():
        if section == "model":
            raw["model"]["encoder"].update(values["encoder"])
        else:
            raw[section].update(values)
    cfg = LTADConfig.from_dict(raw)
    with pytest.raises(ConfigError) as err:
        _check(cfg)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{key} '{value}' is a local path, but this Ray cluster has several nodes")
    assert "s3://" in msg and "run.shared_fs=true" in msg
    _check(cfg, nodes=1)  # one node: fine
    _check(LTADConfig.from_dict({**raw, "run": {**raw["run"], "shared_fs": True}}))  # declared shared


def test_empty_storage_path_follows_output_and_hub_tags_are_not_paths():
    cfg = _cfg(storage_path="")
    assert ("run.storage_path", "") not in preflight.run_locations(cfg)
    _check(cfg)
    for tag in ("bundled", "none", "laion2b_s34b_b88k", "openai"):
        assert not preflight.is_weights_path(tag)
    for path in ("w/clip.pt", "/abs/w", "clip.safetensors", "s3://b/w.pt"):
        assert preflight.is_weights_path(path)


def test_relative_paths_become_absolute_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = LTADConfig.from_dict(
        {
            "data": {"uri": "shards"},
            "run": {"output": "runs/x", "storage_path": "ray"},
            "model": {"encoder": {"pretrained": "w/clip.pt"}},
        }
    )
    out = preflight.absolute_config(cfg)
    assert out.data.uri == str(tmp_path / "shards")
    assert out.run.output == str(tmp_path / "runs/x") and out.run.storage_path == str(tmp_path / "ray")
    assert out.model.encoder.pretrained == str(tmp_path / "w/clip.pt")
    assert preflight.absolute_config(_cfg()) == _cfg()  # URIs unchanged
    assert preflight.absolute_config(_cfg(storage_path="")).run.storage_path == ""


def test_sweep_root_level_data_cache_and_weights_must_be_shared(tmp_path):
    space = Space(
        name="s",
        base=_cfg(),
        levels=(Level("exp4", "exp", 4.0, "s3://b/exp4"), Level("exp10", "exp", 10.0, str(tmp_path))),
        root="s3://b/sweep",
    )
    with pytest.raises(ConfigError, match=rf"^levels\[1\]\.data '{tmp_path}' is a local path"):
        preflight.check_locations(preflight.sweep_locations(space), multi_node=True, shared_fs=False)
    local_root = Space(**{**space.__dict__, "levels": space.levels[:1], "root": "/tmp/sweep"})
    with pytest.raises(ConfigError, match=r"^root '/tmp/sweep' is a local path"):
        preflight.check_locations(preflight.sweep_locations(local_root), multi_node=True, shared_fs=False)
    cache = LTADConfig.from_dict({**_cfg().to_dict(), "data": {"uri": "", "cache_uri": "/srv/features"}})
    local_cache = Space(**{**space.__dict__, "levels": space.levels[:1], "base": cache})
    with pytest.raises(ConfigError, match=r"^data.cache_uri '/srv/features' is a local path"):
        preflight.check_locations(preflight.sweep_locations(local_cache), multi_node=True, shared_fs=False)
    weights = LTADConfig.from_dict({**_cfg().to_dict(), "model": {"encoder": {"pretrained": "/w/clip.pt"}}})
    local_weights = Space(**{**space.__dict__, "levels": space.levels[:1], "base": weights})
    with pytest.raises(ConfigError, match=r"^model.encoder.pretrained '/w/clip.pt' is a local path"):
        preflight.check_locations(preflight.sweep_locations(local_weights), multi_node=True, shared_fs=False)
    preflight.check_locations(preflight.sweep_locations(space), multi_node=False, shared_fs=False)


def test_s3_settings_travel_and_credentials_do_not(monkeypatch):
    for key, value in {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIDSECRET",
        "AWS_SECRET_ACCESS_KEY": "verysecret",
        "AWS_SESSION_TOKEN": "token",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv(cluster.JOB_CONFIG_VAR, raising=False)
    env = cluster.travelling_env()
    assert env == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_REGION": "eu-west-1",
    }
    from ltad.training.ray_run import WORKER_ENV

    assert "AWS_ENDPOINT_URL" in WORKER_ENV and not any("KEY" in k or "TOKEN" in k for k in WORKER_ENV)
    # a variable the submitter set in `ray job submit --runtime-env-json` is left to it (Ray refuses both)
    job = {"runtime_env": {"env_vars": {"AWS_REGION": "us-east-2"}, "working_dir": "gcs://x.zip"}}
    monkeypatch.setenv(cluster.JOB_CONFIG_VAR, json.dumps(job))
    assert "AWS_REGION" not in cluster.travelling_env()
    assert cluster.travelling_env()["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"


def test_connect_passes_the_settings_in_the_runtime_env(monkeypatch):
    import ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv(cluster.JOB_CONFIG_VAR, raising=False)
    cluster.connect(runtime_env={"env_vars": {"X": "1"}})
    assert seen["runtime_env"]["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9"
    assert seen["runtime_env"]["env_vars"]["X"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in seen["runtime_env"]["env_vars"]


def test_serve_on_two_nodes_refuses_a_local_model(fake_cluster, monkeypatch, capsys, tmp_path):
    """`ltad serve`'s replicas may start on any node: a local export is refused like predict's paths."""
    import json

    import ray

    from ltad import cli
    from ltad.inference.export import FILES, FORMAT, META

    pytest.importorskip("ray.serve")
    model = tmp_path / "model"
    model.mkdir()
    for name in FILES[FORMAT]:
        (model / name).write_bytes(b"")
    (model / META).write_text(json.dumps({"format": FORMAT}))
    fake_cluster(TWO_NODES, False)
    monkeypatch.setattr("ltad.training.cluster.connect", lambda **_: False)  # no Ray: the check comes first
    monkeypatch.setattr(ray.serve, "delete", lambda *_a, **_k: None)
    assert cli.main(["serve", "--model", str(model)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        f"ltad serve: error: --model '{model}' is a local path, but ltad serve's replicas may run on other "
        "nodes of this cluster (several nodes, an autoscaler that adds them, or a head without CPUs) that "
        "share no disk: give the model as an s3:// prefix (or serve on a one-node Ray)"
    ), line
