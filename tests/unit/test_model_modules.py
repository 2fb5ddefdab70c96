"""The LTAD modules and their composition: shapes, masks, scoring, oracle class, state_dict round trip."""

from __future__ import annotations

import io

import pytest
import torch

from ltad.config import (
    EncoderConfig,
    ModelConfig,
    PromptConfig,
    ReconstructionConfig,
    ScoreConfig,
    SemanticConfig,
    VAEConfig,
)
from ltad.errors import ConfigError
from ltad.models.ltad import LTAD, gaussian_blur
from ltad.models.prompts import PseudoNames, ensemble
from ltad.models.reconstruction import ReconstructionModule, neighbour_mask
from ltad.models.semantic import SemanticHead
from ltad.models.vae import ConditionalVAE

C = 3


def tiny_config(**score) -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(image_size=64, grid=8),
        prompts=PromptConfig(length=2),
        reconstruction=ReconstructionConfig(
            hidden=32, encoder_layers=1, decoder_layers=1, heads=2, ffn=64, neighbor_mask=3
        ),
        semantic=SemanticConfig(projection_hidden=32),
        vae=VAEConfig(latent=8, hidden=16),
        score=ScoreConfig(blur_sigma=1.0, image_pool=4, **score),
    )


@pytest.fixture(scope="module")
def trained():
    """A tiny LTAD with cached text and fitted standardisation, plus encoded images of C classes."""
    torch.manual_seed(0)
    model = LTAD(tiny_config(), C).eval()
    images = torch.rand(6, 3, 64, 64)
    enc = model.encoder.encode_images(images)
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    model.cache_text()
    model.fit_standardisation([(enc.patches[:3], ids[:3]), (enc.patches[3:], ids[3:])])
    return model, enc, ids


def test_neighbour_mask_hides_exactly_the_neighbourhood():
    mask = neighbour_mask(5, 3)
    assert mask.shape == (25, 25) and mask.diagonal().all()
    assert mask[12].sum() == 9 and mask[0].sum() == 4  # centre: 3x3, corner: 2x2
    assert neighbour_mask(5, 0) is None
    with pytest.raises(ConfigError, match="neighbor_mask"):
        ReconstructionModule(8, 3, ReconstructionConfig(hidden=16, heads=2, neighbor_mask=7))


def test_reconstruction_shapes_and_jitter_only_in_training():
    rm = ReconstructionModule(
        12,
        6,
        ReconstructionConfig(hidden=16, heads=2, ffn=32, encoder_layers=1, decoder_layers=1, neighbor_mask=3),
    )
    x = torch.randn(2, 12, 6, 6)
    rm.eval()
    out = rm(x)
    assert out.shape == x.shape and torch.equal(out, rm(x))
    assert rm.score(x, out).shape == (2, 6, 6) and (rm.score(x, out) >= 0).all()
    tokens = torch.randn(2, 36, 12)
    assert torch.equal(rm.jitter(tokens), tokens)
    rm.train()
    assert not torch.equal(rm.jitter(tokens), tokens)


def test_semantic_head_scores_are_probabilities():
    head = SemanticHead(12, 8, SemanticConfig(projection_hidden=16))
    states = torch.nn.functional.normalize(torch.randn(2, 2, 8), dim=-1)
    logits = head(torch.randn(2, 12, 5, 5), states)
    assert logits.shape == (2, 2, 5, 5)
    s = head.score(logits)
    assert s.shape == (2, 5, 5) and ((s >= 0) & (s <= 1)).all()
    confident = torch.stack([torch.full((1, 5, 5), -9.0), torch.full((1, 5, 5), 9.0)], dim=1)
    assert head.loss(confident, torch.ones(1, 5, 5)) < 1e-3 < head.loss(confident, torch.zeros(1, 5, 5))


def test_vae_shapes_and_samples_on_the_feature_scale():
    vae = ConditionalVAE(16, 7, 8, VAEConfig(latent=4, hidden=16))
    x = torch.randn(4, 16, 7, 7) * 5 + 3
    xn, rec, mu, logvar = vae(x, torch.randn(4, 8))
    assert xn.shape == rec.shape == x.shape and mu.shape == logvar.shape == (4, 4)
    assert abs(xn.mean().item()) < 1e-4  # standardised with the batch statistics while fitting
    mse, kl = vae.loss_terms(xn, rec, mu, logvar)
    assert mse > 0 and kl >= 0
    vae.eval()
    sample = vae.sample(torch.randn(3, 8))
    assert sample.shape == (3, 16, 7, 7)
    assert 1.0 < sample.mean().item() < 5.0  # mapped back near the running mean of the data (3)


