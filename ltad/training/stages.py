"""Every distributed stage of ltad as a `TorchTrainer` train function, and the `Worker` they share.

- `encode_stage`: each worker encodes its share of the image shards into the feature cache.
- `phase1`: pseudo class names + conditional VAE.
- `phase2`: reconstruction module + semantic projection on real + VAE-synthesised features, the names
  and VAE frozen from phase 1's final checkpoint; its final checkpoint holds the whole trained model
  (without the encoder) including the S_rec / S_sem standardisation fitted after the last step.
- `evaluate`: the exactly-once test stream, scores gathered to rank 0, which writes metrics.json,
  scores.csv, overlays, the report and the exported model into the run's checkpoint (the driver
  copies it to the output, so workers never need to reach the output location).
- `phase2_and_evaluate`: what a sweep trial runs: phase 2, then the evaluation of its final state from
  memory, in one worker group (one Ray Train start-up, no checkpoint download). A restarted stage
  resumes phase 2 from its latest checkpoint, finalises again and evaluates.

Each train function takes Ray Train's loop dict, which holds one typed `StageInput`
(ltad/training/inputs.py). Collectives live in ltad/training/dist.py, the step loop in loop.py.
"""

from __future__ import annotations

import gc
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltad.errors import DataError
from ltad.eval.aggregate import to_json
from ltad.eval.calibration import calibrate, calibration_metrics, describe, thresholds_of
from ltad.eval.normalise import calibrated_normalisation
from ltad.eval.outputs import (
    OverlayCandidate,
    check_exactly_once,
    choose_overlays,
    evaluation_metrics,
    merge_candidates,
    merge_shares,
    render_overlays,
    summary,
    write_scores,
)
from ltad.eval.report import write_report
from ltad.inference.export import write_export
from ltad.io import storage
from ltad.log import get_logger
from ltad.models.ltad import LTAD
from ltad.models.state import build_model, load_trained, trained_state
from ltad.training import store
from ltad.training.banks import fit_memory_banks
from ltad.training.checkpoint import evaluation_dir_name, load_model_state, report
from ltad.training.data import feature_source, training_batches
from ltad.training.dist import barrier, broadcast_from_rank0, gather_to_rank0
from ltad.training.engine import build_engine, deepspeed_config, param_groups
from ltad.training.loop import LoopSpec, run_steps
from ltad.training.objectives import Phase1Objective, Phase2Objective, features
from ltad.training.scoring import overlay_images, score_heldout, score_share, send_chosen
from ltad.training.worker import Worker, worker

PHASE1_KEYS = ("names.", "vae.", "feature_norm.")
PHASE2_KEYS = ("reconstruction.", "semantic.")
STAGE_SECONDS = "stage_seconds/"
"""Prefix of the job's last report: each stage's own time on this worker, start-up excluded."""
EVALUATED = "evaluated"
"""Key of every evaluation report (test samples scored): how a listener tells it from training reports."""

log = get_logger("stage")


# --------------------------------------------------------------------------- encode


def encode_stage(loop: dict[str, Any]) -> None:
    """Train function of the encode stage alone (see `encode`)."""
    import ray.train

    written = encode(worker(loop))
    ray.train.report({"encoded_shards": written})


