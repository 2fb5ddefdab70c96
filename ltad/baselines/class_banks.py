"""Per-class kNN memory banks whose patch distances are standardised per class: a score to fuse.

A labelled variant beyond the paper (`ltad_mb` in the study). A memory bank of normal patches is
hard to beat on a class with many training images, and weak on a class with one or two; LTAD is the
reverse. So a bank is built only for classes with at least `min_images` training images, and its kNN
distance enters the fused score as a z-score that is comparable with LTAD's z(S_rec) and z(S_sem).

The standardisation cannot use the bank's own training patches (their distance to the bank is 0 or
near it), so each class's statistics come from two folds: a bank of every other training image
scores the rest, and the other way round. Those distances are a little larger than a test normal's
distance to the full bank, which shifts the z-scores of a class by a constant; the ranking within the
class is unchanged. No test image or label is read.
"""

from __future__ import annotations

import torch

from ltad.baselines.patchcore import PatchCore


def _bank(patches: torch.Tensor, coreset_ratio: float, seed: int) -> PatchCore:
    return PatchCore(coreset_ratio=coreset_ratio, seed=seed).fit(patches.split(64))  # fit casts to float


def _distances(bank: PatchCore, patches: torch.Tensor) -> torch.Tensor:
    return torch.cat([bank.patch_scores(p) for p in patches.split(64)])


class ClassBanks:
    """kNN banks for the classes with enough training images, scored as per-class z-scores."""

    def __init__(self, min_images: int = 10, coreset_ratio: float = 0.1, seed: int = 0) -> None:
        if not isinstance(min_images, int) or min_images < 2:
            raise ValueError(f"min_images must be an int >= 2 (two folds standardise), got {min_images!r}")
        if not 0 < coreset_ratio <= 1:
            raise ValueError(f"coreset_ratio must lie in (0, 1], got {coreset_ratio!r}")
        self.min_images, self.coreset_ratio, self.seed = min_images, coreset_ratio, seed
        self.banks: dict[int, PatchCore] = {}
        self.stats: dict[int, tuple[float, float]] = {}  # class id -> (mean, std) of fold distances

    @torch.no_grad()
    def fit(self, patches: torch.Tensor, class_id: torch.Tensor) -> ClassBanks:
        """patches N x D x g x g of normal training images, class_id N."""
        self.banks, self.stats = {}, {}
        for cid in sorted(class_id.unique().tolist()):
            own = patches[class_id == cid]
            if len(own) < self.min_images:
                continue
            folds = (own[0::2], own[1::2])
            fold_d = [
                _distances(_bank(folds[1 - k], self.coreset_ratio, self.seed), folds[k]) for k in (0, 1)
            ]
            d = torch.cat([x.flatten() for x in fold_d]).double()
            self.stats[cid] = (float(d.mean()), max(float(d.std()), 1e-6))
            self.banks[cid] = _bank(own, self.coreset_ratio, self.seed)
        return self

    @property
    def classes(self) -> list[int]:
        return sorted(self.banks)

    @torch.no_grad()
    def z_scores(self, patches: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        """B x g x g: the standardised kNN distance to the bank of each image's class (the predicted
        class at test time), 0 for images whose class has no bank."""
        b, _, gh, gw = patches.shape
        out = torch.zeros(b, gh, gw)
        class_id = class_id.long().view(-1).cpu()
        for cid, bank in self.banks.items():
            sel = class_id == cid
            if sel.any():
                mean, std = self.stats[cid]
                out[sel] = (_distances(bank, patches[sel]) - mean) / std
        return out


def fuse_with_banks(fused: torch.Tensor, z_bank: torch.Tensor, weight: float) -> torch.Tensor:
    """LTAD's fused patch score plus `weight` x the bank's z-score (0 where a class has no bank)."""
    return fused + weight * z_bank
