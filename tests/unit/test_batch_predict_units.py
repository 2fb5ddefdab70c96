"""The batch predict's plan, parts and manifest (ltad/inference/batch.py) and where `ltad predict`
runs: the rules that make a rerun resume exactly once, without Ray."""

from __future__ import annotations

import io
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ltad.errors import ConfigError, DataError


def _plan(**kw):
    from ltad.inference.batch import Plan

    base = {
        "images": "/data",
        "model": "/model",
        "inputs": 5,
        "inputs_sha256": "i",
        "model_sha256": "m",
        "part_size": 2,
        "maps": False,
    }
    return Plan(**{**base, **kw})


def _commit(out, part, keys, errors=()):
    from ltad.inference.batch import ERRORS_SCHEMA, SCORES_SCHEMA, part_uri
    from ltad.io import storage

    rows = {
        "key": list(keys),
        "class": [""] * len(keys),
        "gt_label": [""] * len(keys),
        "pred_score": [1.0] * len(keys),
        "pred_score_normalised": [0.5] * len(keys),
        "pred_anomalous": [1] * len(keys),
        "pred_class": ["a"] * len(keys),
    }
    for kind, table in (
        ("errors", pa.table({"path": list(errors), "error": ["bad"] * len(errors)}, schema=ERRORS_SCHEMA)),
        ("scores", pa.table(rows, schema=SCORES_SCHEMA)),
    ):
        sink = io.BytesIO()
        pq.write_table(table, sink)
        storage.write_bytes(part_uri(str(out), kind, part), sink.getvalue())


def test_plan_parts_and_bounds():
    plan = _plan()
    assert plan.parts == 3 and [plan.bounds(p) for p in range(3)] == [(0, 2), (2, 4), (4, 5)]


def test_a_new_out_gets_a_plan_and_a_rerun_resumes_its_committed_parts(tmp_path):
    from ltad.inference.batch import read_counts, start, write_manifest

    out = str(tmp_path / "out")
    assert start(out, _plan(), overwrite=False) == set()
    assert (tmp_path / "out" / "plan.json").exists()
    _commit(out, 0, ["a", "b"])
    _commit(out, 2, [], errors=["e"])
    assert start(out, _plan(), overwrite=False) == {0, 2}
    with pytest.raises(DataError, match=r"lacks parts \[1\] of 3; rerun the same command to resume"):
        write_manifest(out, _plan(), [read_counts(out, 0), read_counts(out, 2)], 1.0)
    _commit(out, 1, ["c", "d"])
    body = write_manifest(out, _plan(), [read_counts(out, p) for p in (2, 0, 1)], 1.0)
    assert (body["scored"], body["failed"], body["anomalous"]) == (4, 1, 4)
    assert [p["scores"] for p in body["parts"]][0] == "parts/scores-000000.parquet"
    assert start(out, _plan(), overwrite=True) == set()  # afresh: earlier parts removed
    assert not (tmp_path / "out" / "parts").exists() and not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"inputs_sha256": "other"}, r"it was made from other images \(5 from /data\)"),
        ({"model_sha256": "other"}, r"it was made with another model \(/model\)"),
        ({"part_size": 3}, "its part size is 2, not 3"),
        ({"maps": True}, "it was made without --maps"),
    ],
)
def test_an_out_of_another_plan_is_refused_in_one_sentence(tmp_path, change, why):
    from ltad.inference.batch import start

    start(str(tmp_path), _plan(), overwrite=False)
    with pytest.raises(ConfigError, match=f"cannot resume: {why}; choose a new --out or add --overwrite"):
        start(str(tmp_path), replace(_plan(), **change), overwrite=False)


def test_a_part_with_the_wrong_row_count_or_without_errors_file_is_refused(tmp_path):
    from ltad.inference.batch import PartCounts, part_uri, read_counts, write_manifest

    out = str(tmp_path)
    with pytest.raises(DataError, match="part 0 of .* holds 1 rows for 2 inputs"):
        write_manifest(out, _plan(), [PartCounts(0, 1, 0, 0)], 1.0)
    _commit(out, 1, ["x", "y"])
    (tmp_path / part_uri("", "errors", 1).lstrip("/")).unlink()
    with pytest.raises(DataError, match="is missing beside its scores part"):
        read_counts(out, 1)


def test_an_out_holding_a_local_predict_is_refused(tmp_path):
    from ltad.inference.batch import start

    (tmp_path / "scores.csv").write_text("key\n")
    with pytest.raises(ConfigError, match=r"already holds predictions without a plan.json \(scores.csv\)"):
        start(str(tmp_path), _plan(), overwrite=False)


def test_where_predict_runs(monkeypatch):
    from ltad.commands.predict import on_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert (on_ray(None), on_ray("0"), on_ray("3")) == (-1, -1, 3)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert (on_ray(None), on_ray("0")) == (None, -1)
    # the job-submission URL users export for `ray job submit` (and scripts/demo sets): not a cluster to
    # join, so predict stays one local process (it crashed in ray.init before)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert (on_ray(None), on_ray("2")) == (-1, 2)
    with pytest.raises(ConfigError, match="--workers must be an int >= 0, got -1"):
        on_ray("-1")


def test_a_driver_refuses_a_job_submission_url_in_one_line(monkeypatch):
    """`--workers N` (or ltad train) with RAY_ADDRESS=http://...: one sentence, not Ray's traceback."""
    import ray

    from ltad.training.cluster import connect

    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(ConfigError) as err:
        connect()
    assert str(err.value).startswith(
        "RAY_ADDRESS 'http://127.0.0.1:8265' is a job-submission (dashboard) URL"
    )
    assert "\n" not in str(err.value)
