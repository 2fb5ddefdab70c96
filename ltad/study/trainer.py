"""Both LTAD phases in one process on in-memory features: the study's trainer.

It runs the very objectives, model and optimiser settings of the distributed job
(`ltad/training/stages.py`): Phase1Objective / Phase2Objective, AdamW with the configured learning
rates, weight decay and gradient clipping, the feature standardisation fitted on
`phase1.norm_samples` training samples, class-weighted sampling with `phase1.class_balance` in
phase 1 and `data.class_balance` in phase 2, phase-2 steps of `data.batch_size` samples of which
synthesis replaces `synthetic_count` real ones, fixed step counts and the standardisation fit on
`phase2.stats_samples` training samples. What it leaves
out is the distribution shell (Ray Train workers, DeepSpeed, S3 streaming), whose start-up would
dominate a study of hundreds of small runs on a CPU; the integration tests check that shell.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ltad.config import LTADConfig
from ltad.data.streams import class_weights
from ltad.models.ltad import LTAD
from ltad.models.state import build_model
from ltad.study.features import FeatureSet
from ltad.training.engine import param_groups
from ltad.training.objectives import Phase1Objective, Phase2Objective, real_count


def class_counts(train: FeatureSet, num_classes: int) -> list[int]:
    return torch.bincount(train.class_id, minlength=num_classes).tolist()


def sampler(
    train: FeatureSet, num_classes: int, class_balance: float, batch: int, seed: int
) -> Iterator[torch.Tensor]:
    """Endless index batches: a class by the data plane's `class_weights`, then a sample of it."""
    gen = torch.Generator().manual_seed(seed)
    weights = class_weights(dict(enumerate(class_counts(train, num_classes))), class_balance)
    classes = sorted(weights)
    probs = torch.tensor([weights[c] for c in classes], dtype=torch.float64)
    members = [torch.nonzero(train.class_id == c).flatten() for c in range(num_classes)]
    while True:
        drawn = torch.multinomial(probs, batch, replacement=True, generator=gen)
        picks = [
            members[classes[i]][torch.randint(len(members[classes[i]]), (1,), generator=gen)]
            for i in drawn.tolist()
        ]
        yield torch.cat(picks)


def _batch(train: FeatureSet, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "patches": train.patches[idx].float(),
        "global_emb": train.global_emb[idx],
        "class_id": train.class_id[idx],
    }


def _optimise(
    objective, groups, lr: float, weight_decay: float, grad_clip: float, batches, steps: int, seed: int
):
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    params = [p for g in groups for p in g["params"]]
    logs: dict[str, float] = {}
    objective.train()
    for step in range(1, steps + 1):
        torch.manual_seed(seed * 1_000_003 + step)
        loss, logs = objective(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
    return logs


def train_phase1(cfg: LTADConfig, train: FeatureSet, num_classes: int) -> tuple[LTAD, dict[str, float]]:
    """A model whose pseudo names and VAE are trained (phase 1)."""
    p, seed = cfg.phase1, cfg.run.seed
    model = build_model(cfg, num_classes)
    norm_idx = sampler(train, num_classes, p.class_balance, cfg.data.batch_size, seed * 1000 + 4)
    n_batches = -(-p.norm_samples // cfg.data.batch_size)
    model.fit_feature_norm(train.patches[next(norm_idx)].float() for _ in range(n_batches))
    objective = Phase1Objective(model, class_counts(train, num_classes))
    groups = param_groups(objective, {"names.": p.names_lr})
    idx = sampler(train, num_classes, p.class_balance, cfg.data.batch_size, seed * 1000 + 1)
    batches = (_batch(train, i) for i in idx)
    logs = _optimise(objective, groups, p.lr, p.weight_decay, p.grad_clip, batches, p.steps, seed * 7 + 1)
    return model, logs


def train_phase2(cfg: LTADConfig, model: LTAD, train: FeatureSet) -> dict[str, float]:
    """Train the reconstruction module and semantic head of `model` in place, then fit the standardisation."""
    p, seed, n = cfg.phase2, cfg.run.seed, model.num_classes
    objective = Phase2Objective(model, class_counts(train, n), p, batch_size=cfg.data.batch_size)
    groups = param_groups(objective)
    # as the job's stream: only the real part of each step is drawn, synthesis fills the rest
    real = real_count(cfg.data.batch_size, p.synthesis_ratio)
    idx = sampler(train, n, cfg.data.class_balance, real, seed * 1000 + 2)
    batches = (_batch(train, i) for i in idx)
    logs = _optimise(objective, groups, p.lr, p.weight_decay, p.grad_clip, batches, p.steps, seed * 7 + 2)
    model.eval()
    stats_idx = sampler(train, n, cfg.data.class_balance, cfg.data.batch_size, seed * 1000 + 3)
    n_batches = -(-p.stats_samples // cfg.data.batch_size)
    stats = (
        (b["patches"], b["class_id"]) for b in (_batch(train, next(stats_idx)) for _ in range(n_batches))
    )
    model.fit_standardisation(stats)
    return logs
