"""Phase 1 and phase 2 as `TorchTrainer` train functions (one call per Ray Train worker).

Phase 1 trains the pseudo class names and the conditional VAE; phase 2 loads them frozen from phase
1's final checkpoint and trains the reconstruction module and the semantic projection on real plus
VAE-synthesised features. Each wraps its objective's trainable modules in a DeepSpeed engine and runs
the shared step loop. Phase 2's final checkpoint holds the whole trained model (without the encoder)
including the S_rec / S_sem standardisation fitted on training patches after the last step.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ltad.config import LTADConfig
from ltad.data.manifest import Manifest, read_manifest
from ltad.models.ltad import LTAD
from ltad.training.checkpoint import load_model_state
from ltad.training.data import feature_source, training_batches
from ltad.training.engine import build_engine, deepspeed_config, init_distributed, param_groups
from ltad.training.loop import LoopSpec, run_steps
from ltad.training.objectives import Phase1Objective, Phase2Objective, features
from ltad.training.weights import build_model, load_trained, trained_state

PHASE1_KEYS = ("names.", "vae.", "feature_norm.")
PHASE2_KEYS = ("reconstruction.", "semantic.")


@dataclass
class Worker:
    """What every train function needs: config, data, this worker's place and device."""

    cfg: LTADConfig
    data_uri: str
    manifest: Manifest
    rank: int
    world_size: int
    device: torch.device
    started: float = field(default_factory=time.monotonic)

    def log(self, msg: str) -> None:
        """Progress on rank 0 (stderr: the job log), with seconds since the worker started."""
        if self.rank == 0:
            # not print(): Ray Train patches print in workers and would log every line twice
            sys.stderr.write(f"[rank 0 +{time.monotonic() - self.started:.1f}s] {msg}\n")
            sys.stderr.flush()

    @property
    def class_counts(self) -> list[int]:
        return [self.manifest.counts["train"].get(c, 0) for c in self.manifest.classes]


def worker(config: dict[str, Any]) -> Worker:
    """Parse the loop config, join DeepSpeed to Ray's process group, pick the device."""
    import ray.train

    cfg = LTADConfig.from_dict(config["config"])
    init_distributed(cfg.scaling.use_gpu)
    ctx = ray.train.get_context()
    device = torch.device("cpu")
    if cfg.scaling.use_gpu:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    return Worker(
        cfg,
        config["data_uri"],
        read_manifest(config["data_uri"]),
        ctx.get_world_rank(),
        ctx.get_world_size(),
        device,
    )


def _engine(w: Worker, objective, groups, ds_base: dict, lr: float, weight_decay: float, grad_clip: float):
    ds = deepspeed_config(
        ds_base,
        w.cfg.scaling,
        batch_size=w.cfg.data.batch_size,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
    )
    return build_engine(objective, groups, ds)


def _spec(w: Worker, phase: str, steps: int) -> LoopSpec:
    return LoopSpec(phase, steps, w.cfg.run.log_every, w.cfg.run.checkpoint_every, w.cfg.run.seed)


def _batches(w: Worker, cache: str | None, seed: int):
    def make(start: int):
        return training_batches(
            w.cfg,
            w.data_uri,
            w.manifest,
            cache,
            seed=seed,
            rank=w.rank,
            world_size=w.world_size,
            start_step=start,
        )

    return make


def _model_keys(model: LTAD, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    return {k: v for k, v in state.items() if k in own}


def phase1(config: dict[str, Any]) -> None:
    """Train function of phase 1 (pseudo class names + conditional VAE)."""
    w = worker(config)
    p = w.cfg.phase1
    model = build_model(w.cfg, len(w.manifest.classes)).to(w.device)
    cache = feature_source(w.cfg, w.data_uri, w.manifest)
    # every rank reads the same samples, so the statistics agree without communication
    model.fit_feature_norm(x for x, _ in _sample_batches(w, model, cache, p.norm_samples, seed=4))
    objective = Phase1Objective(model, w.class_counts)
    groups = param_groups(objective, {"names.": p.names_lr})
    engine = _engine(w, objective, groups, config["deepspeed"], p.lr, p.weight_decay, p.grad_clip)
    w.log(
        f"phase1: model and ZeRO-{engine.zero_optimization_stage()} engine ready; features {cache or 'online'}"
    )
    batches = _batches(w, cache, seed=w.cfg.run.seed * 1000 + 1)
    run_steps(
        engine, batches, _spec(w, "phase1", p.steps), rank=w.rank, finalize=lambda s: _model_keys(model, s)
    )
    w.log("phase1: done")


def phase2(config: dict[str, Any]) -> None:
    """Train function of phase 2 (reconstruction + semantic projection on real + synthetic features)."""
    train_phase2(worker(config), config)


def train_phase2(
    w: Worker, config: dict[str, Any]
) -> tuple[dict[str, torch.Tensor] | None, dict[str, float]]:
    """Phase 2 on this worker: (the final whole-model state on rank 0, None elsewhere; last metrics)."""
    p = w.cfg.phase2
    phase1_state = load_model_state(config["phase1_checkpoint"])
    model = build_model(w.cfg, len(w.manifest.classes))
    load_trained(model, phase1_state, PHASE1_KEYS)
    model.to(w.device)
    objective = Phase2Objective(model, w.class_counts, p)
    groups = param_groups(objective)
    engine = _engine(w, objective, groups, config["deepspeed"], p.lr, p.weight_decay, p.grad_clip)
    cache = feature_source(w.cfg, w.data_uri, w.manifest, allow=p.pseudo_anomaly == "feature")
    w.log(
        f"phase2: model and ZeRO-{engine.zero_optimization_stage()} engine ready; features {cache or 'online'}"
    )
    batches = _batches(w, cache, seed=w.cfg.run.seed * 1000 + 2)
    final: dict[str, dict[str, torch.Tensor]] = {}

    def finalize(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        full = build_model(w.cfg, len(w.manifest.classes))
        load_trained(full, phase1_state, PHASE1_KEYS)
        load_trained(full, state, PHASE2_KEYS)
        full.to(w.device).eval()
        full.cache_text()
        full.fit_standardisation(_sample_batches(w, full, cache, w.cfg.phase2.stats_samples, seed=3))
        w.log(f"phase2: standardisation fitted on {w.cfg.phase2.stats_samples} training samples")
        final["state"] = trained_state(full)
        return final["state"]

    metrics = run_steps(engine, batches, _spec(w, "phase2", p.steps), rank=w.rank, finalize=finalize)
    w.log("phase2: done")
    return final.get("state"), metrics


def _sample_batches(w: Worker, model: LTAD, cache: str | None, samples: int, seed: int):
    """(raw patches, class ids) of `samples` training samples, read on this worker alone."""
    bs = w.cfg.data.batch_size
    n = math.ceil(samples / bs)
    stream = training_batches(
        w.cfg,
        w.data_uri,
        w.manifest,
        cache,
        seed=w.cfg.run.seed * 1000 + seed,
        rank=0,
        world_size=1,
        start_step=0,
        epoch_steps=n,
    )
    for _, batch in zip(range(n), stream):
        batch = {k: v.to(w.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        patches, _, y = features(model, batch)
        yield patches, y
