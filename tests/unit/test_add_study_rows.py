"""scripts/add_study_rows.py: a later run's rows of new methods join the committed study rows only if
its checked rows match the committed ones (same splits and features) and nothing is added twice."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tools.results_doc import ROOT

spec = importlib.util.spec_from_file_location("add_study_rows", ROOT / "scripts" / "add_study_rows.py")
assert spec is not None and spec.loader is not None
add_study_rows = importlib.util.module_from_spec(spec)
spec.loader.exec_module(add_study_rows)


def _row(method: str, seed: int = 0, auroc: float = 0.8, counts: dict | None = None) -> dict:
    return {
        "level": "exp100",
        "seed": seed,
        "method": method,
        "image_AUROC": auroc,
        "pixel_AUROC": 0.9,
        "pixel_AUPRO": 0.6,
        "image_F1max": 0.7,
        "per_class_image_AUROC": {"a": auroc, "b": 0.5},
        "train_counts": counts or {"a": 10, "b": 1},
    }


def test_checked_rows_must_match_and_only_new_methods_are_appended(tmp_path):
    into, new = tmp_path / "rows.jsonl", tmp_path / "new.jsonl"
    into.write_text(json.dumps(_row("knn")) + "\n" + json.dumps(_row("ltad", auroc=0.7)) + "\n")
    new.write_text(
        json.dumps(_row("knn", auroc=0.8 + 1e-7)) + "\n" + json.dumps(_row("knn_class", auroc=0.9)) + "\n"
    )
    before = into.read_text()
    assert add_study_rows.main(["--rows", str(new), "--into", str(into), "--check", "knn"]) == 0
    rows = [json.loads(x) for x in into.read_text().splitlines()]
    assert into.read_text().startswith(before) and [r["method"] for r in rows] == ["knn", "ltad", "knn_class"]
    # a second time the knn_class row is already there
    assert add_study_rows.main(["--rows", str(new), "--into", str(into), "--check", "knn"]) == 1


@pytest.mark.parametrize(
    ("new_rows", "message"),
    [
        ([_row("knn", auroc=0.81)], "differs from the committed row by 0.01"),
        ([_row("knn", counts={"a": 9, "b": 2})], "training counts differ"),
        ([_row("knn_class", counts={"a": 9, "b": 2})], "training counts differ"),
        ([_row("knn_class", seed=3)], "no committed"),
        ([_row("knn")], "already committed"),  # knn not named in --check
    ],
)
def test_rows_from_another_split_or_run_are_refused(new_rows, message):
    committed = [_row("knn")]
    check = {"knn"} if message != "already committed" else set()
    with pytest.raises(ValueError, match=message):
        add_study_rows.merge(committed, new_rows, check, 1e-4)
