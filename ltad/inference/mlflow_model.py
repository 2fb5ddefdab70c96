"""An export as an MLflow pyfunc model, so the MLflow registry and `mlflow models serve` can carry it.

The pyfunc folder holds the export itself (artifact `ltad_model`) and `LtadPyfunc`, which loads it with
`Predictor` and scores with `Predictor.predict`, the scorer of `ltad predict`: the same scores. Input:

- in Python, a list of images: paths (str or Path), encoded bytes, PIL images or H x W x 3 uint8 arrays;
- a pandas DataFrame (what `mlflow models serve` makes of `{"dataframe_records": [...]}`) with a column
  `image` (base64 of the encoded image, or bytes) or `path` (a file where the model runs).

Output: a DataFrame, one row per image: `score`, `score_normalised`, `anomalous`, `pred_class`,
`threshold`, `threshold_source` (the JSON of `ltad serve` without the map). mlflow-skinny suffices to
save, log, load and serve it (no full mlflow). The model's environment lists ltad's core requirements;
ltad itself must be installed where the model is loaded (`--env-manager local` in ltad's environment).
"""

from __future__ import annotations

import base64
import io
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.pyfunc import PythonModel
from PIL import Image

from ltad.errors import DataError
from ltad.inference.export import threshold_of

ARTIFACT = "ltad_model"
ARTIFACT_PATH = "ltad-model"
"""Where a run logs the pyfunc model: `runs:/<run id>/ltad-model`."""
COLUMNS = ("score", "score_normalised", "anomalous", "pred_class", "threshold", "threshold_source")


class LtadPyfunc(PythonModel):
    """`Predictor` over the export in the model's artifacts; see the module docstring."""

    def load_context(self, context):  # untyped: MLflow reads type hints of these methods as a schema
        from ltad.inference.predictor import Predictor

        self.predictor = Predictor.load(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        result = self.predictor.predict(images_of(model_input))
        meta = self.predictor.meta
        rows = []
        for i in range(len(result)):
            threshold, source = threshold_of(meta, result.pred_class[i])
            rows.append(
                (
                    float(result.scores[i]),
                    float(result.scores_normalised[i]),
                    bool(result.decisions[i]),
                    result.pred_class[i],
                    threshold,
                    source,
                )
            )
        return pd.DataFrame(rows, columns=list(COLUMNS))


def images_of(model_input: Any) -> list[Any]:
    """The images of a pyfunc input (see the module docstring), each as `Predictor.predict` takes it."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "image" in model_input.columns:
            return [_decode(v, f"row {i} of column 'image'") for i, v in enumerate(model_input["image"])]
        if "path" in model_input.columns:
            return [str(v) for v in model_input["path"]]
        raise DataError(
            f"the input DataFrame needs a column 'image' (base64) or 'path', got {list(model_input.columns)}"
        )
    if isinstance(model_input, (str, Path, bytes, Image.Image)) or (
        isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8
    ):
        model_input = [model_input]
    return [_decode(v, f"input {i}") if isinstance(v, bytes) else v for i, v in enumerate(model_input)]


def _decode(value: Any, where: str) -> Image.Image:
    """Encoded image bytes (or their base64 text) as an RGB PIL image; a DataError naming `where`."""
    try:
        data = value if isinstance(value, bytes) else base64.b64decode(str(value), validate=True)
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise DataError(f"{where} is not an encoded image (base64 of a PNG, JPEG, ... expected)") from None


def requirements() -> list[str]:
    """ltad's core requirements (its extras left out) and mlflow-skinny: the pyfunc's pip environment."""
    try:
        core = [r for r in metadata.requires("ltad") or [] if "extra ==" not in r]
    except metadata.PackageNotFoundError:
        core = []
    return [*core, f"mlflow-skinny=={metadata.version('mlflow-skinny')}"]


def save_pyfunc(export_dir: str | Path, path: str | Path) -> Path:
    """Write the pyfunc model of the export at `export_dir` (a local ltad-model/1 or ltad-onnx/1 folder)
    to the new folder `path`."""
    from ltad.inference.export import read_meta

    read_meta(export_dir)  # a clear error for a folder that is not an export
    mlflow.pyfunc.save_model(
        str(path),
        python_model=LtadPyfunc(),
        artifacts={ARTIFACT: str(export_dir)},
        pip_requirements=requirements(),
    )
    return Path(path)


def log_pyfunc(client: Any, run_id: str, export_dir: str | Path) -> str:
    """Log the export as a pyfunc model under the run (`MlflowClient`); returns its `runs:/` URI."""
    with tempfile.TemporaryDirectory(prefix="ltad-pyfunc-") as tmp:
        local = save_pyfunc(export_dir, Path(tmp) / ARTIFACT_PATH)
        client.log_artifacts(run_id, str(local), ARTIFACT_PATH)
    return f"runs:/{run_id}/{ARTIFACT_PATH}"
