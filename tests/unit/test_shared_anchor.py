"""The shared abnormal anchor (`model.semantic.abnormal_anchor: shared`, issue 27) and the cached
pseudo-anomalies it trains on (`phase2.pseudo_anomaly: cached`): the semantic head's math, what phase 2
trains, and the one-sentence error when a cache holds none."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltad.config import LTADConfig, Phase2Config, SemanticConfig
from ltad.errors import ConfigError, DataError
from ltad.models.semantic import SemanticHead
from ltad.training.objectives import Phase2Objective
from tests.unit.test_objectives import COUNTS, tiny_model

D, E, G = 6, 5, 3


def head(anchor: str) -> SemanticHead:
    torch.manual_seed(0)
    return SemanticHead(D, E, SemanticConfig(projection_hidden=8, temperature=0.5, abnormal_anchor=anchor))


def unit_states(b: int) -> torch.Tensor:
    return F.normalize(torch.randn(b, 2, E), dim=-1)


def test_paper_anchors_are_the_class_states_and_add_no_parameter():
    h = head("class")
    assert h.abnormal is None
    assert all(k.startswith("projection.") for k in h.state_dict())
    patches, states = torch.randn(2, D, G, G), unit_states(2)
    emb = F.normalize(h.projection(patches), dim=1)
    expected = torch.einsum("bchw,bsc->bshw", emb, states) / 0.5
    torch.testing.assert_close(h(patches, states), expected)


def test_shared_anchor_replaces_every_class_abnormal_side_by_one_unit_vector():
    h = head("shared")
    states = unit_states(3)
    anchors = h.anchors(states)
    torch.testing.assert_close(anchors[:, 0], states[:, 0])  # the normal side stays the class's
    a = F.normalize(h.abnormal.detach(), dim=0)
    for b in range(3):
        torch.testing.assert_close(anchors[b, 1], a)
    assert torch.allclose(anchors.norm(dim=-1), torch.ones(3, 2))


def test_shared_abnormal_logit_ignores_the_class_abnormal_text_and_keeps_its_normal_text():
    h = head("shared")
    patches, states = torch.randn(2, D, G, G), unit_states(2)
    other = states.clone()
    other[:, 1] = unit_states(2)[:, 1]  # another class's abnormal text: no effect
    torch.testing.assert_close(h(patches, states), h(patches, other))
    moved = states.clone()
    moved[:, 0] = unit_states(2)[:, 0]  # another normal text: the normal logit changes
    assert not torch.allclose(h(patches, states)[:, 0], h(patches, moved)[:, 0])
    # S_sem is the softmax of the two cosines at the temperature
    emb = F.normalize(h.projection(patches), dim=1)
    a = F.normalize(h.abnormal, dim=0)
    cos_a = torch.einsum("bchw,c->bhw", emb, a)
    cos_n = torch.einsum("bchw,bc->bhw", emb, states[:, 0])
    torch.testing.assert_close(h.score(h(patches, states)), torch.sigmoid((cos_a - cos_n) / 0.5))


def test_the_semantic_loss_trains_the_shared_anchor():
    h = head("shared")
    patches, states = torch.randn(2, D, G, G), unit_states(2)
    target = torch.zeros(2, G, G)
    target[:, 0, 0] = 1
    SemanticHead.loss(h(patches, states), target).backward()
    assert h.abnormal.grad is not None and h.abnormal.grad.abs().sum() > 0


def test_anchor_option_is_validated_by_the_config_loader():
    cfg = LTADConfig.from_dict({}).with_overrides(["model.semantic.abnormal_anchor=shared"])
    assert cfg.model.semantic.abnormal_anchor == "shared"
    assert LTADConfig.from_dict({}).model.semantic.abnormal_anchor == "class"  # the paper's default
    with pytest.raises(ConfigError, match="model.semantic.abnormal_anchor"):
        LTADConfig.from_dict({}).with_overrides(["model.semantic.abnormal_anchor=global"])


def _cached_batch(model, with_anomalies: bool) -> dict:
    torch.manual_seed(1)
    enc = model.encoder.encode_images(torch.rand(4, 3, 64, 64))
    batch = {
        "patches": enc.patches.half(),
        "global_emb": enc.global_emb.half(),
        "class_id": torch.tensor([0, 0, 1, 2]),
    }
    if with_anomalies:
        batch["anom_patches"] = enc.patches.flip(-1).half()
        target = torch.zeros(4, 8, 8, dtype=torch.float16)
        target[:, 2:4, 2:4] = 1
        batch["anom_target"] = target
    return batch


def test_phase2_on_cached_pseudo_anomalies_trains_the_shared_anchor():
    torch.manual_seed(2)
    model = tiny_model()
    model.semantic = SemanticHead(
        model.feature_dim, model.embed_dim, SemanticConfig(projection_hidden=32, abnormal_anchor="shared")
    )
    objective = Phase2Objective(model, COUNTS, Phase2Config(pseudo_anomaly="cached"), batch_size=4).train()
    assert any(p is model.semantic.abnormal for p in objective.parameters())
    loss, logs = objective(_cached_batch(model, True))
    assert logs["pseudo_image_level"] == 1.0 and torch.isfinite(loss)
    loss.backward()
    assert model.semantic.abnormal.grad is not None and model.semantic.abnormal.grad.abs().sum() > 0


def test_phase2_cached_without_anomalies_in_the_cache_is_one_sentence():
    model = tiny_model()
    objective = Phase2Objective(model, COUNTS, Phase2Config(pseudo_anomaly="cached"), batch_size=4)
    with pytest.raises(DataError, match="needs pseudo-anomalies in the feature cache"):
        objective(_cached_batch(model, False))


def test_study_lobe_test_set_and_cached_pseudo_anomalies(tmp_path):
    """`test_defects: lobe`: the normal test images then a lobe copy of each (label 1, its own mask);
    the training pseudo-anomalies go into the study's cache and come back through the cache decoder."""
    import tarfile

    from ltad.data.datasets import read_dataset
    from ltad.data.synth import synthesize
    from ltad.study.cache import write_training_cache
    from ltad.study.features import encode_records, pseudo_anomalies, pseudo_records
    from ltad.training.feature_cache import decode_feature_sample

    root = synthesize(tmp_path / "d", classes=2, image_size=64, train_per_class=2, test_per_class=4, seed=0)
    ds = read_dataset("synth", root)
    enc = tiny_model().encoder
    test = pseudo_records(enc, root, ds.select("test"), "lobe")
    normals = [r for r in ds.select("test") if r.label == 0]
    n = len(normals)
    assert len(test) == 2 * n and test.label.tolist() == [0] * n + [1] * n
    assert test.paths[n:] == [r.path + "#pseudo" for r in normals]
    assert test.masks is not None and int(test.masks[:n].sum()) == 0
    assert all(int(m.sum()) > 0 for m in test.masks[n:])
    plain = encode_records(enc, root, normals, with_masks=True)
    torch.testing.assert_close(test.patches[:n], plain.patches)  # the normal half is the plain encoding
    assert not torch.allclose(test.patches[n:].float(), plain.patches.float())

    train = encode_records(enc, root, ds.select("train"), with_masks=False)
    feats, target = pseudo_anomalies(enc, root, ds.select("train"))
    assert feats.shape == train.patches.shape and target.shape == (len(train), 8, 8)
    assert float(target.min()) >= 0 and float(target.max()) <= 1 and all(t.sum() > 0 for t in target)
    train.anom_patches, train.anom_target = feats, target
    cache = write_training_cache(train.subset(torch.tensor([0])), ds.classes, tmp_path / "cache")
    shard = next((tmp_path / "cache").rglob("*.tar"))
    with tarfile.open(shard) as tar:
        members = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()[:6]}
    assert {"anom.npy", "anom_target.npy"} <= set(members)
    sample = decode_feature_sample({**members, "__key__": "k"}, 64, with_mask=False)
    torch.testing.assert_close(torch.as_tensor(sample["anom_target"]), target[0])
    assert cache.num_classes == 2
