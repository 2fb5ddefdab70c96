"""cluster.yaml passes Ray's own launcher validation and exposes nothing but SSH."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def _cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    config = prepare_config(_cluster())
    validate_config(config)  # raises on any schema error
    assert config["head_node_type"] in config["available_node_types"]
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["max_workers"] >= 1


def test_cluster_exposes_only_ssh_and_keeps_the_dashboard_on_loopback():
    config = _cluster()
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start


def test_cluster_uses_instance_profiles_not_keys():
    text = (ROOT / "cluster.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text
    for node in _cluster()["available_node_types"].values():
        assert "IamInstanceProfile" in node["node_config"]
