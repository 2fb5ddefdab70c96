"""The two training objectives of LTAD as modules that own only their phase's trainable parts.

DeepSpeed (ZeRO-3 included) partitions every parameter registered under the module it wraps, so each
objective registers just what its phase trains and keeps the rest of the model in a plain tuple:
phase 1 trains the pseudo class names and the conditional VAE (and carries the feature
standardisation fitted just before it); phase 2 trains the reconstruction
module and the semantic projection while the encoder, names and VAE stay frozen.
`forward(batch) -> (loss, logs)`; a batch holds `class_id` and either `image` (encoded online by the
frozen encoder) or cached `patches` + `global_emb`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ltad.config import Phase2Config, split_batch
from ltad.errors import DataError
from ltad.models.ltad import LTAD
from ltad.models.pseudo_anomalies import feature_anomalies, image_anomalies, mask_to_grid
from ltad.models.semantic import SemanticHead
from ltad.training.dist import all_reduce


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _counts(class_counts, model: LTAD) -> torch.Tensor:
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.shape != (model.num_classes,) or bool((counts < 0).any()):
        raise ValueError(
            f"class_counts must be {model.num_classes} non-negative counts, got {list(class_counts)}"
        )
    return counts


def features(model: LTAD, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(patches B x D x g x g, global B x E, class ids B) from cached features or by encoding images."""
    if "patches" in batch:
        patches, glob = batch["patches"], batch["global_emb"]
    else:
        enc = model.encoder.encode_images(batch["image"])
        patches, glob = enc.patches, enc.global_emb
    return patches.float(), glob.float(), batch["class_id"].long().to(patches.device)


def synthetic_count(batch_size: int, ratio: float) -> int:
    """Synthetic samples in a phase-2 step of `batch_size` samples in all (they replace real ones)."""
    return split_batch(batch_size, ratio)[1]


def real_count(batch_size: int, ratio: float) -> int:
    """Real samples a phase-2 step of `batch_size` samples reads from the data: the rest are synthetic."""
    return split_batch(batch_size, ratio)[0]


