"""Checkpoints of a phase through `ray.train.Checkpoint` and DeepSpeed's own format.

Every worker writes its DeepSpeed files (ZeRO shards are per rank) into a local directory and reports
it; Ray merges the workers' files into one checkpoint under `RunConfig.storage_path`. The final
checkpoint of a phase also holds `model.pt`: the consolidated fp32 state dict of the trainable
modules, which the next phase and the export read with `weights_only=True`.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ltad.errors import DataError
from ltad.training.engine import consolidated_state_dict
from ltad.training.history import History

TAG = "ds"
MODEL_FILE = "model.pt"
EVALUATION_PREFIX = "evaluation-"


def evaluation_dir_name() -> str:
    """A new evaluation checkpoint's directory name, unique per report and sorting by time.

    Never a name reported before in the same run: Ray's retention (num_to_keep) deletes an older
    checkpoint by its path, which would be the new one's too (a re-run evaluation lost its results).
    """
    now = time.time_ns()
    return (
        f"{EVALUATION_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 10**9))}.{now % 10**9:09d}Z"
    )


Finalize = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def save_and_report(
    engine,
    step: int,
    metrics: dict[str, Any],
    *,
    final: bool = False,
    finalize: Finalize | None = None,
    history: History | None = None,
) -> None:
    """Save the engine state (all ranks) and report it to Ray with `metrics` (a barrier).

    On the final save, rank 0 writes `model.pt`: the consolidated state, mapped by `finalize` (e.g. into
    the whole model's keys, with statistics fitted after training) when given. Rank 0 also writes its
    `history` (history.jsonl) into every checkpoint.
    """
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory(prefix="ltad-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=TAG, client_state={"step": step})
        if final:
            state = consolidated_state_dict(engine)
            if rank == 0:
                torch.save(finalize(state) if finalize else state, Path(tmp) / MODEL_FILE)
        if rank == 0 and history is not None:
            history.write(tmp)
        ray.train.report(
            dict(metrics, step=step, final=final),
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"step-{step:07d}{'-final' if final else ''}",
        )


def restore(engine, history: History | None = None) -> int:
    """Load the latest reported checkpoint of this run into `engine`; the step to resume from (0).
    `history` takes the checkpoint's records up to that step.

    Each worker downloads the checkpoint into its own temporary directory: `Checkpoint.as_directory`
    shares one download among the processes of a node, and a reader of that shared copy once met a
    half-written file (docs/RELIABILITY.md, "Limits").
    """
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0
    with tempfile.TemporaryDirectory(prefix="ltad-restore-") as directory:
        ckpt.to_directory(directory)
        _, client_state = engine.load_checkpoint(directory, tag=TAG)
        if client_state is None:
            raise DataError(f"checkpoint '{ckpt.path}' holds no DeepSpeed state under tag '{TAG}'")
        step = int(client_state["step"])
        if history is not None:
            history.resume(directory, step)
    return step


def load_model_state(checkpoint) -> dict[str, torch.Tensor]:
    """The consolidated fp32 state dict saved with a phase's final checkpoint.

    Reads `model.pt` alone, straight from the checkpoint's filesystem into this process's memory: no
    shared local copy that another worker of the node could be writing or deleting meanwhile.
    """
    import pyarrow.fs

    fs, path = checkpoint.filesystem, f"{str(checkpoint.path).rstrip('/')}/{MODEL_FILE}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise DataError(f"checkpoint '{checkpoint.path}' has no {MODEL_FILE}: the phase did not finish")
    with fs.open_input_stream(path) as stream:
        data = stream.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
