"""Validation during phase 2 (rank 0): the validation AUROC of the model as it trains.

What a sweep's ASHA ranks trials on (tune/*.yaml), instead of the phase-2 loss, which the swept
synthesis ratio itself changes, and never a test metric. Faithful to the evaluation's
`val_image_AUROC` (ltad/eval/validation.py): the same held-out normals and pseudo-anomalies
(ltad/training/scoring.py `heldout_batches`), encoded online, scored with the predicted class after
fitting the S_rec / S_sem standardisation on the same `phase2.stats_samples` training samples that
phase 2's finalize uses. Cheap enough to repeat: the encoder is frozen, so the held-out images and
the standardisation samples are encoded once, when phase 2 starts; each validation then loads the
current reconstruction and semantic weights into a scoring copy, refits the two means and standard
deviations and scores the encoded features.

Rank 0's memory stays flat in the number of held-out images: their features (two maps per image,
normal and pseudo-anomalous) are written batch by batch to a local temporary folder when phase 2
starts and streamed back one batch at a time at each validation; what stays in memory is one score
and one class id per image, plus the standardisation samples (`phase2.stats_samples`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
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
        self.device = w.device
        self._dir = tempfile.TemporaryDirectory(prefix="ltad-validation-")  # removed with this object
        self.batches: list[Path] = []
        self.n_images = 0  # held-out normal images (each also scored as its pseudo-anomalous copy)
        with torch.no_grad():
            for _, cids, images in heldout_batches(w, 0, 1):  # rank 0 reads every held-out image once
                for label, batch in enumerate(images):
                    enc = scorer.encoder.encode_images(batch.to(w.device))
                    path = Path(self._dir.name) / f"batch-{len(self.batches):06d}.pt"
                    torch.save((enc.patches.cpu(), enc.global_emb.cpu(), cids, label), path)
                    self.batches.append(path)
                self.n_images += len(cids)

    def encoded(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int], int]]:
        """(patches, global embeddings, class ids, label) of each held-out batch, one in memory at a time."""
        for path in self.batches:
            patches, glob, cids, label = torch.load(path, map_location=self.device, weights_only=True)
            yield patches, glob, cids, label

    def __call__(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        if not self.batches:
            return {}
        load_trained(self.scorer, state, self.trained_keys)
        self.scorer.eval()
        self.scorer.fit_standardisation(iter(self.stats))
        scores: dict[int, list[float]] = {0: [], 1: []}
        classes: dict[int, list[int]] = {0: [], 1: []}
        for patches, glob, cids, label in self.encoded():
            out = self.scorer.score(patches.float(), glob.float(), (self.size, self.size))
            scores[label] += [float(v) for v in out.pred_score]
            classes[label] += cids
        values = validation_metrics(scores[0], classes[0], scores[1], classes[1], self.classes)
        return {VAL_METRIC: values["image_AUROC"]}
