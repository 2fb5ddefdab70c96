"""Conditional VAE over patch-feature maps, conditioned on the class text embedding.

Phase 1 fits it on real features of every class; phase 2 samples z ~ N(0, I) with a class's text
embedding to synthesise extra feature maps for that class, so tail classes get more training data.
Encoder and decoder are small conv nets on the grid; the latent is a vector of size `latent`. The
VAE works on per-channel standardised features (running statistics gathered while fitting, as a
BatchNorm without affine parameters) so its loss is O(1) next to the names' cross-entropy, and
`sample` maps back to the encoder's feature scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ltad.config import VAEConfig


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())


class ConditionalVAE(nn.Module):
    """x: B x D x g x g, cond: B x E -> reconstruction terms; sample(cond) -> synthetic maps."""

    def __init__(self, feature_dim: int, grid: int, embed_dim: int, cfg: VAEConfig) -> None:
        super().__init__()
        h, self.grid = cfg.hidden, grid
        self.norm = nn.BatchNorm2d(feature_dim, affine=False, momentum=None)  # cumulative running stats
        self.low = math.ceil(grid / 4)  # the 2x-strided convs bring g down to this side
        self.cond_in = nn.Linear(embed_dim, h)
        self.enc_in = _block(feature_dim, h)
        self.enc = nn.Sequential(_block(h, h, 2), _block(h, h, 2))
        self.to_stats = nn.Linear(h * self.low * self.low, 2 * cfg.latent)
        self.from_z = nn.Linear(cfg.latent + embed_dim, h * self.low * self.low)
        self.dec = nn.Sequential(
            _block(h, h), nn.Upsample(scale_factor=2), _block(h, h), nn.Upsample(scale_factor=2)
        )
        self.dec_out = nn.Sequential(_block(h, h), nn.Conv2d(h, feature_dim, 1))

    def encode(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.enc_in(x) + self.cond_in(cond)[:, :, None, None]
        y = F.adaptive_avg_pool2d(self.enc(y), self.low)
        mu, logvar = self.to_stats(y.flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        y = self.from_z(torch.cat([z, cond.to(z.dtype)], dim=1)).view(z.shape[0], -1, self.low, self.low)
        y = F.interpolate(self.dec(y), size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        return self.dec_out(y)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> (standardised x, its reconstruction, mu, logvar); the loss compares the first two."""
        x = self.norm(x)
        mu, logvar = self.encode(x, cond)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return x, self.decode(z, cond), mu, logvar

    @staticmethod
    def loss_terms(x: torch.Tensor, rec: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
        """(MSE per element, KL per element): the ELBO divided by the map size, so its scale is O(1)."""
        mse = F.mse_loss(rec, x)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1).mean() / x[0].numel()
        return mse, kl

    @torch.no_grad()
    def sample(self, cond: torch.Tensor) -> torch.Tensor:
        """Synthetic feature maps N x D x g x g for the N text embeddings in `cond`."""
        z = torch.randn(cond.shape[0], self.to_stats.out_features // 2, device=cond.device, dtype=cond.dtype)
        var, mean = self.norm.running_var, self.norm.running_mean
        assert var is not None and mean is not None, "the norm tracks running statistics"
        scale = (var + self.norm.eps).sqrt()[None, :, None, None]
        return self.decode(z, cond) * scale + mean[None, :, None, None]
