"""Pseudo class names (learned token embeddings) and the static normal/abnormal prompt ensembles.

LTAD may not use class name strings, so each training class id gets L learnable token embeddings
s_c in the text tower's input space. They are slotted into fixed templates: "a photo of a {}." for
class prediction, and state phrases ("flawless {}", "damaged {}", ...) inside templates for the
semantic normal/abnormal classifier (ensembles averaged per state, as WinCLIP / anomalib do).
"""

from __future__ import annotations

import torch
from torch import nn

CLASS_TEMPLATE = "a photo of a {}."
NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ABNORMAL_STATES = ("damaged {}", "broken {}", "{} with flaw", "{} with defect", "{} with damage")
TEMPLATES = (
    "a photo of a {}.",
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a photo of the {} for visual inspection.",
)
GENERIC_WORD = "object"


def state_prompts(states: tuple[str, ...]) -> list[str]:
    """Every state phrase inside every template, still holding one '{}' for the name."""
    return [t.format(s) for s in states for t in TEMPLATES]


class PseudoNames(nn.Module):
    """C x L learnable token embeddings, one pseudo name per training class id."""

    def __init__(
        self, num_classes: int, length: int, width: int, std: float, init: torch.Tensor | None = None
    ):
        """`init` (W,) is a generic word's embedding to start from (plus noise); None = random."""
        super().__init__()
        tokens = torch.randn(num_classes, length, width) * std
        if init is not None:
            tokens = tokens + init.detach().view(1, 1, width)
        self.tokens = nn.Parameter(tokens)

    def forward(self) -> torch.Tensor:
        return self.tokens


def ensemble(text: torch.Tensor, n_normal: int) -> torch.Tensor:
    """C x P x E prompt embeddings (normal prompts first) -> C x 2 x E unit state embeddings."""
    text = nn.functional.normalize(text, dim=-1)
    states = torch.stack([text[:, :n_normal].mean(1), text[:, n_normal:].mean(1)], dim=1)
    return nn.functional.normalize(states, dim=-1)
