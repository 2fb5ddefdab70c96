"""Phase objectives: only their trainable parts are registered and all of those (and nothing else) get
gradients, as timm's model tests check; synthetic allocation flattens the class histogram."""

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
from ltad.training.objectives import (
    Phase1Objective,
    Phase2Objective,
    allocate_synthetic,
    real_count,
    synthetic_count,
)

C = 3
COUNTS = [20, 5, 1]


def tiny_model() -> LTAD:
    cfg = ModelConfig(
        encoder=EncoderConfig(image_size=64, grid=8),
        prompts=PromptConfig(length=2),
        reconstruction=ReconstructionConfig(
            hidden=32, encoder_layers=1, decoder_layers=1, heads=2, ffn=64, neighbor_mask=3
        ),
        semantic=SemanticConfig(projection_hidden=32),
        vae=VAEConfig(latent=8, hidden=16, beta_warmup_steps=2),
    )
    return LTAD(cfg, C)


@pytest.fixture(scope="module")
def batches():
    torch.manual_seed(0)
    model = tiny_model()
    images = torch.rand(4, 3, 64, 64)
    enc = model.encoder.encode_images(images)
    class_id = torch.tensor([0, 0, 1, 2])
    cached = {"patches": enc.patches.half(), "global_emb": enc.global_emb.half(), "class_id": class_id}
    return {"image": images, "class_id": class_id}, cached


def ids(params) -> set[int]:
    return {id(p) for p in params}


def assert_gradients(objective, model):
    """Every registered parameter gets a finite, non-zero gradient; every other model parameter none."""
    for name, p in objective.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name} has a zero/NaN gradient"
    trainable = ids(objective.parameters())
    for name, p in model.named_parameters():
        if id(p) not in trainable:
            assert p.grad is None, f"frozen {name} got a gradient"


