"""Baselines compared with LTAD on the same frozen encoder features."""

from ltad.baselines.patchcore import PatchCore, greedy_coreset, knn_distance

__all__ = ["PatchCore", "greedy_coreset", "knn_distance"]
