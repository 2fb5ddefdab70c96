"""Checkpoints of a phase: DeepSpeed's own format in the stage's run directory (training/store.py).

Every worker writes its DeepSpeed files (ZeRO shards are per rank) into a local directory and uploads
them; rank 0 seals the checkpoint. The final checkpoint of a phase also holds `model.pt`: the
consolidated fp32 state dict of the trainable modules, which the next phase and the export read with
`weights_only=True`. Metrics still go to Ray (`ray.train.report`, no checkpoint), so Tune and its
schedulers see every logged step.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ltad.errors import DataError
from ltad.training import store
from ltad.training.engine import consolidated_state_dict
from ltad.training.history import HISTORY_FILE, History

TAG = "ds"
MODEL_FILE = store.MODEL_FILE
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


def report(metrics: dict[str, Any], *, summary: bool = False) -> None:
    """Report `metrics` to Ray (every rank). With `summary`, rank 0 attaches a one-file checkpoint
    holding them: Ray Train's `Result.metrics` are those of the last checkpoint reported, and a
    stage's real checkpoints live in its run directory (store.py), not in Ray's."""
    import ray.train

    if not summary:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="ltad-summary-") as tmp:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            (Path(tmp) / "summary.json").write_text(json.dumps(metrics, default=float))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        name = f"summary-{time.time_ns()}" if checkpoint is not None else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)


def save_and_report(
    engine,
    step: int,
    metrics: dict[str, Any],
    *,
    root: str,
    final: bool = False,
    finalize: Finalize | None = None,
    history: History | None = None,
    report_to_ray: bool = True,
) -> None:
    """Save the engine state (all ranks) into `root`'s step directory, then report `metrics` to Ray
    (unless not `report_to_ray`: a preemption checkpoint between logged steps).

    On the final save, rank 0 writes `model.pt`: the consolidated state, mapped by `finalize` (e.g. into
    the whole model's keys, with statistics fitted after training) when given. Rank 0 also writes its
    `history` (history.jsonl) into every checkpoint, and seals it last (store.seal).
    """
    import ray.train

    from ltad.training.dist import barrier

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    uri = store.step_dir(root, step, final)
    with tempfile.TemporaryDirectory(prefix="ltad-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=TAG, client_state={"step": step})
        if final:
            state = consolidated_state_dict(engine)
            if rank == 0:
                torch.save(finalize(state) if finalize else state, Path(tmp) / MODEL_FILE)
        if rank == 0 and history is not None:
            history.write(tmp)
        store.upload_rank_files(tmp, uri, skip=(MODEL_FILE, HISTORY_FILE))
        barrier()
        if rank == 0:
            store.seal(uri, tmp, step=step, world_size=world, files=(HISTORY_FILE, MODEL_FILE))
            store.prune(root)
    if report_to_ray:
        report(dict(metrics, step=step, final=final), summary=final)


def restore(engine, root: str, history: History | None = None) -> int:
    """Load the newest complete checkpoint under `root` into `engine`; the step to resume from (0).
    `history` takes the checkpoint's records up to that step.

    Each worker downloads its own ZeRO shard, the model states and the history (store.download) into its
    own temporary directory.
    """
    import ray.train

    uri = store.latest(root)
    if uri is None:
        return 0
    with tempfile.TemporaryDirectory(prefix="ltad-restore-") as directory:
        if uri.endswith("-final"):
            # the phase finished: its model.pt is the result, so only the history is read, no ZeRO state
            step = int(uri.rsplit("step-", 1)[1][:7])
            data = store.read_file(uri, HISTORY_FILE)
            if data is not None:
                (Path(directory) / HISTORY_FILE).write_bytes(data)
        else:
            store.download(uri, directory, rank=ray.train.get_context().get_world_rank())
            _, client_state = engine.load_checkpoint(directory, tag=TAG)
            if client_state is None:
                raise DataError(f"checkpoint '{uri}' holds no DeepSpeed state under tag '{TAG}'")
            step = int(client_state["step"])
        if history is not None:
            history.resume(directory, step)
    return step


def load_model_state(checkpoint) -> dict[str, torch.Tensor]:
    """The consolidated fp32 state dict saved with a phase's final checkpoint (a URI or a
    `ray.train.Checkpoint`), read straight into this process's memory."""
    data = store.read_file(checkpoint, MODEL_FILE)
    if data is None:
        raise DataError(
            f"checkpoint '{store.uri_of(checkpoint)}' has no {MODEL_FILE}: the phase did not finish"
        )
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
