"""The autocast dtype of training and encoding, chosen from the device rather than assumed.

On a GPU every stage runs under autocast: bf16 where the card supports it
(`torch.cuda.is_bf16_supported()`: Ampere and newer), else fp16 (a V100 or T4 has no bf16; DeepSpeed
then adds a GradScaler for its fp16 autocast, ZeRO 0-3). On the CPU `scaling.precision` decides: fp32
(default) or bf16. Parameters and optimizer state stay fp32 in every case (engine.py).
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The autocast dtype of each mixed precision (fp32 has none)."""


def bf16_supported() -> bool:
    """Whether this process's CUDA device can run bf16 (False without CUDA)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def select(use_gpu: bool, configured: str, gpu_bf16: bool | None = None) -> str:
    """'bf16', 'fp16' or 'fp32': on a GPU bf16 if `gpu_bf16` (None: ask the device) else fp16, whatever
    `configured` says; on the CPU `configured` ('fp32' or 'bf16')."""
    if use_gpu:
        return "bf16" if (bf16_supported() if gpu_bf16 is None else gpu_bf16) else "fp16"
    return configured


def of_device(device: torch.device, configured: str = "fp32") -> str:
    """The precision a stage runs under on `device` (a CUDA device picks bf16 or fp16 itself)."""
    return select(device.type == "cuda", configured)


def autocast(device: torch.device, mode: str):
    """The autocast context of `mode` on `device` (a no-op for fp32)."""
    if mode == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[mode])
