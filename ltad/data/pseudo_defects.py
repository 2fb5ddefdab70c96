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
A second generator, `lobe_defect` (`eval.pseudo_defect: lobe`), shares neither mask shape nor fill
recipe with any of `ltad synth`'s test defects: the region is a smooth star-shaped lobe (a radius that
varies with angle by a few low harmonics; no Perlin noise, no ellipse, no line, no rectangle), filled
either with an additive colour shift away from the region's mean colour or with a sinusoidal grating
(procedural, from no image). The default stays `blend`, the generator the committed validation rounds
used.

Deterministic: each generator is seeded by (`PSEUDO_SEED`, crc32 of the sample key) alone, so every
run, seed, world size and batch order sees the same pseudo-anomalies, and settings are compared on
the same validation set.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

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


def _check_image(image: np.ndarray, who: str) -> None:
    if image.ndim != 3 or image.shape[0] != image.shape[1] or image.shape[2] != 3:
        raise ValueError(f"{who} expects a square H x W x 3 image, got shape {image.shape}")


def pseudo_defect(image: np.ndarray, key: str, seed: int = PSEUDO_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(defective copy, mask) of `image` (H x W x 3 float in [0, 1], square): pixels change only
    inside the mask; the result stays in [0, 1]. Same (image, key, seed) -> same output."""
    _check_image(image, "pseudo_defect")
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


def _lobe(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth star-shaped region: r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k)), k = 2..4,
    sum a_k <= 0.6, so the radius stays between 0.4 r0 and 1.6 r0 (never empty: the centre is in)."""
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    r0 = rng.uniform(0.07, 0.14) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    theta, dist = np.arctan2(yy - cy, xx - cx), np.hypot(yy - cy, xx - cx)
    amps, phases = rng.uniform(0.0, 0.2, 3), rng.uniform(0, 2 * np.pi, 3)
    radius = r0 * (1 + sum(a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), amps, phases)))
    mask = dist <= np.maximum(radius, 1.0)
    mask[int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))] = True
    return mask


def lobe_defect(image: np.ndarray, key: str, seed: int = PSEUDO_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(defective copy, mask) of `image` (H x W x 3 float in [0, 1], square) with a lobe-shaped region
    either shifted in colour (each channel moved 0.2-0.35 away from the region's mean, so a dark
    region lightens and a light one darkens) or overlaid with a sinusoidal grating. Pixels change only
    inside the mask; the result stays in [0, 1]. Same (image, key, seed) -> same output."""
    _check_image(image, "lobe_defect")
    rng = np.random.default_rng([seed, zlib.crc32(key.encode()), 1])  # 1: not `blend`'s draws
    size = image.shape[0]
    mask = _lobe(rng, size)
    if rng.random() < 0.5:
        mean = image[mask].mean(axis=0)  # 3
        step = rng.uniform(0.2, 0.35, 3) * np.where(mean > 0.5, -1.0, 1.0)
        changed = image + step
    else:
        yy, xx = np.mgrid[0:size, 0:size] / size
        angle, freq = rng.uniform(0, np.pi), rng.uniform(6, 14)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        colour = rng.uniform(0.3, 1.0, 3)
        alpha = rng.uniform(0.6, 0.85)
        changed = (1 - alpha) * image + alpha * wave[..., None] * colour
    out = np.where(mask[..., None], np.clip(changed, 0.0, 1.0), image).astype(image.dtype, copy=False)
    return out, mask


GENERATORS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "blend": pseudo_defect,
    "lobe": lobe_defect,
}
"""`eval.pseudo_defect` -> the generator of the validation set's pseudo-anomalies."""
