"""Anomaly-map overlays: one labelled panel per image and a per-class gallery, as PNG.

A panel is four tiles at the image's resolution, left to right: the image | the anomaly map as a heat
overlay | the ground-truth mask | the predicted mask (map >= threshold, the metrics' convention). The
heat colours span ``value_range``; without it they span the map's own min..max, which makes every map
look hot, so the tile's label prints the range used. Pass one range per class (or run) to compare maps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from ltad.eval.metrics import to_numpy

PAD = 4
"""Pixels around and between tiles."""
LABEL_HEIGHT = 14
"""Pixels of one text row (tile labels; the optional title adds one more row)."""
HEAT_ALPHA = 0.5


def _rgb(image: Any) -> np.ndarray:
    """H x W x 3 uint8 from H x W x 3, 3 x H x W or H x W; floats are taken as [0, 1]."""
    arr = to_numpy(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must be H x W x 3, 3 x H x W or H x W, got {tuple(arr.shape)}.")
    if arr.dtype.kind == "f":
        arr = np.clip(arr, 0.0, 1.0) * 255.0 + 0.5
    return arr.astype(np.uint8)


def _plane(x: Any, size: tuple[int, int], nearest: bool) -> np.ndarray:
    """A 2-D float map (1 x H x W accepted) resized to ``size`` = (W, H)."""
    arr = np.squeeze(to_numpy(x)).astype(np.float32)
    if arr.ndim != 2:
        raise ValueError(f"maps and masks must be H x W, got {tuple(to_numpy(x).shape)}.")
    if arr.shape[::-1] != size:
        resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
        arr = np.asarray(Image.fromarray(arr).resize(size, resample))
    return arr


def _mask_tile(mask: np.ndarray) -> np.ndarray:
    return np.repeat((mask[..., None] > 0.5) * np.uint8(255), 3, axis=-1)


def overlay_panel(
    image: Any,
    anomaly_map: Any,
    gt_mask: Any | None,
    threshold: float,
    *,
    value_range: tuple[float, float] | None = None,
    title: str | None = None,
) -> Image.Image:
    """The labelled four-tile panel; ``gt_mask=None`` is a normal image (empty mask)."""
    rgb = _rgb(image)
    h, w = rgb.shape[:2]
    amap = _plane(anomaly_map, (w, h), nearest=False)
    gt = np.zeros((h, w), np.float32) if gt_mask is None else _plane(gt_mask, (w, h), nearest=True)
    lo, hi = value_range if value_range is not None else (float(amap.min()), float(amap.max()))
    heat = colormaps["jet"](np.clip((amap - lo) / max(hi - lo, 1e-12), 0.0, 1.0))[..., :3] * 255.0
    blend = ((1 - HEAT_ALPHA) * rgb + HEAT_ALPHA * heat + 0.5).astype(np.uint8)
    tiles = [rgb, blend, _mask_tile(gt), _mask_tile((amap >= threshold).astype(np.float32))]
    labels = ["image", f"map [{lo:.3g}, {hi:.3g}]", "ground truth", f"pred >= {threshold:.3g}"]

    top = PAD + LABEL_HEIGHT * (2 if title else 1)
    panel = Image.new("RGB", (4 * w + 5 * PAD, top + h + PAD), "white")
    draw = ImageDraw.Draw(panel)
    if title:
        draw.text((PAD, PAD), title, fill="black")
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x = PAD + i * (w + PAD)
        draw.text((x, top - LABEL_HEIGHT + 1), label, fill="black")
        panel.paste(Image.fromarray(tile), (x, top))
    return panel


def _save(img: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


def save_overlay(
    path: str | Path, image: Any, anomaly_map: Any, gt_mask: Any | None, threshold: float, **kwargs: Any
) -> Path:
    """Write ``overlay_panel(...)`` as a PNG file (local path; parents created); returns the path."""
    return _save(overlay_panel(image, anomaly_map, gt_mask, threshold, **kwargs), path)


def class_gallery(panels: Sequence[Image.Image], out_path: str | Path, *, title: str | None = None) -> Path:
    """Stack a class's panels top to bottom (optional title row) into one PNG; returns the path."""
    if not panels:
        raise ValueError(f"class_gallery needs at least one panel for {out_path}.")
    top = PAD + (LABEL_HEIGHT if title else 0)
    width = max(p.width for p in panels)
    height = top + sum(p.height for p in panels) + PAD * (len(panels) - 1) + PAD
    gallery = Image.new("RGB", (width, height), "white")
    if title:
        ImageDraw.Draw(gallery).text((PAD, PAD), title, fill="black")
    y = top
    for p in panels:
        gallery.paste(p, (0, y))
        y += p.height + PAD
    return _save(gallery, out_path)
