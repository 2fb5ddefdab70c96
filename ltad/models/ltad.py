"""LTAD composition and scoring: S(p_i, c) = z(S_rec(p_i)) + lambda * z(S_sem(p_i, c)).

Holds the frozen encoder, the pseudo class names, the conditional VAE, the reconstruction module and
the semantic head. Everything needed to score (names, cached text embeddings, standardisation
statistics) lives in parameters/buffers, so `state_dict()` alone restores a trained model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ltad.config import ModelConfig
from ltad.models.encoder import Encoder
from ltad.models.feature_norm import FeatureNorm
from ltad.models.memory_banks import MemoryBanks
from ltad.models.prompts import (
    ABNORMAL_STATES,
    CLASS_TEMPLATE,
    GENERIC_WORD,
    NORMAL_STATES,
    PseudoNames,
    ensemble,
    state_prompts,
)
from ltad.models.reconstruction import ReconstructionModule
from ltad.models.semantic import SemanticHead
from ltad.models.vae import ConditionalVAE


@dataclass
class ScoreOutput:
    anomaly_map: torch.Tensor  # B x H x W
    pred_score: torch.Tensor  # B
    pred_class: torch.Tensor  # B (int64)
    class_probs: torch.Tensor  # B x C


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of B x H x W maps (kernel radius 4 sigma, reflect padding)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(4 * sigma)))
    radius = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.pad(maps.unsqueeze(1), (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1)).squeeze(1)


class LTAD(nn.Module):
    """The whole model; see the module docstring. Training objectives live in ltad/training/objectives.py."""

    # buffers, registered in __init__
    class_ids: torch.Tensor
    class_starts: torch.Tensor
    state_ids: torch.Tensor
    state_starts: torch.Tensor
    text_class: torch.Tensor
    text_states: torch.Tensor
    text_ready: torch.Tensor
    stats: torch.Tensor
    stats_ready: torch.Tensor

    def __init__(self, cfg: ModelConfig, num_classes: int) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.encoder = Encoder(cfg.encoder)
        enc, length = self.encoder, cfg.prompts.length
        init = None
        if cfg.prompts.init == "word":
            init = enc.token_embedding(enc.tokenizer([GENERIC_WORD])[:, 1]).squeeze(0)
        self.names = PseudoNames(num_classes, length, enc.token_width, cfg.prompts.init_std, init)
        self.feature_norm = FeatureNorm(self.feature_dim)
        self.vae = ConditionalVAE(self.feature_dim, self.grid, self.embed_dim, cfg.vae)
        self.reconstruction = ReconstructionModule(self.feature_dim, self.grid, cfg.reconstruction)
        self.semantic = SemanticHead(self.feature_dim, self.embed_dim, cfg.semantic)
        self.memory_banks = MemoryBanks(num_classes, self.feature_dim)  # empty unless fitted (ltad_mb)
        for key, templates in (("class", [CLASS_TEMPLATE]), ("state", self._state_templates())):
            ids, starts = enc.tokenize_templates(templates, length)
            self.register_buffer(f"{key}_ids", ids, persistent=False)
            self.register_buffer(f"{key}_starts", starts, persistent=False)
        self.register_buffer("text_class", torch.zeros(num_classes, self.embed_dim))
        self.register_buffer("text_states", torch.zeros(num_classes, 2, self.embed_dim))
        self.register_buffer("text_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("stats", torch.tensor([0.0, 1.0, 0.0, 1.0]))  # rec mean/std, sem mean/std
        self.register_buffer("stats_ready", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _state_templates() -> list[str]:
        return state_prompts(NORMAL_STATES) + state_prompts(ABNORMAL_STATES)

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    @property
    def grid(self) -> int:
        return self.cfg.encoder.grid

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    def train(self, mode: bool = True) -> LTAD:
        super().train(mode)
        self.encoder.train(False)
        return self

    # ------------------------------------------------------------------ text
    def class_text(self) -> torch.Tensor:
        """Unit embeddings C x E of "a photo of a <s_c>." (differentiable w.r.t. the names)."""
        text = self.encoder.encode_with_names(self.class_ids, self.class_starts, self.names())
        return F.normalize(text[:, 0], dim=-1)

    def state_text(self, chunk: int = 64) -> torch.Tensor:
        """Unit ensemble embeddings C x 2 x E of the normal / abnormal prompts with each name."""
        ids, starts, names = self.state_ids, self.state_starts, self.names()
        parts = [
            self.encoder.encode_with_names(ids[i : i + chunk], starts[i : i + chunk], names)
            for i in range(0, ids.shape[0], chunk)
        ]
        return ensemble(torch.cat(parts, dim=1), len(state_prompts(NORMAL_STATES)))

    @torch.no_grad()
    def cache_text(self) -> None:
        """Freeze the current names into text buffers (phase 2 start, and before scoring)."""
        self.text_class.copy_(self.class_text())
        self.text_states.copy_(self.state_text())
        self.text_ready.fill_(True)

    # ------------------------------------------------------------------ scores
    def fit_feature_norm(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit the per-channel feature standardisation on raw training patches (before phase 1)."""
        if self.cfg.feature_norm == "channel":
            self.feature_norm.fit(batches)

    def raw_scores(self, patches: torch.Tensor, class_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unstandardised S_rec and S_sem, each B x g x g, of raw encoder patches."""
        patches = self.feature_norm(patches)
        s_rec = self.reconstruction.score(patches, self.reconstruction(patches))
        s_sem = self.semantic.score(self.semantic(patches, self.text_states[class_ids]))
        return s_rec, s_sem

    @torch.no_grad()
    def fit_standardisation(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Mean/std of S_rec and S_sem over training patches; `batches` yields (patches, class_ids)."""
        self._need_text()
        was_training = self.training
        self.eval()
        sums = torch.zeros(2, 3, dtype=torch.float64)
        for patches, class_ids in batches:
            for k, s in enumerate(self.raw_scores(patches.float(), class_ids.long())):
                s = s.double().flatten()
                sums[k] += torch.stack(
                    [torch.tensor(float(s.numel()), dtype=torch.float64), s.sum(), s.pow(2).sum()]
                )
        if sums[0, 0] == 0:
            raise ValueError("fit_standardisation got no training patches")
        mean = sums[:, 1] / sums[:, 0]
        std = (sums[:, 2] / sums[:, 0] - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-6)
        self.stats.copy_(torch.stack([mean[0], std[0], mean[1], std[1]]).float())
        self.stats_ready.fill_(True)
        self.train(was_training)

    def predict_class(self, global_emb: torch.Tensor) -> torch.Tensor:
        """Class probabilities B x C from cosine similarity of the global embedding and the class texts."""
        self._need_text()
        logits = F.normalize(global_emb.float(), dim=-1) @ self.text_class.T
        return (logits / self.cfg.semantic.temperature).softmax(dim=-1)

    @torch.no_grad()
    def standardised_scores(
        self, patches: torch.Tensor, global_emb: torch.Tensor, class_id: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z(S_rec), z(S_sem), class used, class probabilities): the two terms before fusion."""
        self._need_text()
        if not bool(self.stats_ready):
            raise RuntimeError("call fit_standardisation() on training patches before score()")
        probs = self.predict_class(global_emb)
        if class_id is None and self.cfg.score.class_mode == "oracle":
            raise ValueError("score.class_mode is 'oracle' but no class_id was given")
        cls = probs.argmax(dim=-1) if class_id is None else class_id.to(probs.device).long()
        s_rec, s_sem = self.raw_scores(patches.float(), cls)
        m = self.stats
        return (s_rec - m[0]) / m[1], (s_sem - m[2]) / m[3], cls, probs

    def fuse(self, z_rec: torch.Tensor, z_sem: torch.Tensor) -> torch.Tensor:
        """The fused patch score z(S_rec) + lambda * z(S_sem): higher is more anomalous."""
        return z_rec + self.cfg.score.fusion_lambda * z_sem

    def fuse_scores(
        self, z_rec: torch.Tensor, z_sem: torch.Tensor, patches: torch.Tensor, cls: torch.Tensor
    ) -> torch.Tensor:
        """The score the model deploys: the paper's fusion, plus `model.score.memory_bank.weight` x the
        banks' z-score when banks are fitted (`ltad_mb`; classes without a bank add 0)."""
        fused = self.fuse(z_rec, z_sem)
        weight = self.cfg.score.memory_bank.weight
        if weight > 0 and self.memory_banks.fitted:
            fused = fused + weight * self.memory_banks.z_scores(patches, cls)
        return fused

    def to_maps(self, fused: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch scores B x g x g -> (anomaly maps at `image_size`, image scores B)."""
        sc = self.cfg.score
        maps = F.interpolate(fused.unsqueeze(1), size=tuple(image_size), mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps.squeeze(1), sc.blur_sigma)
        pool = min(sc.image_pool, *maps.shape[-2:])
        pooled = F.avg_pool2d(maps.unsqueeze(1), pool, stride=1)
        return maps, pooled.flatten(1).amax(dim=1)

    @torch.no_grad()
    def score(
        self,
        patches: torch.Tensor,
        global_emb: torch.Tensor,
        image_size: tuple[int, int],
        class_id: torch.Tensor | None = None,
    ) -> ScoreOutput:
        """Anomaly maps at `image_size`, image scores, and the class used (predicted unless oracle)."""
        z_rec, z_sem, cls, probs = self.standardised_scores(patches, global_emb, class_id)
        maps, scores = self.to_maps(self.fuse_scores(z_rec, z_sem, patches, cls), image_size)
        return ScoreOutput(maps, scores, cls, probs)

    def _need_text(self) -> None:
        if not bool(self.text_ready):
            raise RuntimeError("call cache_text() after phase 1 before phase 2, standardisation or scoring")
