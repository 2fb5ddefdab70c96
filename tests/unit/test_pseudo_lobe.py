"""`eval.pseudo_defect: lobe` (ltad/data/pseudo_defects.py): deterministic, local, visible on any
image, a mask shape none of `ltad synth`'s test defects has, and wired into the validation batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ltad.config import ConfigError, LTADConfig
from ltad.data.pseudo_defects import GENERATORS, PSEUDO_SEED, lobe_defect, pseudo_defect
from ltad.data.synth import _source, _view
from ltad.training.scoring import pseudo_batch


def _normal(k: int = 0, size: int = 64) -> np.ndarray:
    src, _ = _source(k, int(size * 1.15))
    return np.clip(_view(src, np.random.default_rng([1, k]), size), 0.0, 1.0).astype(np.float32)


FLAT = {v: np.full((64, 64, 3), v, np.float32) for v in (0.0, 0.5, 1.0)}


@pytest.mark.parametrize("image", [*(_normal(k) for k in range(6)), *FLAT.values()])
def test_lobe_is_deterministic_local_and_changes_almost_every_masked_pixel(image):
    for i in range(8):
        key = f"cls/val/{i}"
        out, mask = lobe_defect(image, key)
        again, mask2 = lobe_defect(image.copy(), key)
        assert np.array_equal(out, again) and np.array_equal(mask, mask2)
        assert out.dtype == image.dtype and mask.dtype == bool and out.min() >= 0 and out.max() <= 1
        delta = np.abs(out - image).max(axis=-1)
        assert not (delta[~mask] > 0).any(), "a pixel outside the mask changed"
        assert 0.004 <= mask.mean() <= 0.25, "one local region, never empty, never most of the image"
        assert (delta[mask] > 0.02).mean() >= 0.8, "the defect covers its mask (flat images included)"


def test_lobe_mask_is_star_shaped_and_neither_a_rectangle_nor_a_blend_region():
    image = _normal(2)
    for i in range(20):
        _, mask = lobe_defect(image, f"k{i}")
        ys, xs = np.nonzero(mask)
        box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.mean() < 0.95, "CutPaste's rectangle is a test defect's shape"
        cy, cx = ys.mean(), xs.mean()
        for y, x in zip(ys[::7], xs[::7]):  # the segment to the centroid stays (almost) inside
            t = np.linspace(0, 1, 12)
            inside = mask[np.rint(cy + t * (y - cy)).astype(int), np.rint(cx + t * (x - cx)).astype(int)]
            assert inside.mean() >= 0.9
        _, blend_mask = pseudo_defect(image, f"k{i}")
        assert not np.array_equal(mask, blend_mask)


def test_lobe_depends_on_key_and_seed_and_rejects_non_square_images():
    image = _normal(3)
    _, a = lobe_defect(image, "a")
    _, b = lobe_defect(image, "b")
    _, c = lobe_defect(image, "a", seed=PSEUDO_SEED + 1)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(ValueError, match="square H x W x 3"):
        lobe_defect(image[:, :10], "a")


def test_the_option_reaches_the_validation_batches_and_blend_stays_the_default():
    assert LTADConfig().eval.pseudo_defect == "blend" and set(GENERATORS) == {"blend", "lobe"}
    assert LTADConfig().with_overrides(["eval.pseudo_defect=lobe"]).eval.pseudo_defect == "lobe"
    with pytest.raises(ConfigError, match="eval.pseudo_defect"):
        LTADConfig().with_overrides(["eval.pseudo_defect=cutpaste"])
    images = np.stack([_normal(k, 32) for k in range(2)])
    chw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    keys = ["x/0", "x/1"]
    lobe = pseudo_batch(chw, keys, "lobe")
    for i, key in enumerate(keys):
        assert np.allclose(lobe[i].permute(1, 2, 0).numpy(), lobe_defect(images[i], key)[0])
    assert torch.equal(pseudo_batch(chw, keys), pseudo_batch(chw, keys, "blend"))
