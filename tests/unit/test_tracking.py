"""history.jsonl and the experiment trackers: a real MLflow file store read back with MlflowClient, real
TensorBoard event files read back with EventAccumulator, no Ray."""

from __future__ import annotations

import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest

from ltad.config import LTADConfig
from ltad.errors import ConfigError, DataError
from ltad.training.history import (
    HISTORY_FILE,
    History,
    parse_jsonl,
    read_checkpoint_history,
    run_history,
    to_jsonl,
    write_history,
)
from ltad.training.loop import learning_rates
from ltad.training.tracking import Tracker, flat_params, mlflow_uri, record_metrics, tune_mlflow_callbacks


def _checkpoint(directory: Path):
    """What read_checkpoint_history needs of a ray.train.Checkpoint: its filesystem and path."""
    return SimpleNamespace(filesystem=pyarrow.fs.LocalFileSystem(), path=str(directory))


def _stage(stage: str, steps: range, tmp: Path) -> Path:
    h = History(stage)
    for s in steps:
        h.add(s, {"loss": 1.0 / s, "lr": 1e-4, "samples_per_s": 8.0})
    out = tmp / stage
    out.mkdir()
    h.write(out)
    return out


# --------------------------------------------------------------------------- history


def test_history_lines_are_json_objects_with_non_finite_values_as_null():
    data = to_jsonl(
        [{"stage": "phase1", "step": 1, "loss": math.nan, "lr": math.inf}, {"step": 2, "loss": 0.5}]
    )
    lines = data.decode().splitlines()
    assert json.loads(lines[0]) == {"stage": "phase1", "step": 1, "loss": None, "lr": None}
    assert parse_jsonl(data, "h")[1] == {"step": 2, "loss": 0.5}


def test_history_parse_names_the_bad_line():
    with pytest.raises(DataError, match=r"^x/history.jsonl line 2 is not a JSON object$"):
        parse_jsonl(b'{"step": 1}\n[1, 2]\n', "x/history.jsonl")


def test_history_resume_keeps_the_checkpoint_records_up_to_its_step(tmp_path):
    h = History("phase2")
    for step in (2, 4, 6):
        h.add(step, {"loss": float(step)})
    h.write(tmp_path)
    resumed = History("phase2")
    resumed.resume(tmp_path, 4)  # never a step past the one the stage resumes from
    assert [r["step"] for r in resumed.records] == [2, 4]
    resumed.add(6, {"loss": 0.1})
    assert [r["step"] for r in resumed.records] == [2, 4, 6]
    empty = History("phase2")
    empty.resume(tmp_path / "missing", 4)  # a checkpoint made before history existed
    assert empty.records == []


def test_run_history_reads_each_stage_checkpoint_in_stage_order_and_writes_one_file(tmp_path):
    p1, p2 = _stage("phase1", range(1, 4), tmp_path), _stage("phase2", range(2, 6, 2), tmp_path)
    (tmp_path / "bare").mkdir()
    assert read_checkpoint_history(_checkpoint(tmp_path / "bare")) == []
    records = run_history({"phase2": _checkpoint(p2), "phase1": _checkpoint(p1), "evaluate": None})
    assert [(r["stage"], r["step"]) for r in records] == [
        ("phase1", 1),
        ("phase1", 2),
        ("phase1", 3),
        ("phase2", 2),
        ("phase2", 4),
    ]
    uri = write_history(str(tmp_path / "out"), records)
    assert uri == str(tmp_path / "out" / HISTORY_FILE)
    assert parse_jsonl(Path(uri).read_bytes(), uri) == records
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != HISTORY_FILE]  # no temp file left


def test_learning_rates_name_the_parameter_groups():
    engine = SimpleNamespace(
        optimizer=SimpleNamespace(param_groups=[{"lr": 1e-3, "name": "names"}, {"lr": 1e-4}])
    )
    assert learning_rates(engine) == {"lr_names": 1e-3, "lr": 1e-4}
    two = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[{"lr": 1.0}, {"lr": 2.0}]))
    assert learning_rates(two) == {"lr": 1.0, "lr_1": 2.0}


# --------------------------------------------------------------------------- config


