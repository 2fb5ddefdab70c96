"""`ltad.Predictor`: score images with an exported model (torch, ONNX or OpenVINO), without Ray, DeepSpeed or S3.

    from ltad import Predictor
    p = Predictor.load("runs/demo/model")          # or an `ltad export --format onnx` folder
    result = p.predict(["a.png", pil_image, uint8_array])
    result.scores, result.scores_normalised, result.maps, result.decisions, result.pred_class

Every format runs the same scoring path (`ltad.models.scoring.ScoringGraph`; ONNX and OpenVINO: that
graph traced inside `DeployGraph`) on the same input: `resize_rgb` resizes every image to the model's
square size (PIL bilinear, as the evaluation stream decodes) as uint8, which the ONNX and OpenVINO
graphs take as it is and the torch runner scales to [0, 1] exactly as they do. Maps come back at each
image's own size. `ltad predict` (ltad/inference/predict.py) is this class over a folder. The decision
is `ltad.inference.export.decide`: raw score >= the calibrated threshold of the predicted class (0.5 on
that class's normalised scale); an ONNX or OpenVINO graph makes it itself (its `pred_anomalous` and
`pred_score_normalised` outputs are taken as they are), a torch export in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ltad.errors import ConfigError, DataError
from ltad.inference import graphs
from ltad.inference.export import (
    FORMAT,
    FORMATS,
    ONNX_FORMAT_V1,
    ONNX_MODEL,
    OPENVINO_FORMAT,
    OV_MODEL,
    class_normalisation,
    decide,
    load_export,
    normalise,
    read_meta,
)
from ltad.models.scoring import DEPLOY_INPUT, DEPLOY_OUTPUTS, ScoringGraph

ImageInput = str | Path | Image.Image | np.ndarray
FORMAT_NAMES = {v: k for k, v in FORMATS.items()}


def check_device(device: str) -> torch.device:
    """`device` as a torch device that exists here, else one ConfigError sentence naming --device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device '{device}' is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device '{device}': CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device '{device}': this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ConfigError(f"--device '{device}': only cpu and cuda[:N] are supported")
    return dev


def read_image(path: str | Path) -> Image.Image:
    """The RGB image at `path`; a DataError naming the file when it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image '{path}': {exc or type(exc).__name__}") from None


def as_rgb(image: ImageInput) -> np.ndarray:
    """H x W x 3 uint8 of a path, a PIL image or an array (H x W grey or H x W x 3 uint8)."""
    if isinstance(image, (str, Path)):
        return np.asarray(read_image(image))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise DataError(f"an image array must be H x W x 3 (or H x W) uint8, got {arr.shape} {arr.dtype}")
    return np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """H x W x 3 uint8 -> size x size x 3 uint8 (PIL bilinear): the input every format scores."""
    if rgb.shape[:2] == (size, size):
        return np.ascontiguousarray(rgb)
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))


def to_unit(batch: np.ndarray) -> torch.Tensor:
    """N x S x S x 3 uint8 -> N x 3 x S x S float32 in [0, 1], as the deployed graph scales its input."""
    return torch.from_numpy(batch).permute(0, 3, 1, 2).to(torch.float32) / 255.0


@dataclass
class Prediction:
    """Per image (in input order): raw image scores, normalised scores (0.5 = threshold), the
    decisions, predicted class names, and the anomaly maps at each image's own size (raw scale and
    normalised)."""

    scores: np.ndarray  # N float64, raw
    scores_normalised: np.ndarray  # N float64 in [0, 1]
    decisions: np.ndarray  # N bool, True = anomalous
    pred_class: list[str]
    maps: list[np.ndarray]  # H_i x W_i float32, raw scale
    maps_normalised: list[np.ndarray]  # H_i x W_i float32 in [0, 1]

    def __len__(self) -> int:
        return len(self.scores)


Outputs = dict[str, np.ndarray]
"""A runner's outputs by `DEPLOY_OUTPUTS` name: at least the maps, scores and classes."""


class _TorchRunner:
    def __init__(self, directory: Path, device: torch.device) -> None:
        model, _ = load_export(directory, device)
        try:
            self.graph = ScoringGraph(model)
        except RuntimeError as exc:
            raise DataError(f"'{directory}' holds an unusable model: {exc}") from None
        self.device = device

    def __call__(self, batch: np.ndarray) -> Outputs:
        with torch.no_grad():
            maps, scores, cls = self.graph(to_unit(batch).to(self.device))
        return {
            "anomaly_map": maps.float().cpu().numpy(),
            "pred_score": scores.double().cpu().numpy(),
            "pred_class": cls.cpu().numpy(),
        }


