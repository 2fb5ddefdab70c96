"""cluster.yaml passes Ray's own launcher validation, runs our image (whose CUDA matches the pinned torch)
on an AMI we chose, installs nothing at boot, and exposes nothing but SSH. docker/Dockerfile is checked
statically: no image can be built or pulled here."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.aws.config import DEFAULT_AMI, _create_default_inbound_rules
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PLACEHOLDER_IMAGE = re.compile(r"^registry\.example\.com/ltad:(?P<tag>\S+)$")


def _cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _prepared() -> dict:
    config = prepare_config(_cluster())
    validate_config(config)  # raises on any schema error
    return config


def pinned(name: str) -> str:
    """The exact version constraints.txt pins for `name` ('torch==2.14.1' -> '2.14.1')."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        m = re.fullmatch(rf"{re.escape(name)}==(\S+)", line.strip(), re.I)
        if m:
            return m.group(1)
    raise AssertionError(f"constraints.txt does not pin {name}")


def torch_cuda_version() -> str:
    """torch.version.cuda of the installed wheel, read from torch/version.py without importing torch."""
    spec = importlib.util.find_spec("torch")
    text = (Path(spec.origin).parent / "version.py").read_text()
    m = re.search(r"^cuda(?::[^=]*)?=\s*'([^']+)'", text, re.M)
    assert m, "the installed torch is not a CUDA build (torch.version.cuda is None)"
    return m.group(1)


def dockerfile_from() -> str:
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M)
    assert len(froms) == 1, froms
    return froms[0]


def test_cluster_yaml_is_valid_for_the_ray_launcher():
    config = _prepared()
    assert config["head_node_type"] in config["available_node_types"]
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["max_workers"] >= 1


def test_the_dockerfile_cuda_base_matches_the_pinned_torch():
    assert importlib.metadata.version("torch") == pinned("torch"), "the venv's torch is not the pinned one"
    cuda = torch_cuda_version()  # '13.0' for torch==2.14.1
    m = re.fullmatch(
        r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", dockerfile_from()
    )
    assert m, f"docker/Dockerfile's base {dockerfile_from()!r} is not an nvidia/cuda base/runtime image"
    assert f"{m.group(1)}.{m.group(2)}" == cuda, (dockerfile_from(), cuda)


def test_the_dockerfile_installs_the_project_from_pyproject_on_python_3_11():
    assert re.search(r"apt-get install[^\n]*\\\n(?:[^\n]*\\\n)*[^\n]*python3\.11-venv", DOCKERFILE)
    assert "python3.11 -m venv" in DOCKERFILE
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    # the core + train + tracking dependencies of pyproject.toml at the versions of constraints.txt,
    # then the project itself, never editable
    assert "tomllib.load(open('pyproject.toml', 'rb'))['project']" in DOCKERFILE
    for part in (
        "p['dependencies']",
        "['optional-dependencies']['train']",
        "['optional-dependencies']['tracking']",
    ):
        assert part in DOCKERFILE, part
    assert re.search(r"pip install -c constraints\.txt -r /tmp/requirements\.txt", DOCKERFILE)
    assert re.search(r"pip install --no-deps \.(\s|$)", DOCKERFILE)
    assert not re.search(r"pip install[^\n]*\s-e\s", DOCKERFILE)
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", DOCKERFILE, re.M)
    sources = {s for line in copied for s in line.split()}
    assert {"pyproject.toml", "constraints.txt", "ltad", "jobs", "tune", "configs"} <= sources


def test_every_node_runs_our_image_and_nothing_is_installed_at_boot():
    config = _prepared()
    image = config["docker"]["image"]
    m = PLACEHOLDER_IMAGE.match(image)
    assert m, f"cluster.yaml's image {image!r} is not the project image placeholder"
    assert m.group("tag") == PYPROJECT["project"]["version"]
    assert "head_image" not in config["docker"] and "worker_image" not in config["docker"]
    for node in config["available_node_types"].values():
        assert "docker" not in node  # no per-node image override
    commands = [
        *config["setup_commands"],
        *config["head_setup_commands"],
        *config["worker_setup_commands"],
        *config["initialization_commands"],
    ]
    assert commands == [], commands  # prepare_config merged Ray's defaults: none of theirs survived
    assert config["file_mounts"] == {}
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "pip " not in starts


