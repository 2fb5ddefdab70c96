"""ltad_mb's per-class kNN banks: who gets a bank, how its distances are standardised, and that a
defect scores above normal patches of its own class."""

from __future__ import annotations

import pytest
import torch

from ltad.baselines.class_banks import ClassBanks, fuse_with_banks


def _class_patches(n: int, centre: float, gen: torch.Generator) -> torch.Tensor:
    """n normal images of one class: 8 channels on a 4 x 4 grid, scattered around `centre`."""
    return centre + 0.1 * torch.randn(n, 8, 4, 4, generator=gen)


def _train(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    big, small = _class_patches(12, 0.0, gen), _class_patches(3, 5.0, gen)
    return torch.cat([big, small]), torch.tensor([0] * 12 + [1] * 3)


def test_only_classes_with_enough_images_get_a_bank_and_the_rest_score_zero():
    gen = torch.Generator().manual_seed(0)
    patches, cid = _train(gen)
    banks = ClassBanks(min_images=10, coreset_ratio=1.0).fit(patches, cid)
    assert banks.classes == [0]
    test = torch.cat([_class_patches(2, 0.0, gen), _class_patches(2, 5.0, gen)])
    z = banks.z_scores(test, torch.tensor([0, 0, 1, 1]))
    assert z.shape == (4, 4, 4)
    assert torch.equal(z[2:], torch.zeros(2, 4, 4))
    assert z[:2].abs().max() > 0


def test_a_defect_patch_scores_far_above_normal_patches_of_its_class():
    gen = torch.Generator().manual_seed(1)
    patches, cid = _train(gen)
    banks = ClassBanks(min_images=10, coreset_ratio=1.0).fit(patches, cid)
    test = _class_patches(2, 0.0, gen)
    test[1, :, 2, 2] += 3.0  # one defective patch in the second image
    z = banks.z_scores(test, torch.tensor([0, 0]))
    # normal test patches sit near the two-fold distances the statistics came from
    assert z[0].abs().mean() < 3
    assert z[1, 2, 2] > z[0].max() + 10


def test_standardisation_comes_from_the_two_folds_of_the_training_images():
    gen = torch.Generator().manual_seed(2)
    patches, cid = _train(gen)
    banks = ClassBanks(min_images=10, coreset_ratio=1.0).fit(patches, cid)
    mean, std = banks.stats[0]
    assert mean > 0 and std > 0  # held-out fold patches are never at distance 0
    # the same training image scored against the full bank is at distance 0: z = -mean / std
    z_train = banks.z_scores(patches[:1], torch.tensor([0]))
    assert torch.allclose(z_train, torch.full_like(z_train, -mean / std), atol=1e-4)


def test_fusion_adds_the_weighted_bank_term_and_weight_zero_is_ltad():
    fused, z_bank = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    assert torch.equal(fuse_with_banks(fused, z_bank, 0.0), fused)
    assert torch.allclose(fuse_with_banks(fused, z_bank, 2.0), fused + 2 * z_bank)


@pytest.mark.parametrize("kwargs", [{"min_images": 1}, {"coreset_ratio": 0.0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ClassBanks(**kwargs)
