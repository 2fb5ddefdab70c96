"""k8s/rayjob.yaml: a RayJob whose entrypoint is an existing job with valid arguments, GPU workers, no secrets."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "k8s" / "rayjob.yaml").read_text()
DOCS = [d for d in yaml.safe_load_all(TEXT) if d]
RAYJOB = next(d for d in DOCS if d["kind"] == "RayJob")
CLUSTER = RAYJOB["spec"]["rayClusterSpec"]
HEAD = CLUSTER["headGroupSpec"]
WORKERS = CLUSTER["workerGroupSpecs"]


def entrypoint() -> list[str]:
    return shlex.split(RAYJOB["spec"]["entrypoint"])


def pods() -> list[dict]:
    return [HEAD["template"]["spec"], *(w["template"]["spec"] for w in WORKERS)]


def job_parser(path: Path) -> argparse.ArgumentParser:
    """The job's own parser: `build_parser()` if it has one, else the parser its `main` builds."""
    spec = importlib.util.spec_from_file_location(f"_job_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "build_parser"):
        return module.build_parser()

    class Captured(Exception):
        pass

    seen: list[argparse.ArgumentParser] = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise Captured

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), pytest.raises(Captured):
        module.main([])
    return seen[0]


def test_one_rayjob_on_kuberay_v1_that_shuts_its_cluster_down():
    assert [d["kind"] for d in DOCS].count("RayJob") == 1
    assert RAYJOB["apiVersion"] == "ray.io/v1"
    assert RAYJOB["spec"]["shutdownAfterJobFinishes"] is True
    import ray

    assert CLUSTER["rayVersion"] == ray.__version__


def test_entrypoint_is_an_existing_job_and_its_arguments_parse():
    argv = entrypoint()
    assert argv[0] == "python" and argv[1].startswith("jobs/"), argv
    job = ROOT / argv[1]
    assert job.is_file(), f"the entrypoint names {argv[1]}, which does not exist"
    args = job_parser(job).parse_args(argv[2:])  # argparse exits (fails the test) on a bad argument
    assert args.config == "configs/mvtec.yaml"
    assert args.data.startswith("s3://") and args.output.startswith("s3://")


def test_entrypoint_config_and_overrides_resolve_to_a_gpu_run_that_fits_the_workers():
    from ltad.commands.common import add_run_arguments
    from ltad.config import load_run_config

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(entrypoint()[2:])
    if not (ROOT / args.config).is_file():
        pytest.skip(f"{args.config} is not written yet (run configs belong to the training part)")
    cfg = load_run_config(str(ROOT / args.config), data=args.data, output=args.output, overrides=args.set)
    assert cfg.scaling.use_gpu and cfg.data.uri == args.data and cfg.run.output == args.output
    gpus = sum(w["maxReplicas"] * gpu_limit(w["template"]["spec"]) for w in WORKERS)
    assert cfg.scaling.num_workers <= gpus
    assert all(cfg.scaling.cpus_per_worker <= cpu_limit(w["template"]["spec"]) for w in WORKERS)


def gpu_limit(pod: dict) -> int:
    return sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"]
    )


def cpu_limit(pod: dict) -> float:
    """CPUs Ray sees in the pod: the container's limit ('9500m' = 9.5)."""
    cpu = str(pod["containers"][0]["resources"]["limits"]["cpu"])
    return float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)


def test_head_is_cpu_only_and_workers_have_gpu_limits():
    assert gpu_limit(HEAD["template"]["spec"]) == 0
    assert HEAD["rayStartParams"].get("num-gpus", "0") == "0"
    for w in WORKERS:
        assert gpu_limit(w["template"]["spec"]) >= 1
        assert w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]


def test_image_is_the_project_image_that_cluster_yaml_runs():
    images = {c["image"] for pod in pods() for c in pod["containers"]}
    assert len(images) == 1
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert images == {cluster["docker"]["image"]}  # one image, built from docker/Dockerfile
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+$", dockerfile, re.M)  # its CUDA: test_cluster_config.py
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile, re.M).group(1)
    assert yaml.safe_load(RAYJOB["spec"]["runtimeEnvYAML"])["working_dir"] == workdir
    constraints = (ROOT / "constraints.txt").read_text().splitlines()
    assert f"ray=={CLUSTER['rayVersion']}" in constraints  # the Ray the image installs (tested version)


def test_s3_access_through_an_irsa_service_account_and_no_credentials():
    accounts = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "ServiceAccount"}
    for pod in pods():
        annotations = accounts[pod["serviceAccountName"]]["metadata"]["annotations"]
        assert annotations["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert not [d for d in DOCS if d["kind"] == "Secret"]
    assert not re.search(
        r"AKIA[0-9A-Z]{16}|aws_secret_access_key|aws_access_key_id|aws_session_token", TEXT, re.I
    )
    assert not re.search(r"secretKeyRef|password|imagePullSecrets", TEXT, re.I)
    env = [e["name"] for pod in pods() for c in pod["containers"] for e in c.get("env", [])]
    env += list(yaml.safe_load(RAYJOB["spec"]["runtimeEnvYAML"]).get("env_vars", {}))
    assert not [n for n in env if re.search("SECRET|TOKEN|PASSWORD|KEY", n)], env


def test_no_service_is_exposed_outside_the_cluster():
    assert HEAD.get("serviceType", "ClusterIP") == "ClusterIP"
    assert not HEAD.get("enableIngress", False)
    services = [d for d in DOCS if d["kind"] == "Service"]
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    assert not re.search(r"LoadBalancer|NodePort|hostNetwork|hostPort", TEXT)
