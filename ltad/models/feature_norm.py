"""Per-channel standardisation of the frozen patch features, fitted on training patches.

The encoder's stages emit features of very different means and scales (about -8..13 and 3..12 for the
bundled EfficientNet trunk). Unscaled, the reconstruction MSE is dominated by a few channels and the
VAE, the reconstruction module and the semantic projection all start far from their operating point;
standardising each channel with training statistics (fitted once, before phase 1, then frozen) made
the reconstruction term twice as informative in the quality study (docs/RESULTS.md). Until fitted it
is the identity, so `model.feature_norm: none` is simply never fitting it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class FeatureNorm(nn.Module):
    """(patches - mean_c) / std_c over the channel axis of B x D x g x g maps."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(patches.dtype).view(1, -1, 1, 1)
        std = self.std.to(patches.dtype).view(1, -1, 1, 1)
        return (patches - mean) / std

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Channel mean/std over every patch of `batches` (each B x D x g x g), in float64."""
        n = 0
        s: torch.Tensor | None = None
        sq: torch.Tensor | None = None
        for patches in batches:
            rows = patches.double().transpose(0, 1).flatten(1)  # D x (B*g*g)
            n += rows.shape[1]
            s = rows.sum(1) if s is None else s + rows.sum(1)
            sq = rows.pow(2).sum(1) if sq is None else sq + rows.pow(2).sum(1)
        if n == 0:
            raise ValueError("FeatureNorm.fit got no training patches")
        assert s is not None and sq is not None, "n > 0: both sums exist"
        mean = s / n
        std = (sq / n - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-6)
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())