@pytest.mark.parametrize("source", ["image", "cached"])
def test_phase1_trains_exactly_names_and_vae(batches, source):
    torch.manual_seed(1)
    model = tiny_model()
    objective = Phase1Objective(model, COUNTS).train()
    assert ids(objective.parameters()) == ids(model.names.parameters()) | ids(model.vae.parameters())
    assert {n for n, _ in objective.named_children()} == {
        "names",
        "vae",
        "feature_norm",
    }  # norm: buffers only
    batch = batches[0] if source == "image" else batches[1]
    loss, logs = objective(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert {"names_ce", "names_acc", "vae_mse", "vae_kl", "vae_beta"} <= set(logs)
    assert all(isinstance(v, float) for v in logs.values())
    loss.backward()
    assert_gradients(objective, model)
    assert int(objective.step) == 1


@pytest.mark.parametrize("mode", ["feature", "image"])
def test_phase2_trains_exactly_reconstruction_and_semantic(batches, mode):
    torch.manual_seed(2)
    model = tiny_model()
    objective = Phase2Objective(
        model, COUNTS, Phase2Config(synthesis_ratio=0.5, pseudo_anomaly=mode), batch_size=8
    ).train()
    assert ids(objective.parameters()) == ids(model.reconstruction.parameters()) | ids(
        model.semantic.parameters()
    )
    assert bool(model.text_ready)  # frozen names' text embeddings were computed when phase 2 started
    loss, logs = objective(batches[0])
    assert logs["synthetic"] == 4.0 and logs["pseudo_image_level"] == float(mode == "image")
    assert tuple(logs) == Phase2Objective.LOGS  # the names a sweep's ASHA metric is checked against
    loss.backward()
    assert_gradients(objective, model)
    assert objective.seen.sum() == 8  # 4 real + 4 synthetic


def test_phase2_on_cached_features_falls_back_to_feature_pseudo_anomalies(batches):
    model = tiny_model()
    objective = Phase2Objective(model, COUNTS, Phase2Config(pseudo_anomaly="image"), batch_size=4)
    _, logs = objective(batches[1])
    assert logs["pseudo_image_level"] == 0.0


def test_objectives_are_deterministic_given_the_seed(batches):
    losses = []
    for _ in range(2):
        torch.manual_seed(3)
        model = tiny_model()
        objective = Phase2Objective(model, COUNTS, Phase2Config(), batch_size=4)
        losses.append(objective(batches[1])[0].item())
    assert losses[0] == losses[1]


def test_objectives_hold_the_frozen_encoder_outside_their_module_tree():
    model = tiny_model()
    for objective in (
        Phase1Objective(model, COUNTS),
        Phase2Objective(model, COUNTS, Phase2Config(), batch_size=8),
    ):
        modules = list(objective.modules())
        assert all(m is not model.encoder and m is not model for m in modules)
        assert not any(k.startswith("encoder") for k in objective.state_dict())


def test_class_counts_must_match_the_classes():
    with pytest.raises(ValueError, match="3 non-negative counts"):
        Phase1Objective(tiny_model(), [1, 2])


def test_allocation_flattens_the_histogram():
    hist = torch.tensor([10.0, 5.0, 1.0, 0.0])
    alloc = allocate_synthetic(hist, 12)
    assert alloc.tolist() == [0, 1, 5, 6] and alloc.sum() == 12
    after = hist + alloc
    assert after.tolist() == [10, 6, 6, 6]
    assert after.max() - after.min() < hist.max() - hist.min()
    # water filling is optimal: every class that received samples ends within 1 of the minimum
    assert all(after[c] <= after.min() + 1 for c in range(4) if alloc[c] > 0)
    flat = allocate_synthetic(torch.zeros(3), 7)
    assert sorted(flat.tolist()) == [2, 2, 3]


def test_allocation_ties_go_to_the_tail():
    alloc = allocate_synthetic(
        torch.tensor([2.0, 2.0, 2.0]), 1, class_counts=torch.tensor([100.0, 3.0, 40.0])
    )
    assert alloc.tolist() == [0, 1, 0]


def test_synthesis_replaces_part_of_a_fixed_batch():
    assert synthetic_count(8, 0.0) == 0 and real_count(8, 0.0) == 8
    assert synthetic_count(16, 0.5) == 8 and real_count(16, 0.5) == 8
    assert synthetic_count(8, 0.25) == 2 and real_count(8, 0.25) == 6
    # the swept ratio changes the mix, never the samples per step
    for ratio in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9):
        assert real_count(16, ratio) + synthetic_count(16, ratio) == 16


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75])
def test_phase2_trains_on_batch_size_samples_whatever_the_ratio(ratio):
    torch.manual_seed(5)
    model = tiny_model()
    objective = Phase2Objective(model, COUNTS, Phase2Config(synthesis_ratio=ratio), batch_size=8).train()
    seen: dict[str, int] = {}
    model.reconstruction.register_forward_hook(lambda m, args, out: seen.update(rec=args[0].shape[0]))
    n_real = real_count(8, ratio)
    patches = torch.randn(8, model.feature_dim, model.grid, model.grid)  # a full batch: extras dropped
    batch = {
        "patches": patches,
        "global_emb": torch.randn(8, model.embed_dim),
        "class_id": torch.arange(8) % C,
    }
    _, logs = objective(batch)
    assert (objective.n_real, objective.n_synthetic) == (n_real, 8 - n_real)
    assert seen["rec"] == 8 and logs["synthetic"] == 8 - n_real
    assert int(objective.seen.sum()) == 8


def test_a_ratio_that_leaves_no_real_sample_is_refused():
    with pytest.raises(ValueError, match="no real sample"):
        Phase2Objective(tiny_model(), COUNTS, Phase2Config(synthesis_ratio=0.75), batch_size=2)


@pytest.mark.parametrize(("target", "rec_batch"), [("both", 8), ("semantic", 4)])
def test_synthesis_target_decides_which_branch_sees_synthetic_features(batches, target, rec_batch):
    torch.manual_seed(4)
    model = tiny_model()
    cfg = Phase2Config(synthesis_ratio=0.5, synthesis_target=target)
    objective = Phase2Objective(model, COUNTS, cfg, batch_size=8).train()
    seen: dict[str, int] = {}
    model.reconstruction.register_forward_hook(lambda m, args, out: seen.update(rec=args[0].shape[0]))
    model.semantic.register_forward_hook(lambda m, args, out: seen.update(sem=args[0].shape[0]))
    loss, logs = objective(batches[1])
    assert logs["synthetic"] == 4.0 and seen["rec"] == rec_batch
    assert seen["sem"] == 16  # real + synthetic normals, then as many pseudo-anomalies, either way
    loss.backward()
    assert_gradients(objective, model)
