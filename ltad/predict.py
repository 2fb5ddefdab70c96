"""`ltad predict`: score new images with an exported model, without Ray, DeepSpeed or S3.

Writes, under the output directory, `maps/<name>.png` (the normalised anomaly map at the image's own
size, 0..255 with its predicted class's decision threshold at 128), `overlays/<name>.png` (image | map | empty ground
truth | prediction) and `scores.csv` (path, raw score, normalised score, decision, predicted class).
The decision is `ltad.export.decide`: raw score >= the calibrated threshold of the predicted class.
"""

from __future__ import annotations

import csv
import glob
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ltad.errors import DataError
from ltad.eval.visualize import save_overlay
from ltad.export import class_normalisation, decide, load_export, normalise

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def find_images(images: str) -> tuple[list[Path], Path | None]:
    """Image files of a directory (recursive) or a glob, sorted; plus the directory they are named from."""
    path = Path(images)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        root = path
    else:
        files = sorted(
            Path(p) for p in glob.glob(images, recursive=True) if Path(p).suffix.lower() in SUFFIXES
        )
        root = None
    if not files:
        raise DataError(f"--images '{images}' matches no image files ({', '.join(SUFFIXES)})")
    return files, root


def _name(path: Path, root: Path | None) -> str:
    rel = path.relative_to(root) if root is not None else Path(path.name)
    return "__".join(rel.with_suffix("").parts)


def _load(path: Path, size: int) -> tuple[np.ndarray, torch.Tensor]:
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except OSError as exc:
        raise DataError(f"cannot read image '{path}': {exc or type(exc).__name__}") from None
    resized = rgb.resize((size, size), Image.Resampling.BILINEAR)  # as the evaluation stream decodes
    tensor = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return np.asarray(rgb), tensor


def predict(model_dir: str, images: str, out: str, *, batch_size: int = 8, device: str = "cpu") -> list[dict]:
    """Score every image; returns the CSV rows (also written to `out/scores.csv`)."""
    files, root = find_images(images)
    model, meta = load_export(model_dir, device)
    size, classes = meta["image_size"], meta["classes"]
    out_dir = Path(out)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        loaded = [_load(p, size) for p in chunk]
        x = torch.stack([t for _, t in loaded]).to(device)
        enc = model.encoder.encode_images(x)
        result = model.score(enc.patches, enc.global_emb, (size, size))
        for i, path in enumerate(chunk):
            rgb = loaded[i][0]
            raw = float(result.pred_score[i])
            pred_class = classes[int(result.pred_class[i])]
            norm = class_normalisation(meta, pred_class)
            amap = F.interpolate(
                result.anomaly_map[i][None, None].float(), size=rgb.shape[:2], mode="bilinear"
            )[0, 0]
            nmap = normalise(amap.cpu().numpy(), norm)
            name = _name(path, root)
            Image.fromarray(np.round(nmap * 255).astype(np.uint8), mode="L").save(
                out_dir / "maps" / f"{name}.png"
            )
            save_overlay(
                out_dir / "overlays" / f"{name}.png", rgb, nmap, None, 0.5, value_range=(0.0, 1.0), title=name
            )
            score = float(normalise(np.float64(raw), norm))
            rows.append(
                {
                    "path": str(path),
                    "score": raw,
                    "score_normalised": score,
                    "anomalous": int(decide(meta, raw, pred_class)),
                    "pred_class": pred_class,
                }
            )
    with (out_dir / "scores.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows
