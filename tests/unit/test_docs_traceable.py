"""Every figure source the docs cite exists, every artefact under docs/results/ says what made it, and
each benchmark figure in the guide's table appears in the benchmark's committed JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CITED = re.compile(r"(?<![\w/.-])((?:docs/)?results/[\w./-]*[\w-]\.(?:jsonl|json|png|md))")


def _cited() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for path in CITED.findall(doc.read_text()):
            out.append((doc.relative_to(ROOT).as_posix(), path))
    return out


def test_the_docs_cite_results_at_all():
    assert len(_cited()) >= 10


@pytest.mark.parametrize(("doc", "path"), _cited())
def test_every_cited_results_file_exists(doc, path):
    base = ROOT if path.startswith("docs/") else ROOT / "docs"
    assert (base / path).is_file(), f"{doc} cites {path}, which is not committed"


def _artefacts() -> list[str]:
    return sorted(p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*") if p.is_file())


def test_every_artefact_says_what_made_it():
    index = json.loads((RESULTS / "index.json").read_text())["files"]
    for rel in _artefacts():
        if rel == "index.json":
            continue
        if rel.startswith("bench-"):
            prov = json.loads((RESULTS / rel).read_text())["provenance"]
            assert prov["command"].startswith("python benchmarks/"), rel
            assert prov["date"] and prov["git_commit"] and prov["machine"]["cpus"] >= 1, rel
        else:
            assert rel in index and index[rel]["command"], f"docs/results/{rel} is not in index.json"
    for rel in index:
        assert (RESULTS / rel).is_file(), f"index.json names docs/results/{rel}, which does not exist"


def _numbers(obj) -> set[str]:
    """Every numeric leaf of a JSON value in the spellings a document may use."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for v in obj.values():
            out |= _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        for v in (obj, obj / 1e6, obj * 100):
            out |= {f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3f}", f"{v:g}"}
    return out


def _benchmark_rows() -> list[tuple[str, list[str], str]]:
    """(script, cited bench JSON files, measured cell) of each benchmark-table row citing a JSON."""
    text = (ROOT / "docs" / "GUIDE.md").read_text()
    section = text[text.index("## Benchmarks") :]
    section = section[: section.index("\n## ", 1)]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`benchmarks/"):
            files = re.findall(r"docs/results/([\w.-]+\.json)", cells[2])
            if files:
                rows.append((cells[0], files, cells[2]))
    return rows


def test_the_benchmark_table_cites_its_json():
    assert len(_benchmark_rows()) >= 1


@pytest.mark.parametrize(("script", "files", "cell"), _benchmark_rows())
def test_each_benchmark_figure_appears_in_its_json(script, files, cell):
    known: set[str] = set()
    for f in files:
        known |= _numbers(json.loads((RESULTS / f).read_text()))
    text = re.sub(r"`[^`]*`", "", cell)  # file names, commands
    text = re.sub(r"\(target[^)]*\)", "", text)  # the targets are the issue's, not measurements
    text = re.sub(r"\d{4}-\d{2}-\d{2}", "", text)  # dates
    for number in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", text):
        assert number in known, f"{script}: {number} in docs/GUIDE.md is not in {files}"
