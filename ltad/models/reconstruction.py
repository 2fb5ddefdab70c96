"""UniAD-style reconstruction module (RM): a transformer that rebuilds the frozen patch features.

Following UniAD (You et al., NeurIPS 2022): tokens are the patch features of the grid, projected to
`hidden`; a neighbour mask forbids every token (and query) from attending to its own k x k
neighbourhood so the module cannot copy its input ("identical shortcut"); the decoder starts from
learned per-position queries; during training Gaussian "feature jitter" scaled by each token's norm
is added to the input. S_rec = squared L2 distance between input and reconstruction, per patch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ltad.config import ReconstructionConfig
from ltad.errors import ConfigError


def neighbour_mask(grid: int, size: int) -> torch.Tensor | None:
    """Boolean (g*g) x (g*g) attention mask, True = not allowed: each token's size x size neighbourhood."""
    if size <= 0:
        return None
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    half = size // 2
    near_y = (ys[:, None] - ys[None, :]).abs() <= half
    near_x = (xs[:, None] - xs[None, :]).abs() <= half
    return near_y & near_x


def sine_positions(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine/cosine position embeddings (g*g) x dim, half for y and half for x (DETR/UniAD)."""
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter).float() / quarter))
    ys, xs = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
    parts = [fn(axis.flatten()[:, None] * freq) for axis in (ys, xs) for fn in (torch.sin, torch.cos)]
    pos = torch.cat(parts, dim=1)
    return nn.functional.pad(pos, (0, dim - pos.shape[1]))


class ReconstructionModule(nn.Module):
    """Patch features B x D x g x g -> reconstruction of the same shape."""

    pos: torch.Tensor  # buffers, registered in __init__
    mask: torch.Tensor

    def __init__(self, feature_dim: int, grid: int, cfg: ReconstructionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.input_proj = nn.Linear(feature_dim, h)
        self.output_proj = nn.Linear(h, feature_dim)
        self.queries = nn.Parameter(torch.randn(grid * grid, h) * 0.02)
        layer: dict[str, Any] = dict(
            d_model=h, nhead=cfg.heads, dim_feedforward=cfg.ffn, dropout=cfg.dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer), cfg.encoder_layers, enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer), cfg.decoder_layers, norm=nn.LayerNorm(h)
        )
        self.register_buffer("pos", sine_positions(grid, h), persistent=False)
        mask = neighbour_mask(grid, cfg.neighbor_mask)
        if mask is not None and bool(mask.all(dim=1).any()):
            raise ConfigError(
                f"model.reconstruction.neighbor_mask {cfg.neighbor_mask} hides every token of a {grid}x{grid} grid"
            )
        self.register_buffer(
            "mask", mask if mask is not None else torch.zeros(0, dtype=torch.bool), persistent=False
        )

    def jitter(self, tokens: torch.Tensor) -> torch.Tensor:
        """UniAD feature jitter: noise std = jitter_scale * ||token|| / D, applied with jitter_prob."""
        if not self.training or self.cfg.jitter_scale <= 0 or torch.rand(()) >= self.cfg.jitter_prob:
            return tokens
        norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
        return tokens + torch.randn_like(tokens) * norms * self.cfg.jitter_scale

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        b, d, gh, gw = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)  # B x N x D
        x = self.input_proj(self.jitter(tokens)) + self.pos
        mask = self.mask if self.mask.numel() else None
        memory = self.encoder(x, mask=mask)
        queries = (self.queries + self.pos).unsqueeze(0).expand(b, -1, -1)
        out = self.decoder(queries, memory + self.pos, tgt_mask=mask, memory_mask=mask)
        return self.output_proj(out).transpose(1, 2).reshape(b, d, gh, gw)

    @staticmethod
    def score(patches: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
        """S_rec: squared L2 distance per patch, B x g x g."""
        return (rec - patches).pow(2).sum(dim=1)
