"""`ltad calibrate`: new decision thresholds for an exported model from normal images only.

When a line changes, an inspection team scores normal images of it with `ltad.Predictor` (the
model's own scoring path, torch, ONNX or OpenVINO; images listed and read as `ltad predict` does), groups them
by the class the model predicts and applies the one rule of ltad/eval/calibration.py: per class the
threshold with its n and the false-positive rate it guarantees at 90 % confidence, classes with too
few normals marked uncovered with the bound they get, the pooled fallback weighted to the deployment
mix. The result is a NEW export: a copy of the model folder whose export.json carries the new
`calibration` (same fields as the training job writes, so `decide` and older readers use it) and a
`recalibrated` record (the normals, the model it came from, the calibration it replaced); in an ONNX
or OpenVINO copy the graph's decision tables are rewritten to match. It is
written to a temporary sibling folder and renamed into place; the model folder is never written.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltad.errors import ConfigError, DataError
from ltad.eval.calibration import calibrate
from ltad.inference.export import META, read_meta, retable, with_calibration
from ltad.inference.predict import find_images
from ltad.inference.predictor import Predictor, read_image
from ltad.log import get_logger

log = get_logger(__name__)


@dataclass
class NormalScores:
    """Raw scores and predicted classes of the readable normal images; the unreadable ones' errors."""

    files: list[Path] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pred_class: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def check_out(out: Path) -> None:
    """`out` must be absent or an empty folder: a recalibrated model is always a new export."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(
            f"--out '{out}' exists and is not empty; choose a new folder (the recalibrated model is a new "
            "export, the old one stays untouched)"
        )


def parse_mix(text: str | None, classes: list[str]) -> dict[str, float] | None:
    """`--mix a=2,b=1` as class -> weight (classes left out weigh 0); None (uniform) without it."""
    if not text:
        return None
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or weight < 0 or not np.isfinite(weight):
            raise ConfigError(f"--mix must be CLASS=WEIGHT[,CLASS=WEIGHT...] with weights >= 0, got {part!r}")
        if name not in classes:
            raise ConfigError(
                f"--mix names class {name!r}, which the model does not have ({', '.join(classes)})"
            )
        mix[name] = weight
    if sum(mix.values()) <= 0:
        raise ConfigError(f"--mix gives no weight to any class: {text!r}")
    return mix


def score_normals(predictor: Predictor, normals: str) -> NormalScores:
    """Score every image of a folder or glob (`find_images`), `batch_size` at a time; an unreadable
    image is recorded and skipped."""
    files, _ = find_images(normals, "--normals")
    got = NormalScores()
    for start in range(0, len(files), predictor.batch_size):
        batch: list[tuple[Path, np.ndarray]] = []
        for path in files[start : start + predictor.batch_size]:
            try:
                batch.append((path, np.asarray(read_image(path))))
            except DataError as exc:
                got.unreadable.append((str(path), str(exc)))
                log.warning("skipped %s", exc)
        if batch:
            result = predictor.predict_rgb([rgb for _, rgb in batch])
            got.files += [p for p, _ in batch]
            got.scores += [float(s) for s in result.scores]
            got.pred_class += result.pred_class
    if not got.scores:
        first = got.unreadable[0][1] if got.unreadable else "no images"
        raise DataError(f"none of the {len(files)} normal images of --normals could be read ({first})")
    return got


def recalibrate(
    model_dir: str | Path,
    normals: str,
    out: str | Path,
    target_fpr: float,
    *,
    mix: Mapping[str, float] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    source: dict[str, str] | None = None,
) -> tuple[dict[str, Any], NormalScores]:
    """Write a copy of the export at `model_dir` to `out` with thresholds calibrated on the normal
    images `normals` (a folder or glob) at `target_fpr`; returns (its export.json, the scores).
    `source` names the model and normals as the user gave them (for the `recalibrated` record)."""
    if not 0 < target_fpr <= 0.5:
        raise ConfigError(f"--target-fpr must be a number in (0, 0.5], got {target_fpr:g}")
    model_dir, out = Path(model_dir), Path(out)
    check_out(out)
    meta = read_meta(model_dir)
    classes = list(meta["classes"])
    find_images(normals, "--normals")  # before loading the model
    predictor = Predictor.load(model_dir, device=device, batch_size=batch_size)
    got = score_normals(predictor, normals)
    ids = np.array([classes.index(c) for c in got.pred_class], dtype=np.int64)
    try:
        calibration = calibrate(np.array(got.scores), ids, classes, target_fpr, mix=mix)
    except ValueError as exc:  # a mix whose classes got none of the normals
        raise ConfigError(
            f"--mix: {exc} (classes predicted for the normals: {sorted(set(got.pred_class))})"
        ) from None
    assert calibration is not None  # score_normals returns at least one score
    previous = meta.get("calibration")
    new = with_calibration(meta, calibration)
    new["recalibrated"] = {
        "command": "ltad calibrate",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "model": (source or {}).get("model", str(model_dir.resolve())),
        "normals": (source or {}).get("normals", normals),
        "n_images": len(got.scores),
        "n_unreadable": len(got.unreadable),
        "mix": "uniform over classes" if mix is None else dict(mix),
        "previous_calibration": None
        if not previous
        else {k: previous.get(k) for k in ("rule", "target_fpr", "n_heldout", "pooled_threshold")},
    }
    _write_copy(model_dir, out, new)
    return new, got


def _write_copy(model_dir: Path, out: Path, meta: dict[str, Any]) -> None:
    """Copy `model_dir` with `meta` as its export.json to `out` (temporary sibling + rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.part-", dir=out.parent))
    try:
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        retable(tmp, meta)  # an ONNX or OpenVINO graph decides by the new thresholds too
        (tmp / META).write_text(json.dumps(meta, indent=2))
        read_meta(tmp)  # the copy is a complete export
        if out.exists():
            out.rmdir()  # empty (checked)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