def encode(w: Worker) -> int:
    """Each worker encodes its share (by bytes) of the shards, skipping those a preempted run finished;
    rank 0 writes the cache manifest last (ltad/training/feature_cache.py). Every rank returns once the
    cache is complete; the number of shards this worker encoded."""
    from ltad.models.encoder import Encoder
    from ltad.training.feature_cache import (
        cache_root,
        encode_shards,
        fingerprint,
        precision,
        write_cache_manifest,
    )

    encoder = Encoder(w.cfg.model.encoder).to(w.device)
    cache_id = fingerprint(w.cfg.model.encoder, w.manifest)
    out = storage.join(cache_root(w.data_uri, w.cfg.data.cache_uri), cache_id)
    written = encode_shards(
        encoder,
        w.data_uri,
        w.manifest,
        out,
        cache_id=cache_id,
        rank=w.rank,
        world_size=w.world_size,
        batch_size=w.cfg.eval.batch_size,
        num_workers=w.cfg.data.loader_workers,
    )
    gathered = gather_to_rank0(written, w.rank, w.world_size)
    if w.rank == 0:
        assert gathered is not None
        everything = [entry for part in gathered for entry in part]
        write_cache_manifest(
            out,
            w.manifest,
            everything,
            w.cfg.model.encoder,
            encoder.weights_provenance(),
            precision(w.device),
        )
    barrier()  # the next stage reads the cache through its manifest
    return len(written)


# --------------------------------------------------------------------------- phases 1 and 2


def phase1(loop: dict[str, Any]) -> None:
    """Train function of phase 1 alone (pseudo class names + conditional VAE)."""
    train_phase1(worker(loop))


def train_phase1(w: Worker) -> dict[str, float]:
    """Phase 1 on this worker; its last reported metrics."""
    p = w.cfg.phase1
    model = build_model(w.cfg, len(w.manifest.classes)).to(w.device)
    cache = feature_source(w.cfg, w.data_uri, w.manifest)
    # every rank reads the same samples, so the statistics agree without communication
    model.fit_feature_norm(
        x for x, _ in _sample_batches(w, model, cache, p.norm_samples, seed=4, class_balance=p.class_balance)
    )
    objective = Phase1Objective(model, w.class_counts)
    groups = param_groups(objective, {"names.": p.names_lr})
    engine = _engine(w, objective, groups, p.lr, p.weight_decay, p.grad_clip)
    w.log(
        f"phase1: model and ZeRO-{engine.zero_optimization_stage()} engine ready; features {cache or 'online'}"
    )
    batches = _batches(w, cache, seed=w.cfg.run.seed * 1000 + 1, class_balance=p.class_balance)
    metrics = run_steps(
        engine, batches, _spec(w, "phase1", p.steps), rank=w.rank, finalize=lambda s: _model_keys(model, s)
    )
    w.log("phase1: done")
    return metrics


def phase2(loop: dict[str, Any]) -> None:
    """Train function of phase 2 (reconstruction + semantic projection on real + synthetic features)."""
    train_phase2(worker(loop))


def train_phase2(w: Worker) -> tuple[dict[str, torch.Tensor] | None, dict[str, float]]:
    """Phase 2 on this worker: (the final whole-model state on rank 0, None elsewhere; last metrics)."""
    p = w.cfg.phase2
    phase1_state = load_model_state(_finished(w, "phase1", w.inp.phase1_checkpoint))
    model = build_model(w.cfg, len(w.manifest.classes))
    load_trained(model, phase1_state, PHASE1_KEYS)
    model.to(w.device)
    objective = Phase2Objective(model, w.class_counts, p, batch_size=w.cfg.data.batch_size)
    groups = param_groups(objective)
    engine = _engine(w, objective, groups, p.lr, p.weight_decay, p.grad_clip)
    cache = feature_source(w.cfg, w.data_uri, w.manifest, allow=p.pseudo_anomaly != "image")
    w.log(
        f"phase2: model and ZeRO-{engine.zero_optimization_stage()} engine ready; features {cache or 'online'}"
    )
    # the stream delivers only the real part of each step; the objective adds the synthetic rest
    batches = _batches(w, cache, seed=w.cfg.run.seed * 1000 + 2, batch_size=objective.n_real)
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

    spec = replace(_spec(w, "phase2", p.steps), validate_every=p.validate_every)
    validate = _phase2_validation(w, engine, phase1_state, cache) if p.validate_every else None
    metrics = run_steps(engine, batches, spec, rank=w.rank, finalize=finalize, validate=validate)
    if w.rank == 0 and "state" not in final:  # resumed from its own final checkpoint: model.pt is the model
        final["state"] = load_model_state(_finished(w, "phase2", None))
        w.log("phase2: resumed at its final checkpoint; its model.pt is the final model")
    w.log("phase2: done")
    return final.get("state"), metrics


