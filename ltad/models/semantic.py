"""Semantic AD: a learned patch projection into the text space and the normal/abnormal classifier.

Each patch feature is mapped into the joint embedding space and compared (cosine) with the class's
two state embeddings t_{n,c} = T(v_n + s_c) and t_{a,c} = T(v_a + s_c); S_sem is the softmax
probability of the abnormal side at temperature tau. With `abnormal_anchor: shared` (a labelled variant
beyond the paper) t_{a,c} is replaced for every class by one learned unit vector a in the projected
space: the normal side stays per class, the abnormal side is shared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltad.config import SemanticConfig


class SemanticHead(nn.Module):
    """Patch features B x D x g x g + class state embeddings B x 2 x E -> normal/abnormal logits."""

    def __init__(self, feature_dim: int, embed_dim: int, cfg: SemanticConfig) -> None:
        super().__init__()
        self.temperature = cfg.temperature
        self.projection = nn.Sequential(
            nn.Conv2d(feature_dim, cfg.projection_hidden, 1),
            nn.GELU(),
            nn.Conv2d(cfg.projection_hidden, embed_dim, 1),
        )
        # absent (not a zero tensor) under the paper's per-class anchors, so its state dict is unchanged
        self.abnormal: nn.Parameter | None = None
        if cfg.abnormal_anchor == "shared":
            self.abnormal = nn.Parameter(F.normalize(torch.randn(embed_dim), dim=0))

    def anchors(self, states: torch.Tensor) -> torch.Tensor:
        """B x 2 x E unit anchors: the class states, or their normal side with the shared abnormal one."""
        if self.abnormal is None:
            return states
        shared = F.normalize(self.abnormal, dim=0).to(states.dtype).view(1, 1, -1)
        return torch.cat([states[:, :1], shared.expand(states.shape[0], 1, -1)], dim=1)

    def forward(self, patches: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """Logits B x 2 x g x g (index 0 normal, 1 abnormal); `states` are unit vectors."""
        emb = F.normalize(self.projection(patches), dim=1)
        return torch.einsum("bchw,bsc->bshw", emb, self.anchors(states.to(emb.dtype))) / self.temperature

    @staticmethod
    def score(logits: torch.Tensor) -> torch.Tensor:
        """S_sem: probability of the abnormal state per patch, B x g x g."""
        return logits.softmax(dim=1)[:, 1]

    @staticmethod
    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against per-patch abnormal targets in [0, 1] (soft for image-level masks)."""
        logp = logits.log_softmax(dim=1)
        return -(target * logp[:, 1] + (1 - target) * logp[:, 0]).mean()
