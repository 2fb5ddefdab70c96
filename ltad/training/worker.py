"""`Worker`: what every stage's code on a Ray Train worker shares (input, config, manifest, rank, device)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ltad.config import LTADConfig
from ltad.data.manifest import Manifest, read_manifest
from ltad.log import get_logger, set_rank
from ltad.training.dist import init_distributed
from ltad.training.inputs import StageInput

log = get_logger("stage")


@dataclass
class Worker:
    """What every train function needs: its input, config, data, this worker's place and device."""

    inp: StageInput
    manifest: Manifest
    rank: int
    world_size: int
    device: torch.device

    @property
    def cfg(self) -> LTADConfig:
        return self.inp.config

    @property
    def data_uri(self) -> str:
        return self.inp.data_uri

    def log(self, msg: str) -> None:
        """Progress on rank 0 (the job log)."""
        log.info(msg)

    @property
    def class_counts(self) -> list[int]:
        return [self.manifest.counts["train"].get(c, 0) for c in self.manifest.classes]


def worker(loop: dict[str, Any]) -> Worker:
    """Unwrap the stage input, join DeepSpeed to Ray's process group, pick the device."""
    import ray.train

    inp = StageInput.of(loop)
    init_distributed(inp.config.scaling.use_gpu)
    ctx = ray.train.get_context()
    set_rank(ctx.get_world_rank())
    device = torch.device("cpu")
    if inp.config.scaling.use_gpu:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    return Worker(inp, read_manifest(inp.data_uri), ctx.get_world_rank(), ctx.get_world_size(), device)
