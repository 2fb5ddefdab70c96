"""Overlay panels and galleries: PNG files of the documented size with the right tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ltad.eval.visualize import LABEL_HEIGHT, PAD, class_gallery, overlay_panel, save_overlay

H, W = 48, 64


def sample():
    image = torch.rand(3, H, W)  # as the evaluation stream yields it: float 3 x H x W in [0, 1]
    amap = np.zeros((H // 2, W // 2), np.float32)  # lower resolution than the image
    amap[4:10, 4:12] = 1.0
    gt = torch.zeros(1, H, W)
    gt[0, 8:20, 8:24] = 1.0
    return image, amap, gt


def tile(panel: Image.Image, index: int, top: int) -> np.ndarray:
    x = PAD + index * (W + PAD)
    return np.asarray(panel)[top : top + H, x : x + W]


def test_overlay_png_has_expected_size_and_tiles(tmp_path):
    image, amap, gt = sample()
    path = save_overlay(tmp_path / "sub" / "x.png", image, amap, gt, threshold=0.5, title="bottle 001")
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (4 * W + 5 * PAD, PAD + 2 * LABEL_HEIGHT + H + PAD)
        panel = png.convert("RGB")
    top = PAD + 2 * LABEL_HEIGHT
    expected_image = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(tile(panel, 0, top), expected_image)
    gt_tile = tile(panel, 2, top)[..., 0]
    assert np.array_equal(gt_tile > 0, gt[0].numpy() > 0)
    pred_tile = tile(panel, 3, top)[..., 0]
    assert pred_tile[10:18, 10:22].min() == 255 and pred_tile[30:, 40:].max() == 0
    heat = tile(panel, 1, top).astype(int)
    assert not np.array_equal(heat, expected_image)  # the heat overlay changes the image


def test_normal_image_without_mask_and_fixed_range():
    image, amap, _ = sample()
    panel = overlay_panel(image.permute(1, 2, 0).numpy(), amap, None, threshold=2.0, value_range=(0.0, 4.0))
    assert panel.size == (4 * W + 5 * PAD, PAD + LABEL_HEIGHT + H + PAD)
    top = PAD + LABEL_HEIGHT
    assert tile(panel, 2, top).max() == 0 and tile(panel, 3, top).max() == 0  # empty GT, nothing >= 2


def test_class_gallery_stacks_panels(tmp_path):
    image, amap, gt = sample()
    panels = [overlay_panel(image, amap, gt, 0.5) for _ in range(3)]
    path = class_gallery(panels, tmp_path / "gallery" / "bottle.png", title="bottle (tail)")
    with Image.open(path) as png:
        assert png.size == (panels[0].width, PAD + LABEL_HEIGHT + 3 * panels[0].height + 3 * PAD)
    with pytest.raises(ValueError, match="at least one panel"):
        class_gallery([], tmp_path / "empty.png")


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="image must be"):
        overlay_panel(np.zeros((2, 3, 4, 5)), np.zeros((4, 4)), None, 0.5)
    with pytest.raises(ValueError, match="must be H x W"):
        overlay_panel(np.zeros((8, 8, 3)), np.zeros((2, 8, 8)), None, 0.5)
