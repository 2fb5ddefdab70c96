"""ltad: long-tailed industrial anomaly detection (LTAD, CVPR 2024) on Ray Train + DeepSpeed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Predictor", "__version__"]

if TYPE_CHECKING:
    from ltad.inference.predictor import Predictor


def __getattr__(name: str) -> Any:
    """`ltad.Predictor` imported on first use, so `import ltad` stays light (no torch, no open_clip)."""
    if name == "Predictor":
        from ltad.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'ltad' has no attribute {name!r}")