class _OnnxRunner:
    def __init__(self, directory: Path, device: torch.device, legacy: bool = False) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(
                f"'{directory}' is an ONNX model but onnxruntime is not installed (pip install onnxruntime)"
            ) from None
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise ConfigError(
                    f"--device '{device}': this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
                )
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = onnxruntime.InferenceSession(str(directory / ONNX_MODEL), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise DataError(f"'{directory / ONNX_MODEL}' is not a loadable ONNX model: {exc}") from None
        self.legacy = legacy  # ltad-onnx/1: float N x 3 x S x S input, maps, scores and classes out

    def __call__(self, batch: np.ndarray) -> Outputs:
        if self.legacy:
            maps, scores, cls = self.session.run(None, {"images": to_unit(batch).numpy()})
            return {"anomaly_map": maps, "pred_score": scores.astype(np.float64), "pred_class": cls}
        return dict(zip(DEPLOY_OUTPUTS, self.session.run(list(DEPLOY_OUTPUTS), {DEPLOY_INPUT: batch})))


class _OpenVinoRunner:
    def __init__(self, directory: Path, device: torch.device) -> None:
        if device.type != "cpu":
            raise ConfigError(f"--device '{device}': ltad runs OpenVINO models on the CPU; use --device cpu")
        try:
            self.compiled = graphs.compile_openvino(directory / OV_MODEL)
        except RuntimeError as exc:  # OpenVINO's errors for an unreadable or inconsistent IR
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"'{directory / OV_MODEL}' is not a loadable OpenVINO model: {first}") from None

    def __call__(self, batch: np.ndarray) -> Outputs:
        return graphs.run_openvino(self.compiled, batch)


class Predictor:
    """An exported model ready to score images; see the module docstring."""

    def __init__(self, runner: Any, meta: dict[str, Any], batch_size: int = 8) -> None:
        self.runner, self.meta, self.batch_size = runner, meta, batch_size
        self.classes: list[str] = list(meta["classes"])
        self.image_size: int = int(meta["image_size"])
        self.format = "onnx" if meta["format"] == ONNX_FORMAT_V1 else FORMAT_NAMES[meta["format"]]

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu", batch_size: int = 8) -> Predictor:
        """The torch, ONNX or OpenVINO export at `directory` (a local folder) on `device` (cpu, cuda, cuda:N)."""
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be an int >= 1, got {batch_size}")
        directory = Path(directory)
        dev = check_device(device)
        meta = read_meta(directory)
        fmt = meta["format"]
        runner: Any
        if fmt == FORMAT:
            runner = _TorchRunner(directory, dev)
        elif fmt == OPENVINO_FORMAT:
            runner = _OpenVinoRunner(directory, dev)
        else:
            runner = _OnnxRunner(directory, dev, legacy=fmt == ONNX_FORMAT_V1)
        return cls(runner, meta, batch_size)

    def decide(self, raw_score: float, pred_class: str) -> bool:
        return decide(self.meta, raw_score, pred_class)

    def predict(self, images: Iterable[ImageInput]) -> Prediction:
        """Score `images` (paths, PIL images or uint8 arrays), `batch_size` at a time."""
        rgbs = [as_rgb(im) for im in images]
        parts = [
            self.predict_rgb(rgbs[i : i + self.batch_size]) for i in range(0, len(rgbs), self.batch_size)
        ]
        if not parts:
            return Prediction(np.zeros(0), np.zeros(0), np.zeros(0, bool), [], [], [])
        return Prediction(
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.scores_normalised for p in parts]),
            np.concatenate([p.decisions for p in parts]),
            [c for p in parts for c in p.pred_class],
            [m for p in parts for m in p.maps],
            [m for p in parts for m in p.maps_normalised],
        )

    def predict_rgb(self, rgbs: Sequence[np.ndarray]) -> Prediction:
        """One forward pass over H x W x 3 uint8 images (any sizes)."""
        out = self.runner(np.stack([resize_rgb(rgb, self.image_size) for rgb in rgbs]))
        maps, scores = out["anomaly_map"], out["pred_score"].astype(np.float64)
        names = [self.classes[int(c)] for c in out["pred_class"]]
        # each image on its predicted class's scale: 0.5 at that class's calibrated threshold
        norms = [class_normalisation(self.meta, name) for name in names]
        own = [_resize_map(maps[i], rgb.shape[:2]) for i, rgb in enumerate(rgbs)]
        if "pred_anomalous" in out:  # a deployed graph decided itself
            decisions = out["pred_anomalous"].astype(bool)
            normalised = out["pred_score_normalised"].astype(np.float64)
        else:
            decisions = np.array([self.decide(float(s), c) for s, c in zip(scores, names)], dtype=bool)
            normalised = np.array([float(normalise(np.float64(s), n)) for s, n in zip(scores, norms)])
        return Prediction(
            scores=scores,
            scores_normalised=normalised,
            decisions=decisions,
            pred_class=names,
            maps=own,
            maps_normalised=[np.asarray(normalise(m, n), dtype=np.float32) for m, n in zip(own, norms)],
        )


def _resize_map(amap: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A model-resolution map at an image's own H x W (bilinear, as the evaluation upsamples)."""
    if tuple(amap.shape) == tuple(shape[:2]):
        return amap.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(amap, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape[:2]), mode="bilinear", align_corners=False)[0, 0].numpy()
