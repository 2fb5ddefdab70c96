"""ltad: long-tailed industrial anomaly detection (LTAD, CVPR 2024) on Ray Train + DeepSpeed."""

__version__ = "0.1.0"
