"""The layer rules of docs/ARCHITECTURE.md, checked on the import graph of ltad/ (every import, also
those inside functions), and the promise that scoring needs neither Ray nor DeepSpeed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ltad"

BASE = {"ltad.errors", "ltad.log", "ltad.config"}
ALLOWED: dict[str, set[str]] = {
    # layer -> the ltad layers it may import (itself always)
    "ltad.errors": set(),
    "ltad.log": set(),
    "ltad.config": {"ltad.errors"},
    "ltad.services": {"ltad.errors"},
    "ltad.data": BASE,
    "ltad.models": BASE,
    "ltad.eval": BASE | {"ltad.data"},
    "ltad.baselines": BASE | {"ltad.models"},
    "ltad.export": BASE | {"ltad.data", "ltad.models", "ltad.eval"},
    "ltad.predict": BASE | {"ltad.data", "ltad.models", "ltad.eval", "ltad.export"},
    "ltad.predict_run": BASE | {"ltad.data", "ltad.eval", "ltad.export", "ltad.predict"},
    "ltad.training": BASE | {"ltad.data", "ltad.models", "ltad.eval", "ltad.export", "ltad.baselines"},
    "ltad.sweep": BASE | {"ltad.data", "ltad.models", "ltad.eval", "ltad.export", "ltad.training"},
    "ltad.study": BASE | {"ltad.data", "ltad.models", "ltad.eval", "ltad.baselines", "ltad.training"},
}
EXCEPTIONS = {
    # the encoder's weights fetcher: every place that builds an Encoder (driver, workers, predict) reads
    # the same bytes from a file or s3:// object through one per-node, content-addressed cache
    ("ltad.models.encoder", "ltad.data.blobs"),
    # the local Ray head declares the same trial-driver resource as a cluster's head and connect()
    ("ltad.services.ray_local", "ltad.training.cluster"),
}
TOP = {"ltad.commands", "ltad.cli", "ltad"}  # the command surface may import any layer
FORBIDDEN_THIRD_PARTY = {
    # layer -> packages it must not import: models are plain torch, eval is pure
    "ltad.models": {"ray", "deepspeed", "boto3", "webdataset", "torch.distributed"},
    "ltad.eval": {"ray", "deepspeed", "torch.distributed"},
    "ltad.data": {"ray", "deepspeed"},
    "ltad.export": {"ray", "deepspeed"},
    "ltad.predict": {"ray", "deepspeed"},
    "ltad.predict_run": {"ray", "deepspeed"},
}


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted({_layer(m) for m in _graph()} - set(ALLOWED) - TOP)
    assert not unknown, f"modules outside the documented layers: {unknown} (add them to ARCHITECTURE.md)"


def test_layers_import_only_the_layers_below_them():
    violations = []
    for module, imports in _graph().items():
        layer = _layer(module)
        if layer in TOP:
            continue
        for name in imports:
            if not name.startswith("ltad.") and name != "ltad":
                continue
            target = _layer(name)
            if any((module, name.rsplit(".", k)[0]) in EXCEPTIONS for k in range(3)):
                continue
            if target != layer and target not in ALLOWED[layer] and target in ALLOWED | dict.fromkeys(TOP):
                violations.append(f"{module} imports {name}")
    assert not violations, "layer rule broken:\n" + "\n".join(sorted(violations))


def test_no_import_cycle_between_layers():
    edges = {
        (_layer(m), _layer(n))
        for m, ns in _graph().items()
        for n in ns
        if n.startswith("ltad.") and _layer(n) != _layer(m) and (m, n) not in EXCEPTIONS
    }
    cycles = sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
    assert not cycles, f"import cycles between layers: {cycles}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN_THIRD_PARTY))
def test_pure_layers_stay_free_of_the_distributed_stack(layer):
    banned = FORBIDDEN_THIRD_PARTY[layer]
    found = sorted(
        f"{m} imports {n}"
        for m, ns in _graph().items()
        if _layer(m) == layer
        for n in ns
        if any(n == b or n.startswith(b + ".") for b in banned)
    )
    assert not found, "\n".join(found)


def test_predict_export_and_the_cli_load_without_ray_deepspeed_or_training():
    """`ltad predict` runs where Ray and DeepSpeed are not installed: importing it must not load them."""
    code = (
        "import sys, ltad, ltad.predict, ltad.predict_run, ltad.export, ltad.cli; ltad.cli.build_parser(); "
        "ltad.Predictor; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed') "
        "or m.startswith('ltad.training')); print(bad); sys.exit(1 if bad else 0)"
    )
    ran = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
