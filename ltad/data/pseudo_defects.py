"""Synthetic pseudo-anomalies of held-out normal images: the anomalous half of the validation set.

Settings (prompt length, synthesis ratio, early stopping) must be chosen without test labels, so the
validation AUROC ranks the held-out normals against copies of the same images carrying one synthetic
defect each (`pseudo_defect`). The defect is DRAEM-style: an irregular Perlin-noise region inside an
ellipse (the mask shape of `ltad synth`'s texture and stain defects, `perlin` from ltad/data/synth.py)
in which the image is blended with a quarter-turned, shifted copy of itself at another brightness.

Why this defect:
- label-free and class-free: it reads only the one normal image (no real defect, no other class,
  no test image), so it can neither leak test labels nor mix classes;
- it is not one of the defect types the offline dataset's test set draws (texture from *another*
  source image, scratch, CutPaste rectangle, stain), so a setting cannot win validation by being
  tuned to the test defects' exact recipe;
- an irregular local region of foreign structure is what most industrial defects look like to a
  patch-level model, which is what the score reads.
Deterministic: the generator is seeded by (`PSEUDO_SEED`, crc32 of the sample key) alone, so every
run, seed, world size and batch order sees the same pseudo-anomalies, and settings are compared on
the same validation set.
"""

from __future__ import annotations

import zlib

import numpy as np

from ltad.data.synth import perlin

PSEUDO_SEED = 16
"""Fixed on purpose (not `run.seed`): runs of different seeds are validated on the same images."""
PSEUDO_SUFFIX = "#pseudo"
"""Appended to a held-out key to name its pseudo-anomalous copy."""
MIN_SHARE = 0.004
"""Smallest mask share of the image (as `ltad synth`'s blobs): below it the ellipse itself is used."""


def pseudo_key(key: str) -> str:
    return key + PSEUDO_SUFFIX


def _mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular region: Perlin noise above a threshold inside a random ellipse (never empty)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    inside = np.zeros((size, size), bool)
    for _ in range(20):
        cy, cx = rng.uniform(0.25, 0.75, 2)
        ry, rx = rng.uniform(0.1, 0.22, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        mask = inside & (perlin(rng, size, int(rng.integers(3, 7))) > rng.uniform(-0.1, 0.1))
        if mask.mean() >= MIN_SHARE:
            return mask
    return inside


def pseudo_defect(image: np.ndarray, key: str, seed: int = PSEUDO_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(defective copy, mask) of `image` (H x W x 3 float in [0, 1], square): pixels change only
    inside the mask; the result stays in [0, 1]. Same (image, key, seed) -> same output."""
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
        raise ValueError(f"pseudo_defect expects a square H x W x 3 image, got shape {image.shape}")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    size = image.shape[0]
    mask = _mask(rng, size)
    turned = np.rot90(image, int(rng.integers(1, 4)))
    shift = rng.integers(size // 4, 3 * size // 4 + 1, size=2)
    foreign = np.roll(turned, (int(shift[0]), int(shift[1])), axis=(0, 1))
    foreign = foreign * rng.choice([0.6, 1.4]) + rng.uniform(-0.05, 0.05)
    alpha = rng.uniform(0.7, 0.95)
    blended = (1 - alpha) * image + alpha * foreign
    out = np.where(mask[..., None], np.clip(blended, 0.0, 1.0), image).astype(image.dtype, copy=False)
    return out, mask