def test_pseudo_names_and_state_ensemble():
    word = torch.full((6,), 0.5)
    names = PseudoNames(3, 2, 6, std=0.01, init=word)
    assert names().shape == (3, 2, 6) and names().requires_grad
    assert (names() - 0.5).abs().max() < 0.1
    states = ensemble(torch.randn(3, 5, 4), n_normal=3)
    assert states.shape == (3, 2, 4)
    torch.testing.assert_close(states.norm(dim=-1), torch.ones(3, 2))


def test_gaussian_blur_keeps_constants_and_smooths_peaks():
    flat = torch.full((1, 20, 20), 2.0)
    torch.testing.assert_close(gaussian_blur(flat, 2.0), flat)
    peak = torch.zeros(1, 21, 21)
    peak[0, 10, 10] = 1
    blurred = gaussian_blur(peak, 2.0)
    assert blurred.max() < 0.1 and abs(blurred.sum().item() - 1) < 1e-3


def test_model_properties_and_frozen_encoder(trained):
    model, enc, _ = trained
    assert (model.feature_dim, model.grid, model.embed_dim) == (176, 8, 256)
    assert enc.patches.shape == (6, 176, 8, 8) and enc.global_emb.shape == (6, 256)
    model.train()
    assert not model.encoder.training and model.reconstruction.training
    model.eval()
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_standardisation_makes_training_scores_zero_mean_unit_std(trained):
    model, enc, ids = trained
    s_rec, s_sem = model.raw_scores(enc.patches, ids)
    m = model.stats
    z_rec, z_sem = (s_rec - m[0]) / m[1], (s_sem - m[2]) / m[3]
    for z in (z_rec, z_sem):
        assert abs(z.mean().item()) < 1e-4 and abs(z.std(unbiased=False).item() - 1) < 1e-3


def test_score_shapes_and_ranges(trained):
    model, enc, _ = trained
    out = model.score(enc.patches, enc.global_emb, (48, 40))
    assert out.anomaly_map.shape == (6, 48, 40) and out.pred_score.shape == (6,)
    assert out.pred_class.dtype == torch.int64 and ((out.pred_class >= 0) & (out.pred_class < C)).all()
    torch.testing.assert_close(out.class_probs.sum(1), torch.ones(6))
    assert torch.equal(out.pred_class, out.class_probs.argmax(1))
    assert torch.isfinite(out.anomaly_map).all()
    assert (out.pred_score <= out.anomaly_map.flatten(1).amax(1) + 1e-5).all()


def test_oracle_class_versus_predicted(trained):
    model, enc, ids = trained
    oracle = model.score(enc.patches, enc.global_emb, (32, 32), class_id=ids)
    assert torch.equal(oracle.pred_class, ids)
    flipped = (ids + 1) % C
    other = model.score(enc.patches, enc.global_emb, (32, 32), class_id=flipped)
    assert not torch.allclose(oracle.anomaly_map, other.anomaly_map)  # S_sem depends on the class
    strict = LTAD(tiny_config(class_mode="oracle"), C)
    strict.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="oracle"):
        strict.score(enc.patches, enc.global_emb, (32, 32))


def test_scoring_requires_text_and_statistics():
    model = LTAD(tiny_config(), C)
    patches, glob = torch.randn(1, model.feature_dim, 8, 8), torch.randn(1, model.embed_dim)
    with pytest.raises(RuntimeError, match="cache_text"):
        model.score(patches, glob, (16, 16))
    model.cache_text()
    with pytest.raises(RuntimeError, match="fit_standardisation"):
        model.score(patches, glob, (16, 16))


def test_state_dict_round_trip_with_weights_only(trained):
    model, enc, _ = trained
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = LTAD(tiny_config(), C).eval()
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    a = model.score(enc.patches, enc.global_emb, (32, 32))
    b = fresh.score(enc.patches, enc.global_emb, (32, 32))
    torch.testing.assert_close(a.anomaly_map, b.anomaly_map)
    assert torch.equal(a.pred_class, b.pred_class)
