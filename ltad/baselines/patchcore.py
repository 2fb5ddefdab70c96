"""A PatchCore-like kNN baseline on the frozen encoder's patch features (Roth et al., CVPR 2022).

It answers "is LTAD's training worth it?": a memory bank of normal training patches, shrunk by greedy
k-center coreset subsampling, scores each test patch by its distance to the nearest bank entries. To
keep the comparison fair it reads the same `Encoder.encode_images(...).patches` as LTAD and makes maps
and image scores exactly as `LTAD.score` does (bilinear upsampling, Gaussian blur, image score = max
after an average pool). One bank serves all classes (the unified setting: no class ids at test time);
per-class banks are an option for the oracle comparison.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F

from ltad.errors import ConfigError, DataError, StorageError
from ltad.models.ltad import gaussian_blur
from ltad.models.memory_banks import aggregate_patches

FORMAT = "ltad-patchcore/1"
UNIFIED = -1  # bank_class of entries in the single all-class bank
Batch = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def _check(ok: bool, key: str, expected: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"patchcore.{key} must be {expected}, got {value!r}")


def _flatten(patches: torch.Tensor) -> torch.Tensor:
    """B x D x g x g -> (B*g*g) x D, rows in image-major, row-major grid order."""
    return patches.permute(0, 2, 3, 1).reshape(-1, patches.shape[1])


def greedy_coreset(
    features: torch.Tensor, n_select: int, proj_dim: int | None = 128, seed: int = 0, chunk: int = 65536
) -> torch.Tensor:
    """Indices of `n_select` rows chosen by greedy k-center (farthest-point) selection.

    Each step adds the row farthest from everything chosen so far, which bounds the covering radius
    by twice the optimum. Distances are computed after a seeded Gaussian random projection to
    `proj_dim` dimensions (Johnson-Lindenstrauss, as in the paper) when that is smaller than D; memory
    is O(N * proj_dim) plus one N-vector, the projection runs in chunks of rows. Stops early once every
    row coincides with a chosen one up to float32 rounding (fewer distinct rows than `n_select`).
    """
    n, dim = features.shape
    if not 1 <= n_select <= n:
        raise ValueError(f"n_select must lie in [1, {n}], got {n_select}")
    gen = torch.Generator().manual_seed(seed)
    if proj_dim is not None and proj_dim < dim:
        proj = (torch.randn(dim, proj_dim, generator=gen) / math.sqrt(proj_dim)).to(features.device)
        z = torch.cat([features[i : i + chunk].float() @ proj for i in range(0, n, chunk)])
    else:
        z = features.float()
    z = z - z.mean(dim=0)  # distances are unchanged; smaller norms mean less rounding in the expansion
    sq = z.pow(2).sum(dim=1)
    tol = 1e-5 * float(sq.max())  # well above that rounding, relative to the squared norms
    min_d = torch.full((n,), float("inf"), device=z.device)
    chosen = torch.empty(n_select, dtype=torch.long)
    last = int(torch.randint(n, (1,), generator=gen))
    for i in range(n_select):
        chosen[i] = last
        d = torch.addmv(sq + sq[last], z, z[last], alpha=-2).clamp_min(0)
        torch.minimum(min_d, d, out=min_d)
        min_d[last] = 0  # the expansion is not exactly 0 for the point itself
        if i + 1 < n_select:
            best, nxt = min_d.max(dim=0)
            if float(best) <= tol:
                return chosen[: i + 1]
            last = int(nxt)
    return chosen


def knn_distance(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, max_elems: int = 1 << 24
) -> torch.Tensor:
    """Mean Euclidean distance of each query row to its k nearest bank rows (Q x D, M x D -> Q).

    Neighbours are found with the fast matmul expansion in chunks of at most `max_elems` distances;
    the distances to them are then recomputed exactly, so a query equal to a bank row scores 0.
    """
    k = min(k, bank.shape[0])
    bank_sq = bank.pow(2).sum(dim=1)
    step = max(1, max_elems // bank.shape[0])
    out = []
    for q in queries.split(step):
        d2 = q.pow(2).sum(dim=1, keepdim=True) + bank_sq - 2 * (q @ bank.T)
        idx = d2.topk(k, dim=1, largest=False).indices
        out.append((q.unsqueeze(1) - bank[idx]).pow(2).sum(dim=-1).sqrt().mean(dim=1))
    return torch.cat(out) if out else queries.new_zeros(0)


def patch_maps(
    raw: torch.Tensor, image_size: int | tuple[int, int], blur_sigma: float = 4.0, image_pool: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch scores B x g x g -> (anomaly maps B x H x W, image scores B), made as `LTAD.to_maps` makes
    them (bilinear upsampling, Gaussian blur, image score = max of an average pool), so every baseline's
    figures compare with LTAD's."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    maps = F.interpolate(raw.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    maps = gaussian_blur(maps.squeeze(1), blur_sigma)
    pool = min(image_pool, *maps.shape[-2:])
    pooled = F.avg_pool2d(maps.unsqueeze(1), pool, stride=1)
    return maps, pooled.flatten(1).amax(dim=1)


class PatchCore:
    """Memory bank of (coreset-subsampled) normal patch features and kNN patch scoring."""

    def __init__(
        self,
        coreset_ratio: float = 0.1,
        k: int = 1,
        max_bank: int = 50_000,
        seed: int = 0,
        *,
        per_class: bool = False,
        aggregate: bool = True,
        proj_dim: int | None = 128,
        blur_sigma: float = 4.0,
        image_pool: int = 16,
    ) -> None:
        _check(0 < coreset_ratio <= 1, "coreset_ratio", "a float in (0, 1]", coreset_ratio)
        _check(isinstance(k, int) and k >= 1, "k", "an int >= 1", k)
        _check(isinstance(max_bank, int) and max_bank >= 1, "max_bank", "an int >= 1", max_bank)
        _check(proj_dim is None or proj_dim >= 1, "proj_dim", "an int >= 1 or None", proj_dim)
        _check(blur_sigma >= 0, "blur_sigma", "a float >= 0", blur_sigma)
        _check(isinstance(image_pool, int) and image_pool >= 1, "image_pool", "an int >= 1", image_pool)
        self.coreset_ratio, self.k, self.max_bank, self.seed = coreset_ratio, k, max_bank, seed
        self.per_class, self.aggregate, self.proj_dim = per_class, aggregate, proj_dim
        self.blur_sigma, self.image_pool = blur_sigma, image_pool
        self.banks: dict[int, torch.Tensor] = {}  # class id (or UNIFIED) -> M x D

    # ------------------------------------------------------------------ building the bank
    def _features(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.dim() != 4:
            raise ValueError(f"patches must be B x D x g x g, got shape {tuple(patches.shape)}")
        patches = patches.float()
        return aggregate_patches(patches) if self.aggregate else patches

    def bank_size_for(self, n: int) -> int:
        """Entries kept from n candidate patches: ceil(ratio * n), at most max_bank."""
        return min(n, self.max_bank, max(1, math.ceil(self.coreset_ratio * n)))

    @torch.no_grad()
    def fit(self, batches: Iterable[Batch]) -> PatchCore:
        """Build the bank(s) from batches of training patches (B x D x g x g), or (patches, class_ids)
        pairs; class ids are needed only with `per_class`. Holds every candidate patch (N x D float32)
        until the coreset is chosen."""
        groups: dict[int, list[torch.Tensor]] = {}
        dim = None
        for item in batches:
            patches, class_ids = item if isinstance(item, (tuple, list)) else (item, None)
            rows = _flatten(self._features(patches))
            if dim is not None and rows.shape[1] != dim:
                raise ValueError(
                    f"training patches disagree on the feature dimension: {dim} and {rows.shape[1]}"
                )
            dim = rows.shape[1]
            if not self.per_class:
                groups.setdefault(UNIFIED, []).append(rows)
                continue
            if class_ids is None:
                raise ValueError("per_class=True needs (patches, class_ids) batches in fit()")
            per_patch = (
                torch.as_tensor(class_ids)
                .long()
                .to(rows.device)
                .repeat_interleave(rows.shape[0] // len(patches))
            )
            for cid in per_patch.unique().tolist():
                groups.setdefault(cid, []).append(rows[per_patch == cid])
        if not groups:
            raise ValueError("fit() got no training patches")
        self.banks = {}
        for cid, parts in sorted(groups.items()):
            feats = torch.cat(parts)
            n_keep = self.bank_size_for(feats.shape[0])
            if n_keep < feats.shape[0]:
                feats = feats[greedy_coreset(feats, n_keep, self.proj_dim, self.seed).to(feats.device)]
            self.banks[cid] = feats.contiguous()
        return self

    @property
    def bank_size(self) -> int:
        return sum(b.shape[0] for b in self.banks.values())

    def to(self, device: torch.device | str) -> PatchCore:
        self.banks = {c: b.to(device) for c, b in self.banks.items()}
        return self

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def patch_scores(self, patches: torch.Tensor, class_id: torch.Tensor | None = None) -> torch.Tensor:
        """kNN distance of every patch to the bank, B x g x g (no upsampling, no blur)."""
        if not self.banks:
            raise RuntimeError("call fit() or PatchCore.load() before scoring")
        feats = self._features(patches)
        b, dim, gh, gw = feats.shape
        bank_dim = next(iter(self.banks.values())).shape[1]
        if dim != bank_dim:
            raise ValueError(f"patches have {dim} channels but the bank was built from {bank_dim}")
        rows = _flatten(feats).view(b, gh * gw, dim)
        if not self.per_class:
            bank = self.banks[UNIFIED].to(feats.device)
            return knn_distance(rows.reshape(-1, dim), bank, self.k).view(b, gh, gw)
        if class_id is None:
            raise ValueError("per_class=True needs class_id in score(): one bank per class")
        class_id = torch.as_tensor(class_id).long().view(-1).to(feats.device)
        out = torch.empty(b, gh * gw, device=feats.device)
        for cid in class_id.unique().tolist():
            if cid not in self.banks:
                raise ValueError(f"no bank for class id {cid}; banks exist for {sorted(self.banks)}")
            sel = class_id == cid
            out[sel] = knn_distance(
                rows[sel].reshape(-1, dim), self.banks[cid].to(feats.device), self.k
            ).view(-1, gh * gw)
        return out.view(b, gh, gw)

    @torch.no_grad()
    def score(
        self,
        patches: torch.Tensor,
        image_size: int | tuple[int, int],
        class_id: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(anomaly_map B x H x W, pred_score B), made as `LTAD.score` makes them."""
        return patch_maps(self.patch_scores(patches, class_id), image_size, self.blur_sigma, self.image_pool)

    # ------------------------------------------------------------------ persistence
    def _params(self) -> dict:
        keys = ("coreset_ratio", "k", "max_bank", "seed", "per_class", "aggregate", "proj_dim")
        return {key: getattr(self, key) for key in keys} | {
            "blur_sigma": self.blur_sigma,
            "image_pool": self.image_pool,
        }

    def save(self, path: str | Path) -> Path:
        """Write the bank(s) and settings as one tensor file (written beside it, then renamed)."""
        if not self.banks:
            raise RuntimeError("nothing to save: call fit() first")
        path = Path(path)
        ids = sorted(self.banks)
        state = {
            "format": FORMAT,
            "params": self._params(),
            "bank": torch.cat([self.banks[c].cpu() for c in ids]),
            "bank_class": torch.cat([torch.full((self.banks[c].shape[0],), c) for c in ids]),
        }
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            torch.save(state, tmp)
            tmp.replace(path)
        except OSError as exc:
            raise StorageError(
                f"cannot write the PatchCore bank to '{path}': {exc.strerror or exc}"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> PatchCore:
        """Read a file written by `save` (tensors and plain values only: `weights_only=True`)."""
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"PatchCore bank file '{path}' does not exist")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # pickle/zip errors of a corrupt or foreign file
            raise DataError(
                f"'{path}' is not a readable PatchCore bank file ({type(exc).__name__})"
            ) from None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise DataError(f"'{path}' is not a PatchCore bank file (expected format '{FORMAT}')")
        model = cls(**state["params"])
        bank, owner = state["bank"], state["bank_class"]
        model.banks = {int(c): bank[owner == c].contiguous() for c in owner.unique().tolist()}
        return model
