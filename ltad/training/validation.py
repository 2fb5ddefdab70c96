"""Validation during phase 2 (rank 0): the validation AUROC of the model as it trains.

What a sweep's ASHA ranks trials on (tune/*.yaml), instead of the phase-2 loss, which the swept
synthesis ratio itself changes, and never a test metric. Faithful to the evaluation's
`val_image_AUROC` (ltad/eval/validation.py): the same held-out normals and pseudo-anomalies
(ltad/training/scoring.py `heldout_batches`), encoded online, scored with the predicted class after
fitting the S_rec / S_sem standardisation on the same `phase2.stats_samples` training samples that
phase 2's finalize uses. Cheap enough to repeat: the encoder is frozen, so the held-out images and
the standardisation samples are encoded once, when phase 2 starts, and kept (rank 0's memory: two
feature maps per held-out image plus the standardisation samples); each validation then loads the
current reconstruction and semantic weights into a scoring copy, refits the two means and standard
deviations and scores the kept features.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from ltad.eval.validation import VAL_METRIC, validation_metrics
from ltad.models.ltad import LTAD
from ltad.models.state import load_trained
from ltad.training.scoring import heldout_batches

if TYPE_CHECKING:
    from ltad.training.worker import Worker


class Phase2Validation:
    """`validate(state)` -> {val_image_AUROC: ...} for a phase-2 state (the engine's consolidated one)."""

    def __init__(
        self,
        w: Worker,
        scorer: LTAD,
        stats: Iterable[tuple[torch.Tensor, torch.Tensor]],
        trained_keys: tuple[str, ...],
    ):
        self.scorer, self.trained_keys = scorer, trained_keys
        self.size = w.cfg.model.encoder.image_size
        self.classes = list(w.manifest.classes)
        self.stats = list(stats)
        self.encoded: list[tuple[torch.Tensor, torch.Tensor, list[int], int]] = []
        with torch.no_grad():
            for _, cids, images in heldout_batches(w, 0, 1):  # rank 0 reads every held-out image
                for label, batch in enumerate(images):
                    enc = scorer.encoder.encode_images(batch.to(w.device))
                    self.encoded.append((enc.patches, enc.global_emb, cids, label))

    @property
    def n_images(self) -> int:
        """Held-out normal images (each also scored as its pseudo-anomalous copy)."""
        return sum(len(cids) for _, _, cids, label in self.encoded if label == 0)

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        if not self.encoded:
            return {}
        load_trained(self.scorer, state, self.trained_keys)
        self.scorer.eval()
        self.scorer.fit_standardisation(iter(self.stats))
        scores: dict[int, list[float]] = {0: [], 1: []}
        classes: dict[int, list[int]] = {0: [], 1: []}
        for patches, glob, cids, label in self.encoded:
            out = self.scorer.score(patches.float(), glob.float(), (self.size, self.size))
            scores[label] += [float(v) for v in out.pred_score]
            classes[label] += cids
        values = validation_metrics(scores[0], classes[0], scores[1], classes[1], self.classes)
        return {VAL_METRIC: values["image_AUROC"]}
