"""Both LTAD phases in one process: the study's trainer, the job's training without Ray and DeepSpeed.

A study trains hundreds of small runs on a CPU, where starting Ray Train workers and a DeepSpeed
engine per run would cost more than the training. This trainer therefore runs the job's path
(`training/stages.py` phase1 / train_phase2 -> `training/loop.py` run_steps) in process, and
`tests/integration/test_equivalence.py` checks that it trains the same weights as a one-worker ZeRO-0
job on the same feature cache (max |difference| 1e-5; image and pixel AUROC within 0.005).
What is the same, and why:

- Data: batches come from the job's training stream (`training/data.training_batches`) over a
  feature cache (`TrainingCache`; the study writes each split as one, `study/cache.py`) as rank 0 of
  world size 1, with the job's stream seeds `run.seed * 1000 + k`: k = 1 phase 1 (`phase1.class_balance`),
  2 phase 2 (`objective.n_real` real samples a step, `data.class_balance`), 3 the S_rec / S_sem
  standardisation (`phase2.stats_samples`), 4 the feature standardisation (`phase1.norm_samples`,
  `phase1.class_balance`); the last two read `ceil(samples / data.batch_size)` batches as one epoch.
  Features are the cache's fp16 values, cast to fp32 as `engine.move_batch` does.
- Model: `build_model` (seeded by `run.seed`), Phase1Objective / Phase2Objective, `param_groups`;
  phase 2 starts from phase 1's names, VAE and feature standardisation (the job loads exactly these
  keys) with the objective's train/eval modes as the job leaves them (the engine never calls train()).
- Step: `torch.manual_seed(loop.step_seed(run.seed, 0, step))` before the forward pass, as the loop.
- Optimiser: what DeepSpeed builds from `configs/deepspeed/zero{scaling.zero_stage}.json` on the
  CPU (`torch_adam`): torch.optim.AdamW over the same groups with the config's betas and eps and the
  phase's lr and weight decay (on every group, as DeepSpeed passes it).
- Clipping: DeepSpeed's fp32 clipping (`deepspeed.runtime.utils.clip_grad_norm_`, ZeRO-0): the
  2-norm as sqrt(sum of squared per-parameter norms) over the objective's parameters in module order,
  then a factor min(1, clip / (norm + 1e-6)); torch's clip_grad_norm_ sums in another order.

With torch on one thread, as a Ray worker runs (OMP_NUM_THREADS=1), the weights are bit-identical
(docs/RESULTS.md has the figures); more threads sum intra-op reductions in another order.

Not the same: no Ray, no DeepSpeed engine, no checkpoints or history; fp32 only (a job with
`scaling.precision=bf16` or on a GPU runs under bf16 autocast); ZeRO 1-3 update the same AdamW on
flattened partitions, equal up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from ltad.config import LTADConfig
from ltad.models.ltad import LTAD
from ltad.models.state import build_model
from ltad.study.cache import TrainingCache
from ltad.training.data import training_batches
from ltad.training.engine import deepspeed_config, load_zero_config, move_batch, param_groups
from ltad.training.loop import step_seed
from ltad.training.objectives import Phase1Objective, Phase2Objective, features

PHASE1_STREAM, PHASE2_STREAM, STATS_STREAM, NORM_STREAM = 1, 2, 3, 4
"""The job's stream seeds `run.seed * 1000 + k` (training/stages.py)."""


def _stream(
    cfg: LTADConfig,
    data: TrainingCache,
    k: int,
    *,
    batch_size: int | None = None,
    class_balance: float | None = None,
    epoch_steps: int = 100,
) -> Iterator[dict[str, Any]]:
    return training_batches(
        cfg,
        data.uri,
        data.manifest,
        data.uri,
        seed=cfg.run.seed * 1000 + k,
        rank=0,
        world_size=1,
        start_step=0,
        epoch_steps=epoch_steps,
        batch_size=batch_size,
        class_balance=class_balance,
    )


