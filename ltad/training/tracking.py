"""Experiment trackers of a run (`run.loggers`): MLflow and TensorBoard, fed by the job's driver.

The metrics come from rank 0's history (history.py: means over ranks of each logged interval), read
from each training stage's final checkpoint, so each point is logged once, never once per worker,
and a resumed stage logs the same points an uninterrupted one would. The driver logs:

- at the start, the whole resolved config as params (MLflow: dotted keys; TensorBoard: the YAML
  as text);
- after each training stage, its history as metrics `<stage>/<name>` at their steps;
- after the evaluation, the headline metrics as `evaluate/<metric>`, and (MLflow) the published
  outputs and history.jsonl as artefacts, and the export as a pyfunc model (`ltad-model`,
  inference/mlflow_model.py) for the registry and `mlflow models serve`.

MLflow: `run.tracking_uri` (an `http(s)://` server, a `file:` URI or a local directory), by default
`{run.output}/mlruns` when the output is local. A local store lies on the driver's node; on a cluster
use a tracking server (`http://...`, e.g. with an S3 artefact store) so the runs outlive that node.
MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set (it wants a database; this
environment has no SQLAlchemy), so ltad sets it for a `file:` URI; one MLflow run per job launch, in
the experiment `run.name`. TensorBoard: event files under `{run.output}/tensorboard/` (local or S3,
through ltad.io.storage), one per stage, rewritten whole, so a rerun replaces rather than repeats.
The packages are imported only when configured; a missing one is one ConfigError line.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ltad.config import LTADConfig, RunConfig, to_dict
from ltad.errors import ConfigError
from ltad.io import storage
from ltad.training.history import HISTORY_FILE, to_jsonl

TENSORBOARD_DIR = "tensorboard"
MLRUNS_DIR = "mlruns"
MLFLOW_PARAMS_PER_CALL = 100  # MLflow's log_batch limits
MLFLOW_METRICS_PER_CALL = 1000


def flat_params(cfg: LTADConfig) -> dict[str, str]:
    """The config as dotted key -> string value (lists as `[a, b]`)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = str(node)

    walk("", to_dict(cfg))
    return out


