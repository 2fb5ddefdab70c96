"""k8s/rayservice.yaml: a RayService whose serve config names ltad's application builder with valid
args, on the project image with the serve extra, GPUs that fit its replicas, no secrets, nothing exposed."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "k8s" / "rayservice.yaml").read_text()
DOCS = [d for d in yaml.safe_load_all(TEXT) if d]
(SERVICE,) = [d for d in DOCS if d["kind"] == "RayService"]
SERVE = yaml.safe_load(SERVICE["spec"]["serveConfigV2"])
CLUSTER = SERVICE["spec"]["rayClusterConfig"]
HEAD = CLUSTER["headGroupSpec"]
WORKERS = CLUSTER["workerGroupSpecs"]


def pods() -> list[dict]:
    return [HEAD["template"]["spec"], *(w["template"]["spec"] for w in WORKERS)]


def limit(pod: dict, key: str) -> float:
    return sum(float(c["resources"]["limits"].get(key, 0)) for c in pod["containers"])


def test_one_rayservice_on_kuberay_v1_at_the_tested_ray():
    import ray

    assert SERVICE["apiVersion"] == "ray.io/v1"
    assert CLUSTER["rayVersion"] == ray.__version__
    assert f"ray=={ray.__version__}" in (ROOT / "constraints.txt").read_text().splitlines()


def test_the_application_is_ltads_builder_and_its_args_build():
    from ray.serve import Application

    from ltad.inference.serve import ServeOptions, build_app

    (app,) = SERVE["applications"]
    module, _, name = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert builder is build_app
    options = ServeOptions.from_args(app["args"])  # unknown keys or wrong types raise
    assert options.model.startswith("s3://")  # replicas run on any node: the model comes from S3
    assert isinstance(build_app(app["args"]), Application)
    assert app["route_prefix"] == "/" and SERVE["http_options"]["port"] == 8000


def test_replicas_fit_the_worker_gpus_and_cpus():
    (app,) = SERVE["applications"]
    from ltad.inference.serve import ServeOptions

    options = ServeOptions.from_args(app["args"])
    gpus = sum(w["maxReplicas"] * limit(w["template"]["spec"], "nvidia.com/gpu") for w in WORKERS)
    cpus = sum(w["maxReplicas"] * limit(w["template"]["spec"], "cpu") for w in WORKERS)
    assert 0 < options.replicas * options.gpus_per_replica <= gpus
    assert options.replicas * options.cpus_per_replica <= cpus
    assert (
        HEAD["rayStartParams"]["num-cpus"] == "0" and limit(HEAD["template"]["spec"], "nvidia.com/gpu") == 0
    )


def test_same_image_as_the_rayjob_and_it_installs_the_serve_extra():
    rayjob = (ROOT / "k8s" / "rayjob.yaml").read_text()
    images = {c["image"] for pod in pods() for c in pod["containers"]}
    assert len(images) == 1 and next(iter(images)) in rayjob
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "p['optional-dependencies']['serve']" in dockerfile


def test_s3_through_irsa_no_credentials_and_nothing_exposed():
    accounts = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "ServiceAccount"}
    for pod in pods():
        role = accounts[pod["serviceAccountName"]]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
        assert role.startswith("arn:aws:iam::")
    assert not [d for d in DOCS if d["kind"] in ("Secret", "Ingress")]
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|secretKeyRef", TEXT, re.I)
    assert HEAD.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not re.search(r"LoadBalancer|NodePort|hostNetwork|hostPort", TEXT)
