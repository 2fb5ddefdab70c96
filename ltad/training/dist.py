"""Every collective the stages use, in one place: joining the process group, reduce, gather, broadcast.

Ray Train creates the process group (gloo on CPU, NCCL on GPU) before a train function starts;
DeepSpeed joins it. Each helper also works in a single process (world size 1, no group), so stage
code never branches on whether it is distributed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ltad.training.engine import prepare_runtime


def init_distributed(use_gpu: bool) -> None:
    """Reuse the process group Ray Train created (or create a single-process one)."""
    prepare_runtime(use_gpu)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def all_reduce(values: torch.Tensor, op=None) -> torch.Tensor:
    """All-reduce a small CPU tensor on any backend (NCCL needs it on the GPU); returns a CPU tensor."""
    if not is_distributed():
        return values.clone()
    on = values.cuda() if dist.get_backend() == "nccl" else values.clone()
    dist.all_reduce(on, op=op or dist.ReduceOp.SUM)
    return on.cpu()


def gather_to_rank0(obj: Any, rank: int, world_size: int) -> list[Any] | None:
    """Every rank's picklable `obj` as a list on rank 0 (by rank); None elsewhere."""
    if world_size == 1:
        return [obj]
    out = [None] * world_size if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_rank0(obj: Any, world_size: int) -> Any:
    """Rank 0's picklable `obj` on every rank."""
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
