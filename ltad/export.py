"""The exported model: what `ltad predict` needs to score new images without Ray or DeepSpeed.

A model directory holds `weights.pt` (consolidated fp32 state of everything trained, loaded with
`weights_only=True`; the frozen encoder is rebuilt from the config), `config.yaml` (the resolved run
config) and `export.json` (class names, image size, the decision thresholds and how they were calibrated, the
score normalisation and provenance). When the encoder's weights are a checkpoint file or an s3:// object,
the directory also holds a copy, `encoder.<suffix>`, named in `export.json` `encoder_weights` with its
sha256 and source, so the folder predicts on a machine that has neither the file nor the bucket
('bundled' and 'none' need nothing: the wheel and the seed rebuild them; a hub tag needs the hub).
Older exports without `encoder_weights` keep using the configured path.

Thresholds (`calibration` in export.json, ltad/eval/calibration.py): one per class, calibrated on
held-out normal training images at `eval.target_fpr`, never on test labels; an image is anomalous when
its raw score >= the threshold of the class the model predicts for it (`decide`). Normalised score:
0.5 at that class's threshold, 0 at the lowest held-out normal score and 1 as far above the threshold
(clipped), so a decision is also `normalised >= 0.5` whatever the raw scale. Exports without
`calibration` (older ones, or data prepared without a validation split) keep one global threshold.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml

from ltad.config import LTADConfig
from ltad.data import blobs
from ltad.errors import DataError, UserError
from ltad.models.ltad import LTAD
from ltad.models.state import build_model, load_trained, trained_state

WEIGHTS, CONFIG, META = "weights.pt", "config.yaml", "export.json"
ENCODER = "encoder"
"""Stem of the copy of the encoder's checkpoint file (the suffix is the source's)."""
FORMAT = "ltad-model/1"
Scores = TypeVar("Scores", np.ndarray, np.floating, torch.Tensor)


def normalise(scores: Scores, norm: dict[str, float]) -> Any:
    """Raw scores (or maps) -> [0, 1] with the threshold at 0.5 (see the module docstring)."""
    t, lo, hi = norm["threshold"], norm["min"], norm["max"]
    below = (scores - t) / max(t - lo, 1e-12) * 0.5 + 0.5
    above = (scores - t) / max(hi - t, 1e-12) * 0.5 + 0.5
    out = below * (scores < t) + above * (scores >= t)
    return out.clip(0.0, 1.0)


def class_normalisation(meta: dict[str, Any], pred_class: str | int) -> dict[str, float]:
    """The normalisation of an image predicted as `pred_class` (a name or a class id): its class's
    threshold at 0.5 when the export is calibrated, else the export's global one."""
    calibration = meta.get("calibration")
    if not calibration:
        return meta["normalisation"]
    name = meta["classes"][pred_class] if isinstance(pred_class, int) else pred_class
    return calibration["per_class"][name]["normalisation"]


def decide(meta: dict[str, Any], raw_score: float, pred_class: str | int) -> bool:
    """Whether an image is anomalous: its raw score >= the threshold of its predicted class."""
    return bool(raw_score >= class_normalisation(meta, pred_class)["threshold"])


def _calibrated(calibration: dict[str, Any]) -> dict[str, Any]:
    """The calibration record with each class's normalisation (0 at the lowest held-out score,
    0.5 at the class threshold, 1 as far above it)."""
    low = calibration["low"]
    per_class = {}
    for name, row in calibration["per_class"].items():
        t = row["threshold"]
        per_class[name] = {**row, "normalisation": {"threshold": t, "min": low, "max": t + (t - low)}}
    return {**calibration, "per_class": per_class}


def write_export(
    out: Path,
    model: LTAD,
    cfg: LTADConfig,
    classes: list[str],
    scores: np.ndarray,
    threshold: float,
    provenance: dict,
    calibration: dict[str, Any] | None = None,
) -> Path:
    """Write the model directory. With `calibration` (ltad/eval/calibration.py) decisions use its
    per-class thresholds; without it, `threshold` with min/max of `scores` (the uncalibrated fallback)."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trained_state(model), out / WEIGHTS)
    (out / CONFIG).write_text(cfg.to_yaml())
    meta: dict[str, Any] = {
        "format": FORMAT,
        "classes": classes,
        "image_size": cfg.model.encoder.image_size,
        "normalisation": {
            "threshold": float(threshold),
            "min": float(scores.min()),
            "max": float(scores.max()),
        },
        "threshold_rule": "F1-max of the image score over the evaluation set (uncalibrated: no held-out "
        "normal images)",
        "provenance": {k: v for k, v in provenance.items() if k != "config"},
    }
    if calibration is not None:
        meta["calibration"] = _calibrated(calibration)
        pooled, low = calibration["pooled_threshold"], calibration["low"]
        meta["normalisation"] = {"threshold": pooled, "min": low, "max": pooled + (pooled - low)}
        meta["threshold_rule"] = f"{calibration['rule']} (target_fpr {calibration['target_fpr']:g})"
    encoder = model.encoder.weights
    if encoder.file is not None:
        meta["encoder_weights"] = _copy_encoder(out, encoder.file, encoder.sha256, encoder.source)
    (out / META).write_text(json.dumps(meta, indent=2))
    return out


def _copy_encoder(out: Path, file: str, sha256: str | None, source: str) -> dict[str, str]:
    """Copy the encoder checkpoint into the export (temp name + rename); its export.json record."""
    name = ENCODER + (Path(file).suffix or ".pt")
    tmp = out / f".{name}.part"
    shutil.copyfile(file, tmp)
    os.replace(tmp, out / name)
    return {"file": name, "sha256": sha256 or blobs.file_sha256(out / name), "source": source}


def _encoder_file(directory: Path, record: dict[str, str]) -> str:
    """The export's encoder checkpoint, checked against its sha256; without the copy, its source
    (a path or s3:// URI) when that still has the same content."""
    local = directory / record["file"]
    where = local if local.is_file() else record["source"]
    try:
        found = blobs.resolve(str(where))
    except UserError as exc:
        raise DataError(
            f"'{directory}' lacks its encoder weights {record['file']} and their source is unusable: {exc}"
        ) from None
    if found.sha256 != record["sha256"]:
        raise DataError(
            f"encoder weights {where} of '{directory}' are corrupt or changed: sha256 "
            f"{found.sha256[:16]}..., export.json says {record['sha256'][:16]}..."
        )
    return str(found.path)


def load_export(directory: str | Path, device: str | torch.device = "cpu") -> tuple[LTAD, dict[str, Any]]:
    """(model in eval mode, export.json) of an exported model directory; clear errors for a bad one."""
    directory = Path(directory)
    missing = [n for n in (WEIGHTS, CONFIG, META) if not (directory / n).is_file()]
    if missing:
        raise DataError(f"'{directory}' is not an exported ltad model: {', '.join(missing)} missing")
    meta = json.loads((directory / META).read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"'{directory / META}' has format {meta.get('format')!r}, expected {FORMAT!r}")
    cfg = LTADConfig.from_dict(yaml.safe_load((directory / CONFIG).read_text()))
    if meta.get("encoder_weights"):
        encoder = dataclasses.replace(
            cfg.model.encoder, pretrained=_encoder_file(directory, meta["encoder_weights"])
        )
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=encoder))
    model = build_model(cfg, len(meta["classes"]))
    load_trained(model, torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
    return model.to(device).eval(), meta
