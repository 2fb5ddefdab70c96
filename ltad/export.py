"""The exported model: what `ltad predict` needs to score new images without Ray or DeepSpeed.

A model directory holds `weights.pt` (consolidated fp32 state of everything trained, loaded with
`weights_only=True`; the frozen encoder is rebuilt from the config), `config.yaml` (the resolved run
config) and `export.json` (class names, image size, the F1-adaptive image threshold, the score
normalisation and provenance). Normalised score: 0.5 at the threshold, 0 and 1 at the lowest and
highest test scores (clipped), so a decision is `normalised >= 0.5` whatever the raw scale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml

from ltad.config import LTADConfig
from ltad.errors import DataError
from ltad.models.ltad import LTAD
from ltad.models.state import build_model, load_trained, trained_state

WEIGHTS, CONFIG, META = "weights.pt", "config.yaml", "export.json"
FORMAT = "ltad-model/1"
Scores = TypeVar("Scores", np.ndarray, np.floating, torch.Tensor)


def normalise(scores: Scores, norm: dict[str, float]) -> Any:
    """Raw scores (or maps) -> [0, 1] with the threshold at 0.5 (see the module docstring)."""
    t, lo, hi = norm["threshold"], norm["min"], norm["max"]
    below = (scores - t) / max(t - lo, 1e-12) * 0.5 + 0.5
    above = (scores - t) / max(hi - t, 1e-12) * 0.5 + 0.5
    out = below * (scores < t) + above * (scores >= t)
    return out.clip(0.0, 1.0)


def write_export(
    out: Path,
    model: LTAD,
    cfg: LTADConfig,
    classes: list[str],
    scores: np.ndarray,
    threshold: float,
    provenance: dict,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trained_state(model), out / WEIGHTS)
    (out / CONFIG).write_text(cfg.to_yaml())
    meta = {
        "format": FORMAT,
        "classes": classes,
        "image_size": cfg.model.encoder.image_size,
        "normalisation": {
            "threshold": float(threshold),
            "min": float(scores.min()),
            "max": float(scores.max()),
        },
        "threshold_rule": "F1-max of the image score over the evaluation set",
        "provenance": {k: v for k, v in provenance.items() if k != "config"},
    }
    (out / META).write_text(json.dumps(meta, indent=2))
    return out


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
    model = build_model(cfg, len(meta["classes"]))
    load_trained(model, torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
    return model.to(device).eval(), meta
