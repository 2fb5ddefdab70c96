"""The per-class kNN control of the study (`knn_class`, `knn_class_oracle`): no LTAD anywhere.

`ltad_mb` adds per-class banks to LTAD and beats the one-bank kNN at balanced; this control asks
whether the banks alone do that. Every training class gets a bank, however few images it has, made
as `ltad_mb`'s banks are (same aggregated patches, coreset and two-fold standardisation,
`class_banks.fit_class_bank`; a one-image class gets `class_banks.one_image_bank`). A test image is
scored against one bank: its true class's (`knn_class_oracle`) or the class predicted without LTAD
(`knn_class`).

The class is predicted by the nearest class mean of a whole-image embedding (the spatial mean of the
frozen encoder's patch features, each channel standardised over the training images), not by "the
bank that scores the image lowest": a defect raises its own class's bank score by design, so that
rule would send defective images to other classes' banks exactly when they should score high, and
the standardised scores of banks built from 1 and from 100 images are not comparable enough to
choose between. A local defect moves a spatial mean little. The image tower's global embedding is
not used: its projection is random in the offline encoder.
"""

from __future__ import annotations

import torch

from ltad.baselines.class_banks import fit_class_bank, one_image_bank
from ltad.models.memory_banks import ClassBank, MemoryBanks


def image_embedding(patches: torch.Tensor) -> torch.Tensor:
    """B x D: the spatial mean of raw encoder patches B x D x g x g."""
    return patches.float().mean(dim=(2, 3))


class ClassKNN:
    """A bank for every training class, and a nearest-class-mean classifier that picks one."""

    def __init__(self, coreset_ratio: float = 0.1, seed: int = 0) -> None:
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must lie in (0, 1], got {coreset_ratio!r}")
        self.coreset_ratio, self.seed = coreset_ratio, seed
        self.module: MemoryBanks | None = None
        self.mean = self.std = self.prototypes = torch.zeros(0)

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, class_id: torch.Tensor, num_classes: int) -> ClassKNN:
        """patches N x D x g x g of normal training images, class_id N (ids < num_classes)."""
        class_id = class_id.long().view(-1).cpu()
        if len(patches) == 0 or len(patches) != len(class_id):
            raise ValueError(
                f"fit needs N >= 1 images with N class ids, got {len(patches)} / {len(class_id)}"
            )
        banks: dict[int, ClassBank] = {}
        for cid in sorted(class_id.unique().tolist()):
            own = patches[class_id == cid]
            banks[int(cid)] = (
                one_image_bank(own) if len(own) == 1 else fit_class_bank(own, self.coreset_ratio, self.seed)
            )
        self.module = MemoryBanks(num_classes, patches.shape[1]).set_banks(banks)
        emb = image_embedding(patches)
        self.mean = emb.mean(dim=0)
        self.std = emb.std(dim=0, unbiased=False).clamp_min(1e-6)
        z = (emb - self.mean) / self.std
        self.prototypes = torch.full((num_classes, emb.shape[1]), float("nan"))
        for cid in banks:
            self.prototypes[cid] = z[class_id == cid].mean(dim=0)
        return self

    @property
    def classes(self) -> list[int]:
        """Class ids with a bank (every class that had a training image)."""
        return self.module.classes if self.module is not None else []

    @torch.no_grad()
    def predict(self, patches: torch.Tensor) -> torch.Tensor:
        """B class ids: the class whose mean standardised embedding is nearest each image's."""
        if self.module is None:
            raise RuntimeError("call fit() before predict()")
        z = (image_embedding(patches) - self.mean) / self.std
        d = torch.cdist(z, self.prototypes.nan_to_num(0.0))
        d[:, torch.isnan(self.prototypes).any(dim=1)] = float("inf")  # classes without images
        return d.argmin(dim=1)

    @torch.no_grad()
    def z_scores(self, patches: torch.Tensor, class_id: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """B x g x g: each patch's standardised distance to the bank of its image's `class_id`."""
        if self.module is None:
            raise RuntimeError("call fit() before z_scores()")
        class_id = class_id.long().view(-1).cpu()
        missing = sorted(set(class_id.unique().tolist()) - set(self.classes))
        if missing:
            raise ValueError(f"no bank for class id {missing[0]}: it had no training image")
        return torch.cat(
            [
                self.module.z_scores(patches[i : i + chunk], class_id[i : i + chunk])
                for i in range(0, len(patches), chunk)
            ]
        )
