"""An exported model at an s3:// prefix, copied into a local folder (what Predictor.load reads)."""

from __future__ import annotations

from pathlib import Path

from ltad.errors import DataError
from ltad.io import storage


def download_model(uri: str, folder: Path) -> Path:
    """Copy the exported model at an s3:// prefix into `folder` (read_meta then checks its files)."""
    prefix = uri.rstrip("/")
    objects = storage.list(prefix)
    names = {obj.rsplit("/", 1)[-1] for obj in objects}
    missing = [n for n in ("config.yaml", "export.json") if n not in names]
    if not {"weights.pt", "model.onnx", "model.xml"} & names:
        missing.insert(0, "weights.pt (or model.onnx, model.xml)")
    if missing:
        raise DataError(f"'{uri}' is not an exported ltad model: {', '.join(missing)} missing")
    for obj in objects:
        rel = obj[len(prefix) + 1 :]
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(obj))
    return folder