def _sample_batches(cfg: LTADConfig, data: TrainingCache, model: LTAD, samples: int, k: int, **kw):
    """(raw patches, class ids) of `samples` training samples, as the job's `_sample_batches`."""
    n = math.ceil(samples / cfg.data.batch_size)
    for _, batch in zip(range(n), _stream(cfg, data, k, epoch_steps=n, **kw)):
        patches, _, y = features(model, batch)
        yield patches, y


def optimiser(cfg: LTADConfig, groups: list[dict], lr: float, weight_decay: float, grad_clip: float):
    """(the AdamW DeepSpeed builds on the CPU for this phase, its gradient clipping)."""
    ds = deepspeed_config(
        load_zero_config(cfg.scaling.zero_stage),
        cfg.scaling,
        batch_size=cfg.data.batch_size,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
    )
    opt = ds["optimizer"]
    if opt["type"] != "AdamW":
        raise ValueError(f"the study trainer follows DeepSpeed's AdamW only, not '{opt['type']}'")
    params = {k: v for k, v in opt["params"].items() if k != "torch_adam"}
    if "betas" in params:
        params["betas"] = tuple(params["betas"])
    return torch.optim.AdamW(groups, **params), float(ds["gradient_clipping"])


@torch.no_grad()
def clip_like_deepspeed(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """Scale gradients as DeepSpeed's fp32 `clip_grad_norm_` does on one rank (see the module docstring)."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm <= 0 or not grads:
        return
    total = torch.stack([g.detach().float().norm(2.0) for g in grads]).pow(2.0).sum().float().pow(0.5)
    coef = torch.min(torch.tensor([1.0]), torch.tensor([max_norm]) / (total + 1e-6))
    for g in grads:
        g.mul_(coef)


def _optimise(cfg: LTADConfig, objective, groups, phase, batches, steps: int) -> dict[str, float]:
    opt, clip = optimiser(cfg, groups, phase.lr, phase.weight_decay, phase.grad_clip)
    params = list(objective.parameters())  # DeepSpeed clips over the module's parameters, in order
    logs: dict[str, float] = {}
    for step in range(1, steps + 1):
        batch = next(batches)
        batch.pop("bad_skipped", None)
        batch = move_batch(batch, torch.device("cpu"))
        torch.manual_seed(step_seed(cfg.run.seed, 0, step))
        loss, logs = objective(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_like_deepspeed(params, clip)
        opt.step()
    return logs


def train_phase1(cfg: LTADConfig, data: TrainingCache) -> tuple[LTAD, dict[str, float]]:
    """A model whose pseudo names, VAE and feature standardisation are trained (phase 1)."""
    p = cfg.phase1
    model = build_model(cfg, data.num_classes)
    model.fit_feature_norm(
        x
        for x, _ in _sample_batches(
            cfg, data, model, p.norm_samples, NORM_STREAM, class_balance=p.class_balance
        )
    )
    objective = Phase1Objective(model, data.class_counts)
    groups = param_groups(objective, {"names.": p.names_lr})
    batches = _stream(cfg, data, PHASE1_STREAM, class_balance=p.class_balance)
    return model, _optimise(cfg, objective, groups, p, batches, p.steps)


def train_phase2(cfg: LTADConfig, model: LTAD, data: TrainingCache) -> dict[str, float]:
    """Train the reconstruction module and semantic head of `model` in place, then fit the standardisation."""
    p = cfg.phase2
    objective = Phase2Objective(model, data.class_counts, p, batch_size=cfg.data.batch_size)
    groups = param_groups(objective)
    # the stream delivers only the real part of each step; the objective adds the synthetic rest
    batches = _stream(cfg, data, PHASE2_STREAM, batch_size=objective.n_real)
    logs = _optimise(cfg, objective, groups, p, batches, p.steps)
    model.eval()
    model.cache_text()
    model.fit_standardisation(_sample_batches(cfg, data, model, p.stats_samples, STATS_STREAM))
    return logs