def test_every_node_type_names_an_ami_instead_of_rays_old_default():
    amis = {t: n["node_config"].get("ImageId", "") for t, n in _cluster()["available_node_types"].items()}
    for node_type, ami in amis.items():
        assert ami and ami.lower() != "latest_dlami", f"{node_type}: Ray would pick its default DLAMI"
        assert ami not in DEFAULT_AMI.values(), node_type
    assert len(set(amis.values())) == 1  # one AMI (and driver) for the whole cluster


def test_head_has_no_gpu_and_the_gpu_workers_fit_the_cluster_run():
    from ltad.config import load_run_config

    types = _cluster()["available_node_types"]
    assert types["head"]["resources"].get("GPU", 0) == 0
    gpu_types = {t: n for t, n in types.items() if n["resources"].get("GPU", 0) >= 1}
    assert gpu_types and "head" not in gpu_types
    cfg = load_run_config(str(ROOT / "configs" / "mvtec.yaml"), data=None, output=None, overrides=[])
    assert cfg.scaling.use_gpu
    for name, node in gpu_types.items():
        assert cfg.scaling.cpus_per_worker <= node["resources"]["CPU"], name
    gpus = sum(n["max_workers"] * n["resources"]["GPU"] for n in gpu_types.values())
    assert cfg.scaling.num_workers <= gpus


def test_only_ssh_is_reachable_from_outside_and_the_dashboard_stays_on_loopback():
    """What Ray 2.60 authorises on a group it creates: its own rules plus ours (cluster.yaml's comment)."""
    config = _cluster()
    ours = config["provider"]["security_group"]["IpPermissions"]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in ours for ip in r["IpRanges"])
    rules = _create_default_inbound_rules({"sg-ltad"}, ours)
    from_outside = [r for r in rules if r.get("IpRanges")]
    assert {(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in from_outside} == {("tcp", 22, 22)}
    assert any(ip["CidrIp"] == "0.0.0.0/0" for r in from_outside for ip in r["IpRanges"])  # Ray's own rule
    inside = [r for r in rules if not r.get("IpRanges")]
    assert all(pair["GroupId"] == "sg-ltad" for r in inside for pair in r["UserIdGroupPairs"])
    text = (ROOT / "cluster.yaml").read_text()
    assert "SSH (port 22) from 0.0.0.0/0" in text  # the comment says what Ray really does
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start


def test_cluster_uses_instance_profiles_not_keys_and_the_docs_name_their_permissions():
    text = (ROOT / "cluster.yaml").read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    types = _cluster()["available_node_types"]
    profiles = {t: n["node_config"]["IamInstanceProfile"]["Name"] for t, n in types.items()}
    assert profiles["head"] != profiles["gpu_worker"]  # only the head may launch instances
    docs = (ROOT / "docs" / "CLUSTER.md").read_text()
    for profile in profiles.values():
        assert profile in docs
    for action in (
        "ec2:RunInstances",
        "ec2:TerminateInstances",
        "iam:PassRole",
        "s3:GetObject",
        "s3:PutObject",
    ):
        assert action in docs


@pytest.mark.parametrize("doc", ["README.md", "docs/CLUSTER.md"])
def test_docs_build_the_image_that_the_cluster_files_name(doc):
    text = (ROOT / doc).read_text()
    assert "docker build -f docker/Dockerfile" in text
    assert "ray up cluster.yaml" in text and "k8s/rayjob.yaml" in text
    assert "/data/mvtec" not in text  # nodes share no disk: raw images come from S3
