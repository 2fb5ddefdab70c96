"""The deployed graph of an ONNX or OpenVINO export: written, checked against torch, and recalibrated.

The graph is `ltad.models.scoring.DeployGraph`: uint8 RGB images `N x S x S x 3` (S = export.json
`image_size`; the caller resizes, `ltad predict` with PIL's bilinear `Image.resize`) in, and out the
anomaly maps, scores, predicted classes and the per-class decision (threshold, normalised score,
anomalous or not) with the export's thresholds as per-class tables. So onnxruntime, OpenVINO or any
other runtime scores and decides with nothing around it. `ltad export --format onnx` traces it into
`model.onnx`; `--format openvino` converts that file to OpenVINO IR (`model.xml` + `model.bin`, fp32
weights) with `openvino.Core.read_model` (the runtime's ONNX reader: `openvino.convert_model` would send
usage telemetry). Each format is checked on a batch of random images against the torch graph it came
from and refused when its maps differ by more than `PARITY_TOLERANCE` or its classes or clear
decisions differ. `ltad calibrate` rewrites the three decision tables (`DECISION_TABLES`) in its copy.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltad.errors import ConfigError, DataError
from ltad.log import get_logger
from ltad.models.ltad import LTAD
from ltad.models.scoring import DECISION_TABLES, DEPLOY_INPUT, DEPLOY_OUTPUTS, DeployGraph, ScoringGraph

ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4
"""Largest |runtime - torch| of the anomaly maps an ONNX or OpenVINO export may show on its check batch."""
ONNX_MODEL, OV_MODEL, OV_WEIGHTS = "model.onnx", "model.xml", "model.bin"
OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
"""OpenVINO compile settings: fp32 everywhere (the CPU plugin would otherwise pick bf16 where the CPU has it)."""
SPAN_FLOOR = 1e-12  # as ltad.eval.normalise.normalise
OUTPUT_DOCS = {
    "anomaly_map": "float32 N x S x S, raw patch scores upsampled and blurred (the evaluation's maps)",
    "pred_score": "float32 N, the raw image score",
    "pred_class": "int64 N, the predicted class: an index into export.json `classes`",
    "pred_score_normalised": "float32 N in [0, 1], 0.5 at the predicted class's threshold",
    "threshold": "float32 N, the predicted class's decision threshold (raw scale)",
    "pred_anomalous": "bool N, pred_score >= threshold: the decision",
    "anomaly_map_normalised": "float32 N x S x S in [0, 1], the map on the predicted class's scale",
}
log = get_logger(__name__)


def decision_tables(norms: list[dict[str, float]]) -> dict[str, np.ndarray]:
    """The graph's per-class tables from each class's normalisation (threshold, min, max; in class
    order). Thresholds are rounded up to float32, so `score >= threshold` on a float32 score decides
    exactly as `ltad.inference.export.decide` does on the same score in float64."""
    t = np.array([n["threshold"] for n in norms], dtype=np.float64)
    t32 = t.astype(np.float32)
    t32 = np.where(t32.astype(np.float64) < t, np.nextafter(t32, np.float32(np.inf)), t32)
    lo = np.array([n["min"] for n in norms], dtype=np.float64)
    hi = np.array([n["max"] for n in norms], dtype=np.float64)
    below = np.maximum(t - lo, SPAN_FLOOR).astype(np.float32)
    above = np.maximum(hi - t, SPAN_FLOOR).astype(np.float32)
    return dict(zip(DECISION_TABLES, (t32.astype(np.float32), below, above)))


def deploy_graph(model: LTAD, norms: list[dict[str, float]]) -> DeployGraph:
    """The torch module an ONNX export traces: `model`'s scoring path with the decision tables."""
    try:
        scoring = ScoringGraph(model.cpu())
    except RuntimeError as exc:
        raise DataError(f"cannot export this model: {exc}") from None
    tables = [torch.from_numpy(a) for a in decision_tables(norms).values()]
    return DeployGraph(scoring, *tables).eval()


def check_batch(size: int, batch: int = 2) -> np.ndarray:
    """The random uint8 images (seed 0) every export is checked on."""
    return np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def describe(size: int) -> dict[str, Any]:
    """export.json's description of the graph's input and outputs."""
    return {
        "input": {
            "name": DEPLOY_INPUT,
            "dtype": "uint8",
            "shape": ["batch", size, size, 3],
            "layout": "NHWC, RGB, 0-255; resize each image to image_size x image_size first "
            "(ltad predict: PIL Image.resize, bilinear); /255 and the encoder's mean/std are inside",
        },
        "outputs": [{"name": name, "value": OUTPUT_DOCS[name]} for name in DEPLOY_OUTPUTS],
    }


