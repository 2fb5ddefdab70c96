"""The export as an MLflow pyfunc model: logged by the job's tracker into a real local file store, loaded
back with `mlflow.pyfunc.load_model`, its scores equal to `ltad predict`'s (Predictor) within 1e-5."""

from __future__ import annotations

import base64
import shutil

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration


def test_tracker_logs_the_export_as_a_pyfunc_model_that_scores_like_predict(exported, tmp_path):
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from ltad.config import LTADConfig
    from ltad.inference.predict import find_images
    from ltad.inference.predictor import Predictor
    from ltad.training.tracking import Tracker

    model_dir, folder, _, _ = exported
    published = tmp_path / "published"  # what publish() hands the tracker: the outputs, model/ included
    shutil.copytree(model_dir, published / "model")
    (published / "metrics.json").write_text("{}")
    cfg = LTADConfig.from_dict(
        {"run": {"name": "pyfunc", "output": str(tmp_path / "out"), "loggers": ["mlflow"]}}
    )
    lines: list[str] = []
    with Tracker(cfg, lines.append) as tracker:
        tracker.outputs(published)
        run_id = tracker.mlflow.run_id
    uri = f"runs:/{run_id}/ltad-model"
    assert any(uri in line for line in lines), lines
    store = (tmp_path / "out" / "mlruns").as_uri()
    client = MlflowClient(store)
    assert client.get_run(run_id).data.tags["ltad.pyfunc_model"] == uri
    assert {a.path for a in client.list_artifacts(run_id)} >= {"metrics.json", "model", "ltad-model"}

    mlflow.set_tracking_uri(store)
    model = mlflow.pyfunc.load_model(uri)
    files, _ = find_images(str(folder))
    got = model.predict([str(p) for p in files])
    expected = Predictor.load(model_dir).predict(files)
    assert list(got.columns) == [
        "score", "score_normalised", "anomalous", "pred_class", "threshold", "threshold_source"
    ]  # fmt: skip
    assert np.abs(got["score"].to_numpy() - expected.scores).max() <= 1e-5
    assert np.abs(got["score_normalised"].to_numpy() - expected.scores_normalised).max() <= 1e-5
    assert got["pred_class"].tolist() == expected.pred_class
    assert got["anomalous"].tolist() == expected.decisions.tolist()
    # what `mlflow models serve` passes for {"dataframe_records": [{"image": "<base64>"}, ...]}
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in files]})
    again = model.predict(frame)
    assert np.abs(again["score"].to_numpy() - expected.scores).max() <= 1e-5