def _phase2_validation(w: Worker, engine, phase1_state: dict[str, torch.Tensor], cache: str | None):
    """Every rank's `validate` for the loop: the consolidated state (a collective under ZeRO-3), scored
    on rank 0 by a `Phase2Validation` built once (ltad/training/validation.py); {} elsewhere."""
    from ltad.training.engine import consolidated_state_dict
    from ltad.training.validation import Phase2Validation

    check = None
    if w.rank == 0:
        scorer = build_model(w.cfg, len(w.manifest.classes))
        load_trained(scorer, phase1_state, PHASE1_KEYS)
        scorer.to(w.device).eval()
        scorer.cache_text()
        stats = _sample_batches(w, scorer, cache, w.cfg.phase2.stats_samples, seed=3)  # as finalize
        check = Phase2Validation(w, scorer, stats, PHASE2_KEYS)
        w.log(
            f"phase2: validation every {w.cfg.phase2.validate_every} steps on {check.n_images} held-out "
            "images and their pseudo-anomalous copies"
        )

    def validate() -> dict[str, float]:
        if check is None and engine.zero_optimization_stage() != 3:
            return {}  # only ZeRO-3 needs every rank to gather the parameters
        state = consolidated_state_dict(engine)
        return check(state) if check is not None else {}

    return validate


def _engine(w: Worker, objective, groups, lr: float, weight_decay: float, grad_clip: float):
    ds = deepspeed_config(
        w.inp.deepspeed,
        w.cfg.scaling,
        batch_size=w.cfg.data.batch_size,
        lr=lr,
        weight_decay=weight_decay,
        grad_clip=grad_clip,
    )
    return build_engine(objective, groups, ds)


def _spec(w: Worker, phase: str, steps: int) -> LoopSpec:
    cfg = w.cfg
    return LoopSpec(
        phase, steps, cfg.run.log_every, cfg.run.checkpoint_every, cfg.run.seed, root=w.inp.root(phase)
    )


def _finished(w: Worker, stage: str, given: Any) -> Any:
    """A finished stage's checkpoint: `given` (from the driver), else the stage's newest final one."""
    if given is not None:
        return given
    found = store.latest_final(w.inp.root(stage))
    if found is None:
        raise DataError(f"no finished {stage} checkpoint under {w.inp.root(stage)}: run {stage} first")
    return found


def _batches(
    w: Worker,
    cache: str | None,
    seed: int,
    *,
    batch_size: int | None = None,
    class_balance: float | None = None,
):
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
            batch_size=batch_size,
            class_balance=class_balance,
        )

    return make


