"""Phase 2 and evaluation as one `TorchTrainer` train function: what a sweep trial runs.

A sweep trial always evaluates the phase-2 model it has just trained. Two stages would pay Ray
Train's worker-group start-up (tens of seconds), a model build and a checkpoint download twice per
trial; in one stage the evaluation takes the final state from memory. Phase 2 still reports its
checkpoints as it goes (its final one holds the whole model), so a restarted stage resumes phase 2
from its latest checkpoint, finalises again and evaluates; the evaluation is the stage's last
checkpoint (`evaluation/`), as in the evaluation-only stage.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from ltad.eval.evaluate import evaluate_state
from ltad.training.phases import train_phase2, worker


def broadcast_from_rank0(obj: Any, world_size: int) -> Any:
    """Rank 0's `obj` on every rank (the final state exists on rank 0 only)."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def phase2_and_evaluate(config: dict[str, Any]) -> None:
    """Train function: phase 2, then the exactly-once evaluation of its final model, in one worker group."""
    w = worker(config)
    state, metrics = train_phase2(w, config)
    state = broadcast_from_rank0(state, w.world_size)
    if state is None:
        raise RuntimeError("phase 2 ended without a final model state on rank 0")
    evaluate_state(w, state, config, extra=metrics)