def test_loggers_config_is_validated():
    cfg = LTADConfig().with_overrides(["run.loggers=mlflow,tensorboard"])
    assert cfg.run.loggers == ("mlflow", "tensorboard")
    with pytest.raises(
        ConfigError, match=r"'run.loggers\[0\]' must be one of mlflow, tensorboard, got 'wandb'"
    ):
        LTADConfig().with_overrides(["run.loggers=wandb"])
    with pytest.raises(ConfigError, match="'run.loggers' must be a list without repeats"):
        LTADConfig.from_dict({"run": {"loggers": ["mlflow", "mlflow"]}})


def test_mlflow_uri_defaults_to_the_local_output_and_refuses_s3_without_one(tmp_path):
    run = LTADConfig().with_overrides([f"run.output={tmp_path}/out"]).run
    assert mlflow_uri(run) == (tmp_path / "out" / "mlruns").as_uri()
    assert mlflow_uri(run, default_dir=str(tmp_path / "sweep")) == (tmp_path / "sweep" / "mlruns").as_uri()
    served = LTADConfig().with_overrides(["run.output=s3://b/run", "run.tracking_uri=http://mlflow:5000"])
    assert mlflow_uri(served.run) == "http://mlflow:5000"
    s3 = LTADConfig().with_overrides(["run.output=s3://b/run"]).run
    with pytest.raises(ConfigError, match="run.tracking_uri is empty and 's3://b/run' is not local"):
        mlflow_uri(s3)


