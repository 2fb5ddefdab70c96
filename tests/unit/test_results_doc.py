"""docs/RESULTS.md and README.md hold exactly what `python -m tools.results_doc` renders from the
committed rows, and the renderer refuses blocks it cannot regenerate."""

from __future__ import annotations

import pytest

from tools import results_doc
from tools.results_doc import ROOT, Inputs, ResultsDocError, render, stale


def test_committed_documents_equal_what_the_command_renders_from_committed_rows():
    assert stale(ROOT) == {}, "a generated block is stale: run `python -m tools.results_doc`"


def test_every_renderer_is_used_and_blocks_carry_computed_tables():
    text = "".join((ROOT / rel).read_text() for rel in results_doc.DOCUMENTS)
    for name in results_doc.RENDERERS:
        assert f"<!-- generated: {name}" in text, name
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    assert "### Mean image AUROC across levels" in results
    assert "95 % CI" in results and "(target > 0: **" in results


def test_render_replaces_only_the_body_between_markers():
    inp = Inputs(ROOT)
    doc = (
        "before 99.9\n<!-- generated: readme-quality (note) -->\nstale 12.3\n"
        "<!-- end generated: readme-quality -->\nafter 99.9\n"
    )
    out = render(doc, inp)
    assert out.startswith("before 99.9\n<!-- generated: readme-quality (note) -->\n| %, mean ± std")
    assert "stale 12.3" not in out and out.endswith("<!-- end generated: readme-quality -->\nafter 99.9\n")
    assert render(out, inp) == out


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("<!-- generated: nonsense -->\nx\n<!-- end generated: nonsense -->\n", "is not one of"),
        ("<!-- generated: readme-quality -->\nx\n", "has no matching"),
    ],
)
def test_unknown_or_unclosed_blocks_are_errors(doc, message):
    with pytest.raises(ResultsDocError, match=message):
        render(doc, Inputs(ROOT), "X.md")


def test_check_mode_exit_codes(monkeypatch, capsys):
    monkeypatch.setattr(results_doc, "stale", lambda: {"docs/RESULTS.md": "new"})
    assert results_doc.main(["--check"]) == 1
    assert "docs/RESULTS.md is stale" in capsys.readouterr().err
    monkeypatch.setattr(results_doc, "stale", lambda: {})
    assert results_doc.main(["--check"]) == 0


def test_study_report_summary_carries_the_paired_verdicts(tmp_path):
    import json
    import shutil

    from ltad.study.report import write_report
    from ltad.study.spec import load_spec

    shutil.copy(ROOT / "docs" / "results" / "study-rows.jsonl", tmp_path / "rows.jsonl")
    report = write_report(load_spec(ROOT / "configs" / "study.yaml"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    verdicts = {(t["level"], t["b"]): t["verdict"] for t in summary["paired_targets"]}
    assert verdicts == {
        ("exp100", "knn"): "met",
        ("exp100", "rec_only"): "not shown",
        ("step100", "knn"): "not shown",
        ("step100", "rec_only"): "not shown",
    }
    assert "step100: LTAD mean image AUROC − kNN = +0.3 points, 95 % CI -8.4 to +9.0" in report.read_text()
