"""Both anomaly scores point at a perturbed patch: S_rec and S_sem rise where one patch of a normal
feature map is replaced, after a short phase-2 fit of a tiny model on structured normal features."""

from __future__ import annotations

import pytest
import torch

from ltad.config import (
    EncoderConfig,
    ModelConfig,
    Phase2Config,
    PromptConfig,
    ReconstructionConfig,
    SemanticConfig,
    VAEConfig,
)
from ltad.models.ltad import LTAD
from ltad.training.objectives import Phase2Objective

C, G, SPOT = 3, 8, (3, 4)


def normals(prototypes: torch.Tensor, class_id: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Class prototypes plus small noise: the normal feature maps of this test."""
    return prototypes[class_id] + 0.1 * torch.randn(prototypes[class_id].shape, generator=gen)


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    cfg = ModelConfig(
        encoder=EncoderConfig(image_size=64, grid=G),
        prompts=PromptConfig(length=2),
        reconstruction=ReconstructionConfig(
            hidden=64, encoder_layers=1, decoder_layers=1, heads=2, ffn=128, neighbor_mask=3, jitter_scale=5.0
        ),
        semantic=SemanticConfig(projection_hidden=64),
        vae=VAEConfig(latent=8, hidden=16),
        feature_norm="none",
    )
    model = LTAD(cfg, C)
    gen = torch.Generator().manual_seed(0)
    d = model.feature_dim
    # smooth per-class maps: a class-specific channel pattern that varies slowly over the grid
    base = torch.randn(C, d, 1, 1, generator=gen)
    ramp = torch.linspace(-1, 1, G)
    field = ramp.view(1, 1, G, 1) * torch.randn(C, d, 1, 1, generator=gen) + ramp.view(
        1, 1, 1, G
    ) * torch.randn(C, d, 1, 1, generator=gen)
    prototypes = base + 0.5 * field
    objective = Phase2Objective(model, [10] * C, Phase2Config(synthesis_ratio=0.0), batch_size=12).train()
    opt = torch.optim.AdamW(objective.parameters(), lr=2e-3)
    for _ in range(150):
        y = torch.randint(0, C, (12,), generator=gen)
        x = normals(prototypes, y, gen)
        loss, _ = objective({"patches": x, "global_emb": torch.zeros(12, model.embed_dim), "class_id": y})
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    y = torch.arange(C).repeat(8)
    model.fit_standardisation([(normals(prototypes, y, gen), y)])
    return model, prototypes, gen


def test_a_perturbed_patch_raises_both_scores_there(fitted):
    model, prototypes, gen = fitted
    y = torch.arange(C)
    clean = normals(prototypes, y, gen)
    bad = clean.clone()
    i, j = SPOT
    bad[:, :, i, j] += 3.0 * torch.randn(bad[:, :, i, j].shape, generator=gen)  # a defect at one patch
    glob = torch.zeros(C, model.embed_dim)
    z_rec0, z_sem0, _, _ = model.standardised_scores(clean, glob, y)
    z_rec1, z_sem1, _, _ = model.standardised_scores(bad, glob, y)
    for name, before, after in (("S_rec", z_rec0, z_rec1), ("S_sem", z_sem0, z_sem1)):
        rise = after[:, i, j] - before[:, i, j]
        assert (rise > 0.5).all(), f"{name} at the perturbed patch rose by only {rise.tolist()}"
        # and the perturbed patch is the image's most anomalous one
        assert (after.flatten(1).argmax(1) == i * G + j).all(), f"{name} peaks elsewhere"
    fused0, fused1 = model.fuse(z_rec0, z_sem0), model.fuse(z_rec1, z_sem1)
    assert (fused1[:, i, j] > fused0[:, i, j]).all()
