"""Security: no secret in any log, config, result, checkpoint or Ray job metadata; safe loading only;
local services on loopback; SeaweedFS enforces credentials; no public port in cluster.yaml or k8s.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from tests.reliability.conftest import REPO

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).parent / "ray")
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
SOURCES = [p for d in ("ltad", "jobs", "tune") for p in sorted((REPO / d).rglob("*.py"))]


# ------------------------------------------------------------------------------- safe loading


def _calls(name: str):
    """(file, ast.Call) of every call whose function is `name` (e.g. 'torch.load') in the sources."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                yield path.relative_to(REPO), node


def test_every_torch_load_uses_weights_only():
    calls = list(_calls("torch.load"))
    assert calls, "expected checkpoint and export loaders"
    for path, call in calls:
        kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert kw.get("weights_only") == "True", f"{path}:{call.lineno} torch.load without weights_only=True"


@pytest.mark.parametrize(
    "name",
    ["pickle.load", "pickle.loads", "cloudpickle.loads", "eval", "exec", "yaml.load", "yaml.unsafe_load"],
)
def test_no_pickle_or_eval_of_stored_data(name):
    assert [f"{p}:{c.lineno}" for p, c in _calls(name)] == []


def test_the_config_yaml_loader_is_a_safe_loader():
    """Configs are read by ltad.config's own loader (typed booleans): it must build plain data only."""
    import yaml

    from ltad.config import ConfigLoader, parse_yaml

    assert issubclass(ConfigLoader, yaml.SafeLoader)
    with pytest.raises(yaml.YAMLError):
        parse_yaml("!!python/object/apply:os.system ['echo pwned']")
    assert parse_yaml("a: off\nb: true\nc: 1e-3") == {"a": "off", "b": True, "c": "1e-3"}


def test_numpy_never_loads_pickles():
    for path, call in _calls("np.load"):
        kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
        assert kw.get("allow_pickle") == "False", f"{path}:{call.lineno}"


class _Boom:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoint_and_export_with_a_pickled_object_are_refused(tmp_path):
    import ray.train

    from ltad.inference.export import load_export
    from ltad.training.checkpoint import MODEL_FILE, load_model_state

    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    torch.save({"names.tokens": _Boom(str(marker))}, ckpt / MODEL_FILE)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_model_state(ray.train.Checkpoint.from_directory(str(ckpt)))
    model = tmp_path / "model"
    model.mkdir()
    torch.save({"x": _Boom(str(marker))}, model / "weights.pt")
    (model / "config.yaml").write_text("{}\n")
    (model / "export.json").write_text(json.dumps({"format": "ltad-model/1", "classes": ["a"]}))
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_export(model)
    assert not marker.exists()


# ------------------------------------------------------------------------------- deployment files


def test_cluster_yaml_and_rayjob_expose_no_public_port():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    rules = cluster["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r.get("IpRanges", []))
    starts = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in starts and "0.0.0.0" not in starts
    text = (REPO / "k8s" / "rayjob.yaml").read_text()
    assert "hostPort" not in text and "NodePort" not in text and "LoadBalancer" not in text
    jobs = [d for d in yaml.safe_load_all(text) if d.get("kind") == "RayJob"]
    assert jobs
    for doc in jobs:
        head = doc["spec"]["rayClusterSpec"]["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not [d for d in yaml.safe_load_all(text) if d.get("kind") in ("Service", "Ingress")]


# ------------------------------------------------------------------------------- live services


def _listening(pid: int) -> list[tuple[str, int]]:
    out = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                out.append((conn.laddr.ip, conn.laddr.port))
    return out


def test_seaweedfs_listens_on_loopback_only(s3_server):
    listening = _listening(s3_server.pid())
    assert len(listening) >= 5  # S3, master, volume, filer and their gRPC ports
    assert {ip for ip, _ in listening} <= LOOPBACK, listening


def test_seaweedfs_rejects_wrong_credentials(s3_server):
    import boto3
    from botocore.exceptions import ClientError

    good = s3_server.env()
    for key, secret in ((good["AWS_ACCESS_KEY_ID"], "wrong"), ("nobody", good["AWS_SECRET_ACCESS_KEY"])):
        client = boto3.client(
            "s3",
            endpoint_url=good["AWS_ENDPOINT_URL"],
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name=good["AWS_DEFAULT_REGION"],
        )
        for call in (client.list_buckets, lambda c=client: c.list_objects_v2(Bucket=s3_server.bucket)):
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