def write_onnx(graph: DeployGraph, path: Path) -> None:
    """Trace `graph` into `path` (dynamic batch axis)."""
    example = torch.from_numpy(check_batch(graph.size))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused transformer kernel has no ONNX form
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                dynamo=False,
                input_names=[DEPLOY_INPUT],
                output_names=list(DEPLOY_OUTPUTS),
                dynamic_axes={name: {0: "batch"} for name in (DEPLOY_INPUT, *DEPLOY_OUTPUTS)},
                opset_version=ONNX_OPSET,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def torch_outputs(graph: DeployGraph, images: np.ndarray) -> dict[str, np.ndarray]:
    """`graph`'s outputs on `images` by name."""
    with torch.no_grad():
        out = graph(torch.from_numpy(images))
    return {name: t.numpy() for name, t in zip(DEPLOY_OUTPUTS, out)}


def compare(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], runtime: str) -> dict[str, Any]:
    """export.json's `check` of a runtime's outputs against torch's; a DataError when they differ."""
    diff = float(np.abs(got["anomaly_map"] - expected["anomaly_map"]).max())
    score_diff = float(np.abs(got["pred_score"] - expected["pred_score"]).max())
    clear = np.abs(expected["pred_score"] - expected["threshold"]) > PARITY_TOLERANCE
    same_decisions = bool((got["pred_anomalous"] == expected["pred_anomalous"])[clear].all())
    if diff > PARITY_TOLERANCE or not np.array_equal(got["pred_class"], expected["pred_class"]):
        raise DataError(
            f"the {runtime} export differs from the torch model by {diff:.3g} (limit {PARITY_TOLERANCE}) "
            "or in the predicted classes"
        )
    if not same_decisions:
        raise DataError(f"the {runtime} export decides differently from the torch model")
    return {
        "images": len(got["pred_score"]),
        "max_abs_map_diff": diff,
        "max_abs_score_diff": score_diff,
        "runtime": runtime,
    }


def check_onnx(path: Path, expected: dict[str, np.ndarray], images: np.ndarray) -> dict[str, Any] | None:
    """Run `path` with onnxruntime on `images` and compare; None (with a warning) without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed: the ONNX export was not checked against torch")
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = dict(zip(DEPLOY_OUTPUTS, session.run(list(DEPLOY_OUTPUTS), {DEPLOY_INPUT: images})))
    return compare(got, expected, f"onnxruntime {onnxruntime.__version__}")


def openvino() -> Any:
    """The openvino module, or one ConfigError naming the extra."""
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError(
            "OpenVINO models need the 'openvino' extra (openvino is not installed): pip install 'ltad[openvino]'"
        ) from None
    return ov


def write_openvino(onnx_path: Path, xml_path: Path) -> None:
    """Convert the ONNX graph at `onnx_path` to OpenVINO IR at `xml_path` (+ .bin), weights in fp32."""
    ov = openvino()
    ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)


def compile_openvino(xml_path: Path) -> Any:
    """The IR at `xml_path` compiled for the CPU in fp32."""
    ov = openvino()
    return ov.Core().compile_model(str(xml_path), "CPU", OV_CONFIG)


def run_openvino(compiled: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    """A compiled IR's outputs on `images` by name."""
    result = compiled({DEPLOY_INPUT: images})
    return {name: np.asarray(result[compiled.output(name)]) for name in DEPLOY_OUTPUTS}


def check_openvino(xml_path: Path, expected: dict[str, np.ndarray], images: np.ndarray) -> dict[str, Any]:
    """Run the IR at `xml_path` with OpenVINO on `images` and compare with torch."""
    got = run_openvino(compile_openvino(xml_path), images)
    return compare(got, expected, f"openvino {openvino().get_version()}")


def set_onnx_tables(path: Path, tables: dict[str, np.ndarray]) -> None:
    """Rewrite the decision tables of the ONNX graph at `path` in place (temp file + rename)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    found = {init.name: init for init in model.graph.initializer if init.name in tables}
    missing = sorted(set(tables) - set(found))
    if missing:
        raise DataError(f"'{path}' has no decision tables {', '.join(missing)}: export the model again")
    for name, init in found.items():
        init.CopyFrom(numpy_helper.from_array(tables[name].astype(np.float32), name))
    tmp = path.with_name(f".{path.name}.part")
    onnx.save(model, str(tmp))
    tmp.replace(path)


def set_openvino_tables(xml_path: Path, tables: dict[str, np.ndarray]) -> None:
    """Rewrite the decision tables of the IR at `xml_path` in place (written beside, then renamed)."""
    ov = openvino()
    from openvino import opset13

    model = ov.Core().read_model(str(xml_path))
    done = set()
    for op in model.get_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "Constant" and name in tables:
            new = opset13.constant(tables[name].astype(np.float32))
            new.set_friendly_name(name)
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(new.output(0))
            done.add(name)
    missing = sorted(set(tables) - done)
    if missing:
        raise DataError(f"'{xml_path}' has no decision tables {', '.join(missing)}: export the model again")
    tmp = xml_path.with_name(f".{xml_path.stem}.part.xml")
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").replace(xml_path.with_suffix(".bin"))
    tmp.replace(xml_path)