def _model_keys(model: LTAD, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    return {k: v for k, v in state.items() if k in own}


def _sample_batches(
    w: Worker, model: LTAD, cache: str | None, samples: int, seed: int, class_balance: float | None = None
):
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
        class_balance=class_balance,
    )
    for _, batch in zip(range(n), stream):
        batch = {k: v.to(w.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        patches, _, y = features(model, batch)
        yield patches, y


# --------------------------------------------------------------------------- evaluation


def evaluate(loop: dict[str, Any]) -> None:
    """Train function of the evaluation run (see the module docstring)."""
    w = worker(loop)
    evaluate_state(w, load_model_state(_finished(w, "phase2", w.inp.phase2_checkpoint)))


def run_job(loop: dict[str, Any]) -> None:
    """Train function of a whole job: `inp.stages` in order in one worker group, so workers start,
    import and join the process group once. Each stage keeps its own run directory; a restarted group
    skips finished stages (their final checkpoints) and resumes the one it was in."""
    w = worker(loop)
    stages = w.inp.stages
    training = dict(w.inp.training)
    state: dict[str, torch.Tensor] | None = None
    seconds: dict[str, float] = {}
    for stage in stages:
        tic = time.monotonic()
        w.log(f"{stage}: starting")
        if stage == "encode":
            if feature_source(w.cfg, w.data_uri, w.manifest) is None:
                encode(w)
        elif stage == "phase1":
            metrics = train_phase1(w)
            training["phase1_bad_samples"] = metrics.get("phase1/bad_samples")
        elif stage == "phase2":
            state, metrics = train_phase2(w)
            training["phase2_bad_samples"] = metrics.get("phase2/bad_samples")
            if "evaluate" in stages:  # evaluated from memory, on every rank
                state = broadcast_from_rank0(state, w.world_size)
        elif stage == "evaluate":
            if state is None:
                state = load_model_state(_finished(w, "phase2", w.inp.phase2_checkpoint))
            w = replace(w, inp=replace(w.inp, training=training))
            evaluate_state(w, state)
        else:
            raise ValueError(f"unknown stage '{stage}'")
        _free()
        seconds[f"{STAGE_SECONDS}{stage}"] = time.monotonic() - tic
        w.log(f"{stage}: done in {seconds[f'{STAGE_SECONDS}{stage}']:.0f} s")
    report(seconds, summary=True)  # each stage's own time: the job's wall time minus these is start-up


def _free() -> None:
    """Between stages: what the last one no longer holds goes back (engines, models, CUDA cache)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def phase2_and_evaluate(loop: dict[str, Any]) -> None:
    """Train function: phase 2, then the exactly-once evaluation of its final model, in one worker group."""
    w = worker(loop)
    state, metrics = train_phase2(w)
    state = broadcast_from_rank0(state, w.world_size)
    if state is None:
        raise RuntimeError("phase 2 ended without a final model state on rank 0")
    evaluate_state(w, state, extra=metrics)


def evaluate_state(w: Worker, state: dict[str, torch.Tensor], extra: dict[str, float] | None = None) -> None:
    """Score the test set with the model in `state` (every rank); rank 0 reports the evaluation checkpoint
    with the summary metrics and `extra` (e.g. the last phase-2 metrics of a combined stage)."""

    n_classes = len(w.manifest.classes)
    model = build_model(w.cfg, n_classes)
    load_trained(model, state)
    model.to(w.device).eval()
    cache = feature_source(w.cfg, w.data_uri, w.manifest)
    banks = fit_memory_banks(w, model, cache)  # ltad_mb only; before any held-out or test image is read
    w.log(f"evaluate: scoring this worker's test shards ({cache or 'images encoded online'})")
    share, kept = score_share(w, model, cache)
    # held-out normals: the thresholds' calibration data; with their pseudo-anomalies, the validation set
    share.heldout, share.pseudo = score_heldout(w, model)
    w.log(
        f"evaluate: scored {len(share.samples)} test, {len(share.heldout)} held-out and "
        f"{len(share.pseudo)} pseudo-anomalous samples on rank 0"
    )
    gathered = gather_to_rank0(share, w.rank, w.world_size)
    per_class = w.cfg.eval.overlays_per_class
    # rank 0 chooses by the candidates' keys; only the chosen maps come to it (ltad/eval/outputs.py)
    chosen = None if gathered is None else choose_overlays(merge_candidates(gathered), n_classes, per_class)
    overlays = send_chosen(w, chosen, kept)
    if gathered is None or overlays is None:
        report({EVALUATED: len(share.samples)}, summary=True)
        return
    with tempfile.TemporaryDirectory(prefix="ltad-eval-") as tmp:
        metrics = write_evaluation(w, model, gathered, overlays, Path(tmp), cache=cache, banks=banks)
        uri = storage.join(w.inp.root("evaluate"), evaluation_dir_name())
        # metrics.json last: an evaluation directory without it is incomplete and never published
        store.upload_rank_files(tmp, uri, skip=("metrics.json",))
        storage.upload_file(Path(tmp) / "metrics.json", storage.join(uri, "metrics.json"))
        w.log(f"evaluate: {metrics['n_evaluated']} test samples, each exactly once; outputs in {uri}")
        report({**(extra or {}), **summary(metrics), EVALUATED: metrics["n_evaluated"]}, summary=True)


def write_evaluation(
    w: Worker,
    model: LTAD,
    shares: list,
    chosen: dict[int, list[OverlayCandidate]],
    out: Path,
    *,
    cache: str | None,
    banks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Rank 0: exactly-once check, metrics.json, scores.csv, overlays (`chosen`, with their maps), report
    and export under `out`; `banks` is what the memory banks' fitting recorded (ltad_mb), None for the
    paper's score."""
    merged = merge_shares(shares)
    check_exactly_once(merged.samples, w.manifest.samples("test"))
    check_exactly_once(merged.heldout, w.manifest.samples("val"), split="held-out (val)")
    classes = list(w.manifest.classes)
    metrics = evaluation_metrics(merged, classes, w.manifest.counts["train"], w.inp.training)
    threshold = metrics["threshold"]["image_score"]  # F1 on test: a diagnostic, unless uncalibrated
    scores = np.array([s.pred_score for s in merged.samples], dtype=np.float64)
    heldout = np.array([s.pred_score for s in merged.heldout], dtype=np.float64)
    calibration = calibrate(
        heldout, np.array([s.pred_class for s in merged.heldout]), classes, w.cfg.eval.target_fpr
    )
    metrics["calibration"] = calibration_metrics(
        calibration,
        scores,
        np.array([s.gt_label for s in merged.samples]),
        np.array([s.pred_class for s in merged.samples]),
        classes,
        threshold,
    )
    w.log(
        describe(calibration)
        if calibration
        else f"evaluate: uncalibrated: {metrics['calibration']['reason']}"
    )
    per_class = thresholds_of(calibration, classes) if calibration else None
    metrics["memory_banks"] = banks
    metrics["provenance"] = provenance(w, model, cache)
    (out / "metrics.json").write_text(to_json(metrics))
    norms = None
    if calibration is not None and per_class is not None:  # each class's scale, as in export.json
        norms = [calibrated_normalisation(t, calibration["low"]) for t in per_class]
    write_scores(out / "scores.csv", merged.samples, classes, threshold, norms)
    images = overlay_images(w, [c for cs in chosen.values() for c in cs])
    drawn = threshold if per_class is None else {c: float(t) for c, t in enumerate(per_class)}
    overlays = render_overlays(chosen, images, classes, drawn, out / "overlays")
    write_export(
        out / "model", model, w.cfg, classes, scores, threshold, metrics["provenance"], calibration,
        carry_encoder=False,  # referred to by sha256; publishing copies it into the output once
    )  # fmt: skip
    write_report(out / "report.md", metrics, overlays)
    return metrics


def provenance(w: Worker, model: LTAD, cache: str | None) -> dict[str, Any]:
    """What a result rests on: code, config, split, data, feature cache, weights, seed, world size."""
    split = w.manifest.split
    return {
        "git_commit": w.inp.git_commit,
        "config": w.cfg.to_dict(),
        "split_sha256": split.sha256,
        "split": {"profile": split.profile, "ratio": split.ratio, "seed": split.seed},
        "dataset": w.manifest.dataset,
        "data_uri": w.data_uri,
        "feature_cache": cache,
        "weights": model.encoder.weights_provenance(),
        "seed": w.cfg.run.seed,
        "world_size": w.world_size,
        # per stage: the fingerprint of its inputs and the commits that ran it (ltad/training/identity.py)
        "identity": dict(w.inp.identity),
    }
