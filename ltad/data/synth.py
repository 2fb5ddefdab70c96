"""The offline pseudo-industrial dataset: MVTec layout built from images scikit-image bundles.

No package ships MVTec/VisA/DAGM, so laptops and CI need a stand-in with real image statistics and
real pixel masks. Each class is one bundled source image (all CC0 / public domain, read from the
wheel, never downloaded); normal views are random crops, flips and brightness changes of it; test
defects are Perlin-shaped foreign texture, scratches, CutPaste and stains, each with its mask.
Everything is drawn from per-image seeds, so the same arguments give byte-identical files.

Beyond the 17 bundled sources, class k is a procedural variant of source k mod 17 (its own zoomed
crop, quarter turn, channel order and gamma, fixed by k alone so a class looks the same under every
seed), named `<source>-v<NN>`: hundreds of distinct classes for testing scale behaviour offline.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import skimage
import skimage.data
from PIL import Image, ImageDraw

from ltad.errors import ConfigError, DataError

# Bundled in the scikit-image 0.26 wheel (checked offline); eagle, lily, cells3d etc. need a download.
SOURCES = (
    "brick", "grass", "gravel", "camera", "coins", "coffee", "chelsea", "astronaut", "rocket", "moon",
    "clock", "cell", "immunohistochemistry", "hubble_deep_field", "retina", "text", "page",
)  # fmt: skip
DEFECTS = ("texture", "scratch", "cutpaste", "stain")
SHIFT = 0.15  # normal views shift by up to this share of the side
SYNTH_FORMAT = "ltad-synth/1"
MAX_CLASSES = 1000  # procedural variants of the sources beyond len(SOURCES)
Defect = tuple[np.ndarray, np.ndarray]  # (image HxWx3 float, mask HxW bool)


def class_name(k: int) -> str:
    """Name of class k: the bundled source's name, with a variant suffix beyond the first len(SOURCES)."""
    base = SOURCES[k % len(SOURCES)]
    return base if k < len(SOURCES) else f"{base}-v{k // len(SOURCES):02d}"


@functools.lru_cache(maxsize=len(SOURCES))
def _bundled(name: str) -> np.ndarray:
    return np.asarray(getattr(skimage.data, name)())


def _source(k: int, side: int) -> tuple[np.ndarray, bool]:
    """Class k's source square resized to `side`: float32 HxWx3 in [0, 1], and is-grayscale.

    The bundled classes use the image's centre square; a variant crops a random square of 55-90 % of
    the short side, turns it by a multiple of 90 degrees, reorders the colour channels and applies a
    gamma, all drawn from a generator seeded by k alone.
    """
    arr = _bundled(SOURCES[k % len(SOURCES)])
    gray = arr.ndim == 2
    img = Image.fromarray(arr if gray else arr[..., :3])
    h, w = arr.shape[:2]
    s = min(h, w)
    if k < len(SOURCES):
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    else:
        rng = np.random.default_rng([7919, k])
        c = int(s * rng.uniform(0.55, 0.9))
        x, y = int(rng.integers(0, w - c + 1)), int(rng.integers(0, h - c + 1))
        box = (x, y, x + c, y + c)
    img = img.crop(box).convert("RGB").resize((side, side), Image.Resampling.LANCZOS)
    out = np.asarray(img, dtype=np.float32) / 255.0
    if k >= len(SOURCES):
        out = np.rot90(out, int(rng.integers(0, 4)))
        if not gray:
            out = out[..., rng.permutation(3)]
        out = np.ascontiguousarray(out ** rng.uniform(0.7, 1.4), dtype=np.float32)
    return out, gray