def test_a_missing_package_is_one_config_error(tmp_path, monkeypatch):
    cfg = LTADConfig().with_overrides([f"run.output={tmp_path}", "run.loggers=mlflow"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` sees without the package
    with pytest.raises(ConfigError, match=r"mlflow package is not installed \(pip install mlflow-skinny\)$"):
        Tracker(cfg)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    tb = cfg.with_overrides(["run.loggers=tensorboard"])
    with pytest.raises(ConfigError, match="tensorboard package is not installed"):
        Tracker(tb)


def test_an_unreachable_tracking_server_is_one_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = LTADConfig().with_overrides(
        [f"run.output={tmp_path}", "run.loggers=mlflow", "run.tracking_uri=http://127.0.0.1:9"]
    )
    with pytest.raises(
        ConfigError, match=r"^run.tracking_uri 'http://127.0.0.1:9': MLflow cannot start a run"
    ):
        Tracker(cfg)


# --------------------------------------------------------------------------- trackers


def test_record_metrics_and_flat_params():
    record = {"stage": "phase2", "step": 4, "time": 1.0, "loss": 0.5, "lr": 1e-4, "bad": None}
    assert record_metrics(record) == {"phase2/loss": 0.5, "phase2/lr": 1e-4}
    params = flat_params(LTADConfig())
    assert params["phase1.lr"] == "0.0001" and params["model.encoder.layers"] == "[1, 2, 3]"


def _tracked_run(tmp_path: Path, ok: bool = True):
    cfg = LTADConfig().with_overrides(
        [f"run.output={tmp_path}/out", "run.loggers=mlflow,tensorboard", "run.name=unit"]
    )
    p1, p2 = _stage("phase1", range(1, 4), tmp_path), _stage("phase2", range(2, 6, 2), tmp_path)
    outputs = tmp_path / "published"
    outputs.mkdir()
    (outputs / "metrics.json").write_text('{"image_AUROC": 0.75}')
    with pytest.raises(RuntimeError) if not ok else nullcontext(), Tracker(cfg) as tracker:
        run_id = tracker.mlflow.run_id
        history = run_history({"phase1": _checkpoint(p1)})
        tracker.stage("phase1", history)
        if not ok:
            raise RuntimeError("stage failed")
        history = run_history({"phase1": _checkpoint(p1), "phase2": _checkpoint(p2)})
        tracker.stage("phase2", history)
        tracker.outputs(outputs)
        tracker.evaluation({"image_AUROC": 0.75, "pixel_AUROC": None})
    return cfg, run_id


def test_mlflow_file_store_holds_params_step_metrics_artefacts_and_status(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg, run_id = _tracked_run(tmp_path)
    client = MlflowClient((tmp_path / "out" / "mlruns").as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "unit"
    assert run.data.params["phase2.steps"] == str(cfg.phase2.steps) and run.data.params["run.name"] == "unit"
    loss = client.get_metric_history(run_id, "phase1/loss")
    assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert [m.step for m in client.get_metric_history(run_id, "phase2/lr")] == [2, 4]
    assert run.data.metrics["evaluate/image_AUROC"] == 0.75 and "evaluate/pixel_AUROC" not in run.data.metrics
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.json", HISTORY_FILE, "config.yaml"} <= names
    local = Path(client.download_artifacts(run_id, HISTORY_FILE, str(tmp_path / "dl")))
    assert [r["stage"] for r in parse_jsonl(local.read_bytes(), "dl")] == ["phase1"] * 3 + ["phase2"] * 2


def test_a_failed_run_is_marked_failed(tmp_path):
    from mlflow.tracking import MlflowClient

    _, run_id = _tracked_run(tmp_path, ok=False)
    client = MlflowClient((tmp_path / "out" / "mlruns").as_uri())
    assert client.get_run(run_id).info.status == "FAILED"
    assert len(client.get_metric_history(run_id, "phase1/loss")) == 3


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _tracked_run(tmp_path)
    logdir = tmp_path / "out" / "tensorboard"
    assert sorted(p.name for p in logdir.iterdir()) == [
        f"events.out.tfevents.ltad-{part}" for part in ("config", "evaluate", "phase1", "phase2")
    ]
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"phase1/loss", "phase1/lr", "phase2/samples_per_s", "evaluate/image_AUROC"} <= set(scalars)
    assert [(e.step, e.value) for e in acc.Scalars("phase1/loss")] == [
        (1, 1.0),
        (2, 0.5),
        (3, pytest.approx(1 / 3)),
    ]
    assert [e.step for e in acc.Scalars("phase2/loss")] == [2, 4]


def test_a_rerun_replaces_the_tensorboard_stage_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _tracked_run(tmp_path)  # phase 1 logged once; now the same stage again (a rerun of the job)
    cfg = LTADConfig().with_overrides([f"run.output={tmp_path}/out", "run.loggers=tensorboard"])
    p1 = tmp_path / "phase1"
    with Tracker(cfg) as tracker:
        tracker.stage("phase1", run_history({"phase1": _checkpoint(p1)}))
    acc = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("phase1/loss")] == [1, 2, 3]  # not [1, 1, 2, 2, 3, 3]


class _Trial:
    """What Tune's MLflowLoggerCallback reads of a trial (no Tune run needed to drive it)."""

    def __init__(self, name: str, config: dict) -> None:
        self.config, self.name, self.local_path = config, name, ""

    def __str__(self) -> str:
        return self.name


def test_tune_callback_only_with_mlflow_and_it_logs_trials_to_the_file_store(tmp_path):
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    assert tune_mlflow_callbacks(LTADConfig().run, str(tmp_path), "sweep") == []
    run = LTADConfig().with_overrides(["run.loggers=mlflow"]).run
    (callback,) = tune_mlflow_callbacks(run, str(tmp_path / "root"), "sweep")
    assert isinstance(callback, MLflowLoggerCallback)
    uri = (tmp_path / "root" / "mlruns").as_uri()
    assert callback.tracking_uri == uri and callback.experiment_name == "sweep"
    # the calls Tune makes in the sweep's driver, in its order
    callback.setup()
    # a sweep trial's Tune config: its level and its swept fields (ltad/sweep/space.py); its name
    # is the space's (the sweep's trial_name_creator)
    config = {"level": "exp4", "model.prompts.length": 1, "phase2.lr": 0.0003}
    trial = _Trial("exp4-L1-lr_0.0003", config)
    callback.log_trial_start(trial)
    for i, loss in enumerate((0.9, 0.7), 1):
        callback.log_trial_result(i, trial, {"training_iteration": i, "phase2/loss": loss, "published": "x"})
    callback.log_trial_end(trial)
    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert found.info.status == "FINISHED" and found.data.tags["trial_name"] == "exp4-L1-lr_0.0003"
    assert found.data.params == {"level": "exp4", "model.prompts.length": "1", "phase2.lr": "0.0003"}
    history = client.get_metric_history(found.info.run_id, "phase2/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.7)]