def record_metrics(record: dict[str, Any]) -> dict[str, float]:
    """A history record's numeric values as `<stage>/<name>` (stage, step, time and nulls left out)."""
    stage = record["stage"]
    return {
        f"{stage}/{k}": float(v)
        for k, v in record.items()
        if k not in ("stage", "step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def mlflow_uri(run: RunConfig, default_dir: str | None = None) -> str:
    """The MLflow tracking URI of a run: `run.tracking_uri`, else `{default_dir or run.output}/mlruns`
    when that is local; a ConfigError when there is no local place to default to."""
    uri = run.tracking_uri
    if not uri:
        base = default_dir if default_dir is not None else run.output
        if storage.is_s3(base):
            raise ConfigError(
                f"run.loggers has 'mlflow' but run.tracking_uri is empty and '{base}' is not local: set "
                "run.tracking_uri to an MLflow server (http://host:5000) or a local directory"
            )
        uri = str(Path(base) / MLRUNS_DIR)
    if "://" in uri or uri.startswith("file:"):
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def import_mlflow():
    try:
        import mlflow
    except ImportError:
        raise ConfigError(
            "run.loggers has 'mlflow' but the mlflow package is not installed (pip install mlflow-skinny)"
        ) from None
    return mlflow


def allow_file_store(uri: str) -> None:
    """MLflow 3 raises on a file store unless opted in; a `file:` URI is that opt-in."""
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


class MlflowLogger:
    """One MLflow run of the job, through `MlflowClient` (no global active run)."""

    def __init__(self, uri: str, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        import_mlflow()
        allow_file_store(uri)
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        except Exception as exc:  # noqa: BLE001 - any failure to open the store is the same one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(
                f"run.tracking_uri '{uri}': MLflow cannot start a run in experiment '{experiment}': {first}"
            ) from None

    def log_params(self, params: dict[str, str], text: str) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MLFLOW_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i : i + MLFLOW_PARAMS_PER_CALL])
        self.client.log_text(self.run_id, text, "config.yaml")

    def log_metrics(self, points: list[tuple[int, float, dict[str, float]]]) -> None:
        """`points`: (step, unix time, {key: value})."""
        from mlflow.entities import Metric

        items = [Metric(k, v, int(t * 1000), step) for step, t, values in points for k, v in values.items()]
        for i in range(0, len(items), MLFLOW_METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=items[i : i + MLFLOW_METRICS_PER_CALL])

    def log_artifacts(self, directory: Path) -> None:
        self.client.log_artifacts(self.run_id, str(directory))

    def log_model(self, export_dir: Path) -> str:
        """The export as an MLflow pyfunc model of this run (inference/mlflow_model.py); its URI."""
        from ltad.inference.mlflow_model import log_pyfunc

        uri = log_pyfunc(self.client, self.run_id, export_dir)
        self.client.set_tag(self.run_id, "ltad.pyfunc_model", uri)
        return uri

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class TensorBoardLogger:
    """Event files under `{output}/tensorboard/`, one per part (config, each stage, evaluate)."""

    def __init__(self, output: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ConfigError(
                "run.loggers has 'tensorboard' but the tensorboard package is not installed "
                "(pip install tensorboard)"
            ) from None
        self.dir = storage.join(output, TENSORBOARD_DIR)

    def _write(self, part: str, fill) -> str:
        from torch.utils.tensorboard import SummaryWriter

        with tempfile.TemporaryDirectory(prefix="ltad-tb-") as tmp:
            writer = SummaryWriter(tmp)
            fill(writer)
            writer.close()
            (events,) = Path(tmp).glob("events.out.tfevents.*")
            uri = storage.join(self.dir, f"events.out.tfevents.ltad-{part}")
            storage.upload_file(events, uri)
        return uri

    def log_params(self, params: dict[str, str], text: str) -> None:
        self._write("config", lambda w: w.add_text("config", f"```\n{text}\n```", 0))

    def log_metrics(self, part: str, points: list[tuple[int, float, dict[str, float]]]) -> None:
        def fill(writer) -> None:
            for step, t, values in points:
                for k, v in values.items():
                    writer.add_scalar(k, v, step, walltime=t)

        self._write(part, fill)


class Tracker:
    """The configured loggers of one job, on its driver; does nothing when `run.loggers` is empty."""

    def __init__(self, cfg: LTADConfig, log=None) -> None:
        self.cfg, self.log = cfg, log
        self.mlflow: MlflowLogger | None = None
        self.tensorboard: TensorBoardLogger | None = None
        run = cfg.run
        if "tensorboard" in run.loggers:
            self.tensorboard = TensorBoardLogger(run.output)
        if "mlflow" in run.loggers:
            uri = mlflow_uri(run)
            self.mlflow = MlflowLogger(uri, run.name, run.name, {"ltad.output": run.output})
            if log is not None:
                log(f"mlflow: run {self.mlflow.run_id} in experiment '{run.name}' at {uri}")
        text = cfg.to_yaml()
        params = flat_params(cfg)
        for logger in (self.mlflow, self.tensorboard):
            if logger is not None:
                logger.log_params(params, text)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, *_: Any) -> None:
        if self.mlflow is not None:
            self.mlflow.close(ok=kind is None)

    def stage(self, stage: str, history: list[dict[str, Any]]) -> None:
        """A finished training stage: its records of the run's `history` as metrics, and (MLflow) the
        whole history so far as the artefact history.jsonl."""
        points = [
            (int(r["step"]), float(r["time"]), record_metrics(r)) for r in history if r["stage"] == stage
        ]
        if self.mlflow is not None:
            self.mlflow.log_metrics(points)
            self.mlflow.client.log_text(self.mlflow.run_id, to_jsonl(history).decode(), HISTORY_FILE)
        if self.tensorboard is not None:
            self.tensorboard.log_metrics(stage, points)

    def outputs(self, directory: Path) -> None:
        """(MLflow) the published outputs, from their local copy in `directory`, as artefacts, and the
        export in its `model/` as a pyfunc model (`runs:/<run id>/ltad-model`, the run's tag
        `ltad.pyfunc_model`), which the MLflow registry and `mlflow models serve` take."""
        if self.mlflow is not None:
            self.mlflow.log_artifacts(directory)
            if (directory / "model" / "export.json").is_file():
                uri = self.mlflow.log_model(directory / "model")
                if self.log is not None:
                    self.log(f"mlflow: logged the export as pyfunc model {uri}")

    def evaluation(self, summary: dict[str, float]) -> None:
        """The evaluation's headline metrics as `evaluate/<metric>`."""
        values = {f"evaluate/{k}": float(v) for k, v in summary.items() if v is not None}
        points = [(0, time.time(), values)]
        if self.mlflow is not None:
            self.mlflow.log_metrics(points)
        if self.tensorboard is not None:
            self.tensorboard.log_metrics("evaluate", points)


def tune_mlflow_callbacks(run: RunConfig, root: str, experiment: str) -> list[Any]:
    """[Ray Tune's MLflowLoggerCallback] when `run.loggers` has mlflow (store default `{root}/mlruns`)."""
    if "mlflow" not in run.loggers:
        return []
    import_mlflow()
    uri = mlflow_uri(run, default_dir=root)
    allow_file_store(uri)
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment, tags={"ltad.root": root})]
