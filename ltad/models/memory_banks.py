"""Per-class memory banks of normal patches as buffers of the model: the `ltad_mb` term of the score.

A labelled variant beyond the paper (`model.score.memory_bank`). A kNN memory bank is hard to beat
on a class with many training images and weak on a class with one or two; LTAD is the reverse. So the
classes with enough images get a bank, and the distance of each test patch to the bank of its
image's *predicted* class enters the fused score as a per-class z-score, comparable with z(S_rec)
and z(S_sem). Classes without a bank add 0: their score is the paper's.

The banks live in padded buffers (S x K x D: S classes with a bank, K the largest bank; `bank_slot`
maps a class id to its row, -1 for none), so they travel in `weights.pt`, load with the rest of the
model and trace into the ONNX graph (gather, matmul, argmin: no Python loop over classes); classes
without a bank cost nothing. Fitting them (coreset selection, two-fold statistics) is done outside,
by `ltad.baselines.class_banks`; this module only holds and scores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "memory_banks."
"""Key prefix of the banks in the model's state dict (absent in exports made before the variant)."""


@dataclass(frozen=True)
class ClassBank:
    """One class's bank: `rows` M x D (locally aggregated normal patches), and the mean and std of
    held-out-fold distances that standardise a distance to it."""

    rows: torch.Tensor
    mean: float
    std: float


def aggregate_patches(patches: torch.Tensor) -> torch.Tensor:
    """PatchCore's locally-aware features: the 3x3 neighbourhood mean of each patch (borders: mean of
    the neighbours that exist), so a patch carries a little context without losing resolution."""
    return F.avg_pool2d(patches, 3, stride=1, padding=1, count_include_pad=False)


class MemoryBanks(nn.Module):
    """Banks for some of `num_classes` classes, scored as standardised nearest-neighbour distances."""

    bank_slot: torch.Tensor  # C, int64: the class's row in the tensors below, -1 = no bank
    bank: torch.Tensor  # S x K x D; rows at and beyond bank_len[s] are padding
    bank_len: torch.Tensor  # S, int64
    bank_stats: torch.Tensor  # S x 2: mean and std of the class's fold distances

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.register_buffer("bank_slot", torch.full((num_classes,), -1, dtype=torch.long))
        self.register_buffer("bank", torch.zeros(0, 0, dim))
        self.register_buffer("bank_len", torch.zeros(0, dtype=torch.long))
        self.register_buffer("bank_stats", torch.zeros(0, 2))

    @property
    def fitted(self) -> bool:
        return bool((self.bank_slot >= 0).any())

    @property
    def classes(self) -> list[int]:
        """Class ids that have a bank."""
        return [int(c) for c in torch.nonzero(self.bank_slot >= 0).flatten()]

    def set_banks(self, banks: Mapping[int, ClassBank]) -> MemoryBanks:
        """Replace every bank by `banks` (class id -> ClassBank); other classes get none."""
        for cid, b in banks.items():
            if not 0 <= cid < self.num_classes:
                raise ValueError(f"bank for class id {cid}, but the model has {self.num_classes} classes")
            if b.rows.dim() != 2 or b.rows.shape[1] != self.dim or b.rows.shape[0] == 0:
                raise ValueError(
                    f"class {cid}'s bank must be M x {self.dim} with M >= 1, got {tuple(b.rows.shape)}"
                )
        device = self.bank.device
        ids = sorted(banks)
        size = max((b.rows.shape[0] for b in banks.values()), default=0)
        slot = torch.full((self.num_classes,), -1, dtype=torch.long, device=device)
        bank = torch.zeros(len(ids), size, self.dim, device=device)
        length = torch.zeros(len(ids), dtype=torch.long, device=device)
        stats = torch.zeros(len(ids), 2, device=device)
        for i, cid in enumerate(ids):
            b = banks[cid]
            slot[cid] = i
            bank[i, : b.rows.shape[0]] = b.rows.to(device, torch.float32)
            length[i] = b.rows.shape[0]
            stats[i] = torch.tensor([b.mean, max(b.std, 1e-6)], device=device)
        self.bank_slot, self.bank, self.bank_len, self.bank_stats = slot, bank, length, stats
        return self

    def resize_for(self, state: Mapping[str, torch.Tensor], prefix: str = PREFIX) -> None:
        """Give the bank buffers the shapes of those in `state`, so a strict load can fill them."""
        for name in ("bank", "bank_len", "bank_stats"):
            key, own = f"{prefix}{name}", getattr(self, name)
            if key in state and tuple(state[key].shape) != tuple(own.shape):
                setattr(self, name, torch.zeros(state[key].shape, dtype=own.dtype, device=own.device))

    def z_scores(self, patches: torch.Tensor, class_id: torch.Tensor) -> torch.Tensor:
        """B x g x g: the standardised distance of each raw encoder patch (B x D x g x g) to the
        nearest entry of the bank of its image's class `class_id` (B); 0 where the class has none.

        The nearest entry is found with the matmul expansion and its distance then recomputed
        exactly (as `ltad.baselines.patchcore.knn_distance` with k = 1)."""
        feats = aggregate_patches(patches.float())
        b, d, gh, gw = feats.shape
        if self.bank.shape[0] == 0:
            return feats.new_zeros(b, gh, gw)
        slot = self.bank_slot[class_id.long().to(feats.device)]  # B
        has = slot >= 0
        row = slot.clamp_min(0)
        q = feats.flatten(2).transpose(1, 2)  # B x P x D
        bank = self.bank[row]  # B x K x D
        d2 = (
            q.pow(2).sum(-1, keepdim=True) + bank.pow(2).sum(-1).unsqueeze(1) - 2 * (q @ bank.transpose(1, 2))
        )
        valid = torch.arange(bank.shape[1], device=feats.device).unsqueeze(0) < self.bank_len[row].unsqueeze(
            1
        )
        d2 = d2.masked_fill(~valid.unsqueeze(1), float("inf"))
        nearest = torch.gather(bank, 1, d2.argmin(dim=-1).unsqueeze(-1).expand(-1, -1, d))  # B x P x D
        dist = (q - nearest).pow(2).sum(dim=-1).sqrt()
        stats = self.bank_stats[row]  # B x 2
        z = (dist - stats[:, :1]) / stats[:, 1:]
        z = torch.where(has.unsqueeze(1), z, torch.zeros_like(z))
        return z.view(b, gh, gw)
