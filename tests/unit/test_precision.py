"""Which autocast dtype a stage runs under (ltad/training/precision.py): detected from the GPU, not assumed."""

from __future__ import annotations

import torch

from ltad.training import precision


def test_gpu_takes_bf16_where_supported_else_fp16_whatever_is_configured():
    for configured in ("fp32", "bf16"):
        assert precision.select(True, configured, gpu_bf16=True) == "bf16"
        assert precision.select(True, configured, gpu_bf16=False) == "fp16"


def test_cpu_follows_the_configured_precision():
    assert precision.select(False, "fp32") == "fp32"
    assert precision.select(False, "bf16") == "bf16"
    assert precision.select(False, "fp32", gpu_bf16=True) == "fp32"  # the GPU's support is irrelevant


def test_the_gpu_is_asked_when_not_told(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.bf16_supported() is False
    assert precision.select(True, "fp32") == "fp16"
    assert precision.of_device(torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.of_device(torch.device("cuda", 0)) == "bf16"
    assert precision.of_device(torch.device("cpu")) == "fp32"


def test_no_cuda_means_no_bf16_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.bf16_supported() is False


def test_autocast_contexts():
    cpu = torch.device("cpu")
    with precision.autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with precision.autocast(cpu, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16