def _view(src: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One normal view: a shifted crop, maybe mirrored, with brightness/contrast jitter and sensor noise."""
    oy, ox = rng.integers(0, src.shape[0] - size + 1, size=2)
    img = src[oy : oy + size, ox : ox + size]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = img * rng.uniform(0.92, 1.08) + rng.uniform(-0.03, 0.03)
    return img + rng.normal(0.0, 0.01, img.shape).astype(np.float32)


def perlin(rng: np.random.Generator, size: int, res: int) -> np.ndarray:
    """2-D Perlin gradient noise (size x size, about [-0.7, 0.7]) on a res x res lattice, vectorised."""
    angles = rng.uniform(0, 2 * np.pi, (res + 1, res + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    t = np.arange(size) * res / size
    i, f = t.astype(int), (t - t.astype(int))
    fade = f**3 * (f * (f * 6 - 15) + 10)

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[(i + dy)[:, None], (i + dx)[None, :]]
        return g[..., 0] * (f - dy)[:, None] + g[..., 1] * (f - dx)[None, :]

    top = corner(0, 0) + fade[None, :] * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + fade[None, :] * (corner(1, 1) - corner(1, 0))
    return (top + fade[:, None] * (bottom - top)).astype(np.float32)


def _blob(rng: np.random.Generator, size: int, res: int, radius: tuple[float, float]) -> np.ndarray:
    """A local irregular region: Perlin noise above a threshold inside a random ellipse."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(20):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        ry, rx = rng.uniform(*radius, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        mask = inside & (perlin(rng, size, res) > rng.uniform(-0.1, 0.15))
        if mask.mean() >= 0.004:
            return mask
    return inside


def _texture(img: np.ndarray, rng: np.random.Generator, size: int, other: np.ndarray) -> Defect:
    mask = _blob(rng, size, int(rng.integers(4, 9)), (0.08, 0.2))
    oy, ox = rng.integers(0, other.shape[0] - size + 1, size=2)
    alpha = rng.uniform(0.6, 0.9)
    patch = other[oy : oy + size, ox : ox + size]
    return np.where(mask[..., None], (1 - alpha) * img + alpha * patch, img), mask


def _scratch(img: np.ndarray, rng: np.random.Generator, size: int, other: np.ndarray) -> Defect:
    canvas = Image.new("L", (size, size), 0)
    point = rng.uniform(0.2, 0.8, 2) * size
    angle = rng.uniform(0, 2 * np.pi)
    points = [tuple(point)]
    for _ in range(int(rng.integers(2, 5))):
        angle += rng.uniform(-0.6, 0.6)
        point = np.clip(
            point + rng.uniform(0.06, 0.14) * size * np.array([np.cos(angle), np.sin(angle)]), 0, size - 1
        )
        points.append(tuple(point))
    width = max(1, round(size / 128 * rng.uniform(1.5, 3.5)))
    ImageDraw.Draw(canvas).line([(float(x), float(y)) for x, y in points], fill=255, width=width)
    mask = np.asarray(canvas) > 0
    tone = img * 0.25 if rng.random() < 0.5 else img * 0.3 + 0.7
    return np.where(mask[..., None], tone, img), mask


def _cutpaste(img: np.ndarray, rng: np.random.Generator, size: int, other: np.ndarray) -> Defect:
    h, w = (rng.uniform(0.1, 0.22, 2) * size).astype(int) + 2
    sy, sx = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    ty, tx = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    patch = img[sy : sy + h, sx : sx + w][::-1] * rng.choice([0.75, 1.25]) + rng.normal(0, 0.02)
    out = img.copy()
    out[ty : ty + h, tx : tx + w] = patch
    mask = np.zeros((size, size), bool)
    mask[ty : ty + h, tx : tx + w] = True
    return out, mask


def _stain(img: np.ndarray, rng: np.random.Generator, size: int, other: np.ndarray) -> Defect:
    mask = _blob(rng, size, 2, (0.07, 0.16))
    tint = np.array([0.55, 0.4, 0.25], np.float32) * rng.uniform(0.7, 1.1)
    strength = rng.uniform(0.5, 0.8)
    return np.where(mask[..., None], img * (1 - strength + strength * tint), img), mask


DEFECT_FNS: dict[str, Callable[..., Defect]] = {
    "texture": _texture,
    "scratch": _scratch,
    "cutpaste": _cutpaste,
    "stain": _stain,
}


def _save(path: Path, img: np.ndarray, gray: bool) -> None:
    arr = np.clip(img, 0.0, 1.0)
    arr = arr.mean(axis=-1) if gray else arr
    Image.fromarray(np.round(arr * 255).astype(np.uint8)).save(path)


def _check(classes: int, image_size: int, train_per_class: int, test_per_class: int) -> None:
    if not 2 <= classes <= MAX_CLASSES:
        raise ConfigError(
            f"--classes must be in [2, {MAX_CLASSES}] ({len(SOURCES)} bundled sources, then variants), got {classes}"
        )
    if image_size < 32:
        raise ConfigError(f"--image-size must be at least 32 pixels, got {image_size}")
    if train_per_class < 1:
        raise ConfigError(f"--train-per-class must be at least 1, got {train_per_class}")
    if test_per_class < 2:
        raise ConfigError(f"--test-per-class must be at least 2 (normal and defective), got {test_per_class}")


def _write_class(tmp: Path, k: int, sources: list, size: int, n_train: int, n_test: int, seed: int) -> None:
    src, gray = sources[k]
    base = tmp / class_name(k)
    for sub in ["train/good", "test/good"] + [f"{d}/{t}" for d in ("test", "ground_truth") for t in DEFECTS]:
        (base / sub).mkdir(parents=True)
    for i in range(n_train):
        _save(
            base / "train" / "good" / f"{i:03d}.png",
            _view(src, np.random.default_rng([seed, k, 0, i]), size),
            gray,
        )
    n_bad = n_test // 2
    for i in range(n_test - n_bad):
        _save(
            base / "test" / "good" / f"{i:03d}.png",
            _view(src, np.random.default_rng([seed, k, 1, i]), size),
            gray,
        )
    for i in range(n_bad):
        rng = np.random.default_rng([seed, k, 2, i])
        defect = DEFECTS[i % len(DEFECTS)]
        other = sources[(k + 1 + int(rng.integers(0, len(sources) - 1))) % len(sources)][0]
        img, mask = DEFECT_FNS[defect](_view(src, rng, size), rng, size, other)
        name = f"{i // len(DEFECTS):03d}"
        _save(base / "test" / defect / f"{name}.png", img, gray)
        Image.fromarray(mask.astype(np.uint8) * 255).save(base / "ground_truth" / defect / f"{name}_mask.png")


def synthesize(
    out: str | Path,
    classes: int = 8,
    image_size: int = 128,
    train_per_class: int = 60,
    test_per_class: int = 24,
    seed: int = 0,
) -> Path:
    """Write the dataset to `out` (built beside it, renamed when complete) and return `out`.

    An `out` already holding a dataset made with the same arguments is reused as is.
    """
    _check(classes, image_size, train_per_class, test_per_class)
    out = Path(out)
    info = {
        "format": SYNTH_FORMAT,
        "classes": [class_name(k) for k in range(classes)],
        "image_size": image_size,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "seed": seed,
        # skimage's __init__.pyi lists __version__ in __all__ but does not declare it
        "sources": f"scikit-image {skimage.__version__} bundled data (CC0 / public domain)",  # type: ignore[attr-defined]
    }
    stamp = out / "synth.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == info:
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output directory '{out}' exists and is not empty (or holds another synth dataset)")
    side = int(round(image_size * (1 + SHIFT)))
    sources = [_source(k, side) for k in range(classes)]
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for k in range(classes):
            _write_class(tmp, k, sources, image_size, train_per_class, test_per_class, seed)
        (tmp / "synth.json").write_text(json.dumps(info, indent=1) + "\n")
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
