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
IO = {"ltad.io"}
ALLOWED: dict[str, set[str]] = {
    # layer -> the ltad layers it may import (itself always)
    "ltad.errors": set(),
    "ltad.log": set(),
    "ltad.config": {"ltad.errors"},
    "ltad.io": BASE,
    "ltad.data": BASE | IO,
    "ltad.models": BASE | IO,
    "ltad.eval": BASE | IO | {"ltad.data"},
    "ltad.baselines": BASE | {"ltad.models"},
    "ltad.inference": BASE | IO | {"ltad.data", "ltad.models", "ltad.eval"},
    "ltad.training": BASE
    | IO
    | {"ltad.data", "ltad.models", "ltad.eval", "ltad.inference", "ltad.baselines"},
    "ltad.sweep": BASE | IO | {"ltad.data", "ltad.models", "ltad.eval", "ltad.inference", "ltad.training"},
    "ltad.study": BASE | IO | {"ltad.data", "ltad.models", "ltad.eval", "ltad.baselines", "ltad.training"},
}
TOP = {"ltad.commands", "ltad.cli", "ltad", "ltad.__main__"}  # the command surface may import any layer
FORBIDDEN_THIRD_PARTY = {
    # layer -> packages it must not import: models are plain torch, eval is pure
    "ltad.io": {"ray", "deepspeed", "torch"},
    "ltad.models": {"ray", "deepspeed", "webdataset", "torch.distributed"},
    "ltad.eval": {"ray", "deepspeed", "torch.distributed"},
    "ltad.data": {"ray", "deepspeed"},
    "ltad.inference": {"deepspeed", "torch.distributed"},
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
            if target != layer and target not in ALLOWED[layer] and target in ALLOWED | dict.fromkeys(TOP):
                violations.append(f"{module} imports {name}")
    assert not violations, "layer rule broken:\n" + "\n".join(sorted(violations))


def test_no_import_cycle_between_layers():
    edges = {
        (_layer(m), _layer(n))
        for m, ns in _graph().items()
        for n in ns
        if n.startswith("ltad.") and _layer(n) != _layer(m)
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
        "import sys, ltad, ltad.inference.predictor, ltad.inference.predict, ltad.inference.export, ltad.cli; ltad.cli.build_parser(); "
        "ltad.Predictor; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed') "
        "or m.startswith('ltad.training')); print(bad); sys.exit(1 if bad else 0)"
    )
    ran = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_runtime_package_never_imports_development_tooling():
    """tools/ (local services, documentation generators) is not installed with ltad."""
    found = sorted(f"{m} imports {n}" for m, ns in _graph().items() for n in ns if n.split(".")[0] == "tools")
    assert not found, "\n".join(found)


def test_no_import_cycle_between_modules_of_a_package():
    """Inside a package too, no two modules import each other (directly or through a longer loop)."""
    graph = _graph()
    edges: dict[str, set[str]] = {m: set() for m in graph}
    for m, ns in graph.items():
        for n in ns:
            for target in (n, n.rsplit(".", 1)[0]):
                if target in graph and target != m and _layer(target) == _layer(m):
                    edges[m].add(target)
                    break
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles inside a package:\n" + "\n".join(cycles)


def test_test_file_names_are_unique_across_tests():
    """pytest imports test files by basename (no packages under tests/): two test_x.py in different
    folders stop the whole run at collection, which `make test-fast` (tests/unit only) would not see."""
    from collections import Counter

    root = Path(__file__).resolve().parents[1]
    names = Counter(p.name for p in root.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], sorted(n for n, k in names.items() if k > 1)
