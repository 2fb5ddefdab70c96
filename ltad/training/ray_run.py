"""Ray Train wiring: a `TorchTrainer` per phase with scaling, storage and fault tolerance from config.

Storage on `s3://` goes through a pyarrow S3 filesystem built from the environment (endpoint and
region; pyarrow reads the credentials from the environment itself, so they never enter a config,
a pickled trainer or a log). A rerun with the same run name and storage path resumes from the latest
checkpoint (Train V2 has no `resume_from_checkpoint`).

`scaling.worker_start_timeout_s` reaches Ray Train as RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S in the
driver's environment, which Ray Train hands on to its controller (the only way it is read): a job
submitted before its nodes have joined waits that long for them instead of Ray's 60 s.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ltad.io.storage import S3_SETTINGS
from ltad.training.inputs import StageInput

# Variables a worker needs that must not depend on how its node was started (the S3 endpoint and
# region too: a trial driver that fits a stage passes on what its job gave it; never credentials).
WORKER_ENV = (
    "HF_HUB_OFFLINE",
    "DS_ACCELERATOR",
    "RAY_AUTH_MODE",
    "OMP_NUM_THREADS",
    "LTAD_CACHE_DIR",
    *S3_SETTINGS,
)
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
"""Ray Train's worker group start timeout (read by its controller from the driver's environment)."""


def s3_filesystem():
    """A pyarrow S3 filesystem for the endpoint in AWS_ENDPOINT_URL(_S3); None for AWS itself."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None
    import pyarrow.fs

    parsed = urlparse(endpoint)
    return pyarrow.fs.S3FileSystem(
        endpoint_override=parsed.netloc or parsed.path,
        scheme=parsed.scheme or "http",
        region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
    )


def resolve_storage(storage_path: str, output: str) -> tuple[str, Any]:
    """(path, filesystem) for RunConfig; '' means `{output}/ray` (output local) ."""
    if not storage_path:
        storage_path = output.rstrip("/") + "/ray"
    if storage_path.startswith("s3://"):
        fs = s3_filesystem()
        return (storage_path[len("s3://") :], fs) if fs is not None else (storage_path, None)
    return str(Path(storage_path).resolve()), None


def fit(
    train_fn: Callable[[dict[str, Any]], None],
    inp: StageInput,
    *,
    name: str,
    num_workers: int | None = None,
    callbacks: Sequence[Any] = (),
):
    """Run the stage `train_fn` on `inp.config.scaling` workers; the `ray.train.Result` (raises if it failed).

    `callbacks` are Ray Train callbacks, e.g. Tune's `TuneReportCallback`, with which a sweep trial
    forwards every report of its run to Tune (for ASHA).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = inp.config
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = 1
    path, fs = resolve_storage(cfg.run.storage_path, cfg.run.output)
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env.setdefault("DS_ACCELERATOR", "cuda" if sc.use_gpu else "cpu")
    os.environ[START_TIMEOUT_ENV] = f"{sc.worker_start_timeout_s:g}"  # the config is the one source
    # ray.train picks its V2 RunConfig at import time; mypy sees the V1 one, which lacks two of these.
    run_config = ray.train.RunConfig(  # type: ignore[call-arg]
        name=name,
        storage_path=path,
        storage_filesystem=fs,
        failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        worker_runtime_env={"env_vars": env},
        callbacks=list(callbacks),
        # Ray Train's INFO lines repeat every report in full; the loop logs progress itself.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
    )
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=inp.loop_config(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers or sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if sc.use_gpu else "gloo"),
        run_config=run_config,
    )
    return trainer.fit()
