"""Pseudo-anomalies: masks mark exactly what changed; deterministic under torch's seed."""

from __future__ import annotations

import torch

from ltad.models.pseudo_anomalies import (
    cutpaste_anomalies,
    feature_anomalies,
    image_anomalies,
    mask_to_grid,
    perlin_anomalies,
    perlin_noise,
)


def test_feature_anomalies_change_only_inside_the_mask():
    torch.manual_seed(0)
    patches = torch.randn(6, 16, 8, 8)
    out, mask = feature_anomalies(patches, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert out.shape == patches.shape and mask.shape == (6, 8, 8)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.flatten(1).sum(1) >= 1).all()
    outside = (mask == 0).unsqueeze(1).expand_as(patches)
    assert torch.equal(out[outside], patches[outside])
    changed = (out != patches).any(dim=1).float()
    assert torch.equal(changed, mask)
    assert torch.equal(patches, patches.clone())  # input untouched


def test_feature_swaps_come_from_another_class():
    torch.manual_seed(1)
    patches = torch.stack([torch.zeros(4, 6, 6), torch.ones(4, 6, 6)])
    for _ in range(10):
        out, mask = feature_anomalies(patches, torch.tensor([0, 1]))
        region = out[0].permute(1, 2, 0)[mask[0] > 0]
        # either a swap from sample 1 (all ones) or noise scaled by the (zero) norm of sample 0
        assert torch.all(region == 1) or torch.all(region == 0)


def test_perlin_noise_is_bounded_and_smooth():
    torch.manual_seed(0)
    noise = perlin_noise(64, 48, 4)
    assert noise.shape == (64, 48) and noise.abs().max() <= 1.5
    assert (noise[1:] - noise[:-1]).abs().max() < 0.3


def test_image_anomalies_respect_masks_and_range():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    for fn in (perlin_anomalies, cutpaste_anomalies, image_anomalies):
        out, masks = fn(images)
        assert out.shape == images.shape and masks.shape == (4, 32, 32)
        assert ((out >= 0) & (out <= 1)).all()
        assert (masks.flatten(1).sum(1) > 0).all()
        outside = (masks == 0).unsqueeze(1).expand_as(images)
        assert torch.equal(out[outside], images[outside])


def test_anomalies_are_deterministic_under_the_seed():
    images = torch.rand(3, 3, 32, 32)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(image_anomalies(images))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_mask_to_grid_gives_anomalous_shares():
    masks = torch.zeros(1, 32, 32)
    masks[0, :16, :8] = 1
    grid = mask_to_grid(masks, 4)
    assert grid.shape == (1, 4, 4)
    assert grid[0, 0, 0] == 1 and grid[0, 0, 2] == 0 and grid[0, 2, 0] == 0
    torch.testing.assert_close(grid.mean(), masks.mean())
