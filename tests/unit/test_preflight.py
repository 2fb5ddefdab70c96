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


def _check(cfg: LTADConfig, nodes: int = 2) -> None:
    multi = preflight.is_multi_node(nodes, {"CPU": 4}, cfg.scaling)
    preflight.check_locations(preflight.run_locations(cfg), multi_node=multi, shared_fs=cfg.run.shared_fs)


@pytest.mark.parametrize(
    ("nodes", "resources", "scaling", "multi"),
    [
        (1, {"CPU": 2}, {}, False),
        (2, {"CPU": 2}, {}, True),
        (1, {"CPU": 8}, {"use_gpu": True}, True),  # GPU head-less cluster: workers on nodes to come
        (1, {"CPU": 8, "GPU": 1}, {"use_gpu": True}, False),
        (1, {"CPU": 0}, {}, True),  # a head that runs no workers (num-cpus=0)
        (1, {"CPU": 1}, {"cpus_per_worker": 2}, True),
    ],
)
def test_multi_node_rule(nodes, resources, scaling, multi):
    assert preflight.is_multi_node(nodes, resources, ScalingConfig(**scaling)) is multi


def test_s3_everywhere_passes_on_many_nodes():
    _check(_cfg(), nodes=5)


@pytest.mark.parametrize(
    ("override", "key", "value"),
    [
        ({"run": {"output": "/tmp/out"}}, "run.output", "/tmp/out"),
        ({"run": {"storage_path": "/mnt/ray"}}, "run.storage_path", "/mnt/ray"),
        ({"data": {"uri": "/data/shards"}}, "data.uri", "/data/shards"),
        ({"model": {"encoder": {"pretrained": "/w/clip.pt"}}}, "model.encoder.pretrained", "/w/clip.pt"),
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


def test_sweep_root_and_level_data_must_be_shared(tmp_path):
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
