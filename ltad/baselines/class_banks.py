"""Fitting `ltad_mb`'s per-class kNN banks: coreset selection and the statistics that standardise them.

The banks are scored by `ltad.models.memory_banks.MemoryBanks` (a buffer of the model, so the job's
evaluation, the export, `ltad predict` and ONNX all score with them); this module makes them, for the
job (ltad/training/banks.py, one class at a time) and the study (`ClassBanks`, all classes at once),
with the same function.

The standardisation cannot use the bank's own training patches (their distance to the bank is 0 or
near it), so each class's statistics come from two folds: a bank of every other training image
scores the rest, and the other way round. Those distances are a little larger than a test normal's
distance to the full bank, which shifts the z-scores of a class by a constant; the ranking within the
class is unchanged. No held-out or test image is read.
"""

from __future__ import annotations

import torch

from ltad.baselines.patchcore import UNIFIED, PatchCore
from ltad.models.memory_banks import ClassBank, MemoryBanks, aggregate_patches


def _bank(patches: torch.Tensor, coreset_ratio: float, seed: int) -> PatchCore:
    return PatchCore(coreset_ratio=coreset_ratio, seed=seed).fit(patches.split(64))  # fit casts to float


def _distances(bank: PatchCore, patches: torch.Tensor) -> torch.Tensor:
    return torch.cat([bank.patch_scores(p) for p in patches.split(64)])


@torch.no_grad()
def fit_class_bank(patches: torch.Tensor, coreset_ratio: float = 0.1, seed: int = 0) -> ClassBank:
    """The bank of one class from its N >= 2 normal training images' raw patches (N x D x g x g)."""
    if len(patches) < 2:
        raise ValueError(
            f"a class bank needs at least 2 images (two folds standardise it), got {len(patches)}"
        )
    folds = (patches[0::2], patches[1::2])
    fold_d = [_distances(_bank(folds[1 - k], coreset_ratio, seed), folds[k]) for k in (0, 1)]
    d = torch.cat([x.flatten() for x in fold_d]).double()
    rows = _bank(patches, coreset_ratio, seed).banks[UNIFIED].cpu()
    return ClassBank(rows, float(d.mean()), max(float(d.std()), 1e-6))


@torch.no_grad()
def one_image_bank(patches: torch.Tensor, radius: int = 2) -> ClassBank:
    """A bank of one image's patches (1 x D x g x g), kept whole, standardised by each patch's distance
    to the same image's patches outside its (2 radius + 1)^2 neighbourhood: two folds need two images,
    and aggregated patches overlap within 3 x 3, so nearer ones would understate a new image's distance."""
    if len(patches) != 1:
        raise ValueError(f"one_image_bank takes exactly one image, got {len(patches)}")
    f = aggregate_patches(patches.float())  # 1 x D x g x g
    g = f.shape[-1]
    rows = f.flatten(2)[0].T  # P x D
    yy, xx = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    pos = torch.stack([yy.flatten(), xx.flatten()], 1)
    near = (pos[:, None] - pos[None]).abs().amax(-1) <= radius
    if bool(near.all()):
        raise ValueError(f"a {g} x {g} grid has no patch outside a radius-{radius} neighbourhood")
    d = torch.cdist(rows.double(), rows.double()).masked_fill(near, float("inf")).amin(1)
    d = d[torch.isfinite(d)]
    return ClassBank(rows.contiguous(), float(d.mean()), max(float(d.std()), 1e-6))


class ClassBanks:
    """Banks for the classes with at least `min_images` training images (the study's way in)."""

    def __init__(self, min_images: int = 10, coreset_ratio: float = 0.1, seed: int = 0) -> None:
        if not isinstance(min_images, int) or min_images < 2:
            raise ValueError(f"min_images must be an int >= 2 (two folds standardise), got {min_images!r}")
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must lie in (0, 1], got {coreset_ratio!r}")
        self.min_images, self.coreset_ratio, self.seed = min_images, coreset_ratio, seed
        self.module: MemoryBanks | None = None
        self.stats: dict[int, tuple[float, float]] = {}  # class id -> (mean, std) of fold distances

    @torch.no_grad()
    def fit(
        self, patches: torch.Tensor, class_id: torch.Tensor, num_classes: int | None = None
    ) -> ClassBanks:
        """patches N x D x g x g of normal training images, class_id N."""
        banks = {}
        for cid in sorted(class_id.unique().tolist()):
            own = patches[class_id == cid]
            if len(own) >= self.min_images:
                banks[int(cid)] = fit_class_bank(own, self.coreset_ratio, self.seed)
        n = num_classes if num_classes is not None else int(class_id.max()) + 1
        self.module = MemoryBanks(n, patches.shape[1]).set_banks(banks)
        self.stats = {cid: (b.mean, b.std) for cid, b in banks.items()}
        return self

    @property
    def classes(self) -> list[int]:
        return self.module.classes if self.module is not None else []

    @torch.no_grad()
    def z_scores(self, patches: torch.Tensor, class_id: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """B x g x g: the standardised kNN distance to the bank of each image's class (the predicted
        class at test time), 0 for images whose class has no bank."""
        if self.module is None:
            raise RuntimeError("call fit() before z_scores()")
        class_id = class_id.long().view(-1).cpu()
        parts = [
            self.module.z_scores(patches[i : i + chunk], class_id[i : i + chunk])
            for i in range(0, len(patches), chunk)
        ]
        return torch.cat(parts)


def fuse_with_banks(fused: torch.Tensor, z_bank: torch.Tensor, weight: float) -> torch.Tensor:
    """LTAD's fused patch score plus `weight` x the bank's z-score (0 where a class has no bank)."""
    return fused + weight * z_bank
