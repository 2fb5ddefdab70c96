"""The per-class kNN control (`knn_class`): banks for every class, one-image banks, and the nearest-
class-mean choice of a bank, on tiny cases whose answers are known by hand."""

from __future__ import annotations

import pytest
import torch

from ltad.baselines.class_banks import fit_class_bank, one_image_bank
from ltad.baselines.class_knn import ClassKNN, image_embedding
from ltad.baselines.patchcore import PatchCore, patch_maps
from ltad.models.memory_banks import aggregate_patches

G, D = 6, 4


def _images(level: float, n: int, seed: int) -> torch.Tensor:
    """n images N x D x G x G: every channel at `level` plus small noise."""
    gen = torch.Generator().manual_seed(seed)
    return level + 0.05 * torch.randn(n, D, G, G, generator=gen)


def _two_classes() -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 (5 images, features near 0) and class 1 (ONE image, features near 4)."""
    patches = torch.cat([_images(0.0, 5, 0), _images(4.0, 1, 1)])
    return patches, torch.tensor([0, 0, 0, 0, 0, 1])


def test_every_class_gets_a_bank_made_as_ltad_mbs_and_one_image_keeps_its_patches():
    patches, cid = _two_classes()
    model = ClassKNN(coreset_ratio=1.0, seed=0).fit(patches, cid, num_classes=3)
    assert model.classes == [0, 1]  # class 2 had no training image: no bank
    slots = model.module.bank_slot
    ref = fit_class_bank(patches[:5], coreset_ratio=1.0, seed=0)  # ltad_mb's fitting, unchanged
    stats0 = model.module.bank_stats[slots[0]]
    assert torch.allclose(stats0, torch.tensor([ref.mean, ref.std]))
    one = model.module.bank[slots[1], : model.module.bank_len[slots[1]]]
    assert torch.equal(one, aggregate_patches(patches[5:]).flatten(2)[0].T)  # all G*G patches kept


def test_one_image_bank_scores_its_own_image_at_minus_mean_over_std_and_a_far_patch_high():
    img = _images(4.0, 1, 1)
    bank = one_image_bank(img)
    assert bank.rows.shape == (G * G, D) and bank.mean > 0 and bank.std > 0
    model = ClassKNN(coreset_ratio=1.0).fit(img, torch.tensor([0]), num_classes=1)
    z = model.z_scores(img, torch.tensor([0]))
    assert torch.allclose(z, torch.full((1, G, G), -bank.mean / bank.std), atol=1e-3)
    bad = img.clone()
    bad[0, :, 2, 2] += 10.0
    z_bad = model.z_scores(bad, torch.tensor([0]))
    assert int(z_bad[0].argmax()) // G in (1, 2, 3) and float(z_bad.max()) > 50  # the defect's 3x3
    with pytest.raises(ValueError, match="exactly one image"):
        one_image_bank(_images(0.0, 2, 0))


def test_nearest_class_mean_picks_the_class_by_hand_and_never_a_class_without_images():
    patches, cid = _two_classes()
    model = ClassKNN(coreset_ratio=1.0).fit(patches, cid, num_classes=3)
    # standardised embedding means: class 0 near 0 and class 1 near 4 in raw units, midpoint 2
    test = torch.stack([torch.full((D, G, G), v) for v in (-1.0, 1.5, 2.5, 9.0)])
    assert model.predict(test).tolist() == [0, 0, 1, 1]
    assert torch.allclose(image_embedding(test)[:, 0], torch.tensor([-1.0, 1.5, 2.5, 9.0]))
    with pytest.raises(ValueError, match="no bank for class id 2"):
        model.z_scores(test, torch.tensor([0, 0, 1, 2]))


def test_a_defect_scores_above_normals_against_its_predicted_bank_and_matches_patchcore():
    patches, cid = _two_classes()
    model = ClassKNN(coreset_ratio=1.0).fit(patches, cid, num_classes=2)
    normal, defect = _images(0.0, 1, 7), _images(0.0, 1, 8)
    defect[0, :, 1:3, 1:3] += 3.0
    test = torch.cat([normal, defect])
    cls = model.predict(test)
    assert cls.tolist() == [0, 0]  # a local defect leaves the spatial mean near its class
    z = model.z_scores(test, cls)
    raw = PatchCore(coreset_ratio=1.0).fit([patches[:5]]).patch_scores(test)
    stats = model.module.bank_stats[model.module.bank_slot[0]]
    assert torch.allclose(z, (raw - stats[0]) / stats[1], atol=1e-3)  # PatchCore's distance, standardised
    _, scores = patch_maps(z, 24)
    assert float(scores[1]) > float(scores[0])


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="coreset_ratio"):
        ClassKNN(coreset_ratio=0.0)
    with pytest.raises(RuntimeError, match="fit"):
        ClassKNN().predict(_images(0.0, 1, 0))
    with pytest.raises(ValueError, match="N >= 1"):
        ClassKNN().fit(torch.zeros(0, D, G, G), torch.zeros(0, dtype=torch.long), 2)
