"""The DeepSpeed engine over a phase objective's trainable parameters.

The ZeRO stage comes from `configs/deepspeed/zero{stage}.json`; this module fills in what depends on
the run (micro batch, learning rates, clipping, precision) so the JSON files stay run-independent.
On the CPU it applies a verified recipe: the CPU accelerator, gloo,
torch's Adam instead of DeepSpeed's JIT-compiled one, and no shared-memory comm op.
Mixed precision uses DeepSpeed's `torch_autocast`: parameters and optimizer state stay fp32 (so the
exported weights are exact fp32) while matmuls run in bf16 (fp16 on a GPU without bf16, with
DeepSpeed's GradScaler; training/precision.py chooses), and tensors the objective holds outside the
engine (frozen text embeddings) need no casting.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ltad.config import ScalingConfig
from ltad.errors import ConfigError
from ltad.training import precision

DEEPSPEED_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


def load_zero_config(stage: int, directory: Path = DEEPSPEED_DIR) -> dict[str, Any]:
    """The run-independent DeepSpeed JSON of a ZeRO stage."""
    path = directory / f"zero{stage}.json"
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config '{path}' for scaling.zero_stage={stage} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DeepSpeed config '{path}' is not valid JSON: {exc}") from None


def deepspeed_config(
    base: dict[str, Any],
    scaling: ScalingConfig,
    *,
    batch_size: int,
    lr: float,
    weight_decay: float,
    grad_clip: float,
) -> dict[str, Any]:
    """`base` completed with the run's values; autocast on a GPU always (bf16, or fp16 where the card has
    no bf16), on the CPU only if `scaling.precision` is bf16."""
    cfg = copy.deepcopy(base)
    cfg["train_micro_batch_size_per_gpu"] = batch_size
    cfg.setdefault("gradient_accumulation_steps", 1)
    cfg["gradient_clipping"] = grad_clip
    opt = cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})
    opt.setdefault("params", {}).update(lr=lr, weight_decay=weight_decay)
    if not scaling.use_gpu:
        opt["params"]["torch_adam"] = True
    mode = precision.select(scaling.use_gpu, scaling.precision)
    if mode != "fp32":
        cfg["torch_autocast"] = {"enabled": True, "dtype": str(precision.DTYPES[mode]).removeprefix("torch.")}
    return cfg


def prepare_runtime(use_gpu: bool) -> None:
    """Environment DeepSpeed reads at import: must run before the first `import deepspeed`."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")
    import deepspeed.ops

    if not use_gpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(objective: nn.Module, param_groups: list[dict[str, Any]], ds_config: dict[str, Any]):
    """Wrap `objective` (trainable modules only) in a DeepSpeed engine; returns the engine."""
    import deepspeed

    trainable = [p for g in param_groups for p in g["params"]]
    registered = {id(p) for p in objective.parameters()}
    if any(id(p) not in registered for p in trainable):
        raise ValueError("every parameter group must hold parameters of the objective module")
    engine, *_ = deepspeed.initialize(model=objective, model_parameters=param_groups, config=ds_config)
    return engine


def param_groups(objective: nn.Module, lr_by_prefix: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters, one group per learning-rate prefix (e.g. {'names': 1e-3}) plus the rest."""
    lr_by_prefix = lr_by_prefix or {}
    groups: dict[str | None, list[torch.nn.Parameter]] = {}
    for name, p in objective.named_parameters():
        if not p.requires_grad:
            continue
        prefix = next((k for k in lr_by_prefix if name.startswith(k)), None)
        groups.setdefault(prefix, []).append(p)
    out = []
    for prefix, params in groups.items():
        group: dict[str, Any] = {"params": params}
        if prefix is not None:
            group["lr"] = lr_by_prefix[prefix]
            group["name"] = prefix.rstrip(".")  # the history's `lr_<name>`
        out.append(group)
    return out


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch onto the engine's device (float tensors as fp32; autocast does the rest)."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if v.is_floating_point() and v.dtype != torch.float32:
                v = v.float()
        out[k] = v
    return out


def consolidated_state_dict(engine) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the engine's module, gathered from ZeRO-3 partitions (collective)."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return _cpu_fp32(module.state_dict())
    return _cpu_fp32(module.state_dict())


def _cpu_fp32(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone() for k, v in sd.items()
    }