def allocate_synthetic(
    histogram: torch.Tensor, n: int, class_counts: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-class numbers of `n` synthetic samples that make `histogram + allocation` as flat as possible.

    Water filling: each sample goes to the currently lowest class; ties go to the class with fewer
    training images (the tail), then the lower id.
    """
    level = histogram.double().clone()
    tie = torch.zeros_like(level) if class_counts is None else class_counts.double()
    alloc = torch.zeros(level.shape[0], dtype=torch.long)
    for _ in range(n):
        low = torch.nonzero(level == level.min()).flatten()
        c = int(low[torch.argmin(tie[low])])
        alloc[c] += 1
        level[c] += 1
    return alloc


class Phase1Objective(nn.Module):
    """Pseudo-name cross-entropy (cosine logits vs "a photo of a <s_c>.") + conditional VAE ELBO."""

    step: torch.Tensor  # buffer, registered in __init__

    def __init__(self, model: LTAD, class_counts) -> None:
        super().__init__()
        self._model = (model,)
        # Validated for symmetry with phase 2 but unused: the class mix is the sampler's, whose
        # weights ~ count^(1 - phase1.class_balance) (1, the default, draws every class equally often).
        _counts(class_counts, model)
        # registered so its fitted statistics travel in phase 1's checkpoint to phase 2
        self.names, self.vae, self.feature_norm = model.names, model.vae, model.feature_norm
        model.names.requires_grad_(True)
        model.vae.requires_grad_(True)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        model = self._model[0]
        vcfg = model.cfg.vae
        patches, glob, y = features(model, batch)
        patches = model.feature_norm(patches)
        text = model.class_text()
        logits = F.normalize(glob, dim=-1) @ text.float().T / model.cfg.semantic.temperature
        ce = F.cross_entropy(logits, y)
        dt = _dtype(self.vae)
        x, rec, mu, logvar = self.vae(patches.to(dt), text.detach()[y].to(dt))
        mse, kl = self.vae.loss_terms(x, rec, mu, logvar)
        beta = vcfg.beta * min(1.0, float(self.step) / max(1, vcfg.beta_warmup_steps))
        loss = ce + mse.float() + beta * kl.float()
        if self.training:
            self.step += 1
        logs = {
            "loss": loss.item(),
            "names_ce": ce.item(),
            "names_acc": (logits.argmax(1) == y).float().mean().item(),
            "vae_mse": mse.item(),
            "vae_kl": kl.item(),
            "vae_beta": beta,
        }
        return loss, logs


class Phase2Objective(nn.Module):
    """Reconstruction MSE + semantic classifier CE on real + VAE-synthesised features.

    A step holds `batch_size` samples in all (`data.batch_size`): `real_count(batch_size, ratio)` real
    ones, which the training stream delivers as its batch (any beyond that are dropped), and
    `synthetic_count(batch_size, ratio)` synthetic ones, so the ratio changes the mix, not the size.
    """

    LOGS = ("loss", "rec_mse", "sem_ce", "synthetic", "synthetic_fraction", "pseudo_image_level")
    """The names `forward` logs (reported as `phase2/<name>`; a sweep's ASHA metric may be one)."""
    class_counts: torch.Tensor  # buffers, registered in __init__
    seen: torch.Tensor

    def __init__(self, model: LTAD, class_counts, cfg: Phase2Config, *, batch_size: int) -> None:
        super().__init__()
        self._model = (model,)
        self.cfg = cfg
        self.n_real, self.n_synthetic = split_batch(batch_size, cfg.synthesis_ratio)
        if self.n_real < 1:
            raise ValueError(f"synthesis_ratio {cfg.synthesis_ratio} leaves no real sample in {batch_size}")
        for frozen in (model.names, model.vae):
            frozen.requires_grad_(False)
            frozen.eval()
        model.cache_text()
        self.reconstruction, self.semantic = model.reconstruction, model.semantic
        self.reconstruction.requires_grad_(True)
        self.semantic.requires_grad_(True)
        # int64 buffers: a bf16 engine casts float buffers, and bf16 cannot count past 256
        self.register_buffer("class_counts", _counts(class_counts, model).long())
        # running class histogram of real + synthetic samples trained on: what the allocation flattens
        self.register_buffer("seen", torch.zeros(model.num_classes, dtype=torch.long))

    def _synthesise(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        model = self._model[0]
        n = self.n_synthetic
        real = torch.bincount(y.cpu(), minlength=model.num_classes)
        alloc = allocate_synthetic(self.seen.cpu() + real, n, self.class_counts.cpu())
        ids = torch.repeat_interleave(torch.arange(model.num_classes), alloc).to(y.device)
        if self.training:
            # Keep `seen` identical on every rank (ZeRO checkpoints save rank 0's buffers only), so a
            # resumed run allocates exactly as the uninterrupted one would.
            self.seen += all_reduce(real + alloc).to(self.seen.device)
        if n == 0:
            return torch.zeros(0, model.feature_dim, model.grid, model.grid, device=y.device), ids
        cond = model.text_class[ids].to(_dtype(model.vae))
        return model.vae.sample(cond).float(), ids

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        model = self._model[0]
        batch = {k: v[: self.n_real] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        patches, _, y = features(model, batch)
        patches = model.feature_norm(patches)
        syn, syn_y = self._synthesise(y)
        x, xy = torch.cat([patches, syn.to(patches.device)]), torch.cat([y, syn_y])
        dt = _dtype(self.reconstruction)
        x = x.to(dt)
        rec_in = x if self.cfg.synthesis_target == "both" else x[: patches.shape[0]]
        rec_loss = F.mse_loss(self.reconstruction(rec_in), rec_in)
        image_level = self.cfg.pseudo_anomaly == "image" and "image" in batch
        if self.cfg.pseudo_anomaly == "cached":
            if "anom_patches" not in batch:
                raise DataError(
                    "phase2.pseudo_anomaly 'cached' needs pseudo-anomalies in the feature cache "
                    "(anom.npy, written by the study's cache); this cache has none: use 'feature' or 'image'"
                )
            anom = model.feature_norm(batch["anom_patches"].float().to(patches.device)).to(dt)
            anom_y, target = y, batch["anom_target"].float().to(patches.device)
        elif image_level:
            images, masks = image_anomalies(batch["image"].float())
            anom = model.feature_norm(model.encoder.encode_images(images).patches).to(dt)
            anom_y, target = y, mask_to_grid(masks, model.grid)
        else:
            anom, target = feature_anomalies(x, xy)
            anom_y = xy
        sem_in = torch.cat([x, anom])
        sem_y = torch.cat([xy, anom_y])
        targets = torch.cat([target.new_zeros(x.shape[0], *target.shape[1:]), target])
        logits = self.semantic(sem_in, model.text_states[sem_y])
        sem_loss = SemanticHead.loss(logits.float(), targets.float())
        loss = rec_loss.float() + self.cfg.semantic_weight * sem_loss
        logs = {
            "loss": loss.item(),
            "rec_mse": rec_loss.item(),
            "sem_ce": sem_loss.item(),
            "synthetic": float(syn.shape[0]),
            "synthetic_fraction": syn.shape[0] / max(x.shape[0], 1),
            "pseudo_image_level": float(image_level or self.cfg.pseudo_anomaly == "cached"),
        }
        return loss, logs
