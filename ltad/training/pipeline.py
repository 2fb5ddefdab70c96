"""The driver side of a training job: encode (if needed), phase 1, phase 2, evaluate, publish.

Runs on the Ray driver (`ray job submit ... python jobs/train.py`, or `ltad train`); each stage is a
`TorchTrainer` run named `{run.name}-{stage}` under `run.storage_path`, so rerunning the same job
resumes every unfinished stage from its latest checkpoint. Bad input (no manifest, a missing DeepSpeed
config, an unreachable bucket) fails here, before any worker starts.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ltad.config import LTADConfig
from ltad.data.manifest import read_manifest
from ltad.errors import ConfigError
from ltad.eval.outputs import summary
from ltad.io import storage
from ltad.log import get_logger
from ltad.training import preflight
from ltad.training.feature_cache import find_cache
from ltad.training.history import run_history, write_history
from ltad.training.identity import RunIdentities, run_root
from ltad.training.inputs import stage_input
from ltad.training.ray_run import fit
from ltad.training.tracking import Tracker

Log = Callable[[str], None]
_log = get_logger("pipeline").info


def publish(checkpoint, output: str, then: Callable[[Path], None] | None = None) -> list[str]:
    """Copy a checkpoint's files (metrics, report, overlays, model) to a local dir or S3 prefix;
    `then` gets the local folder holding them before it is removed."""
    written = []
    with tempfile.TemporaryDirectory(prefix="ltad-publish-") as tmp:
        local = Path(checkpoint.to_directory(tmp))
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            if rel.startswith(".") or "/." in rel:
                continue  # Ray's own metadata files
            uri = storage.join(output, rel)
            storage.upload_file(path, uri)
            written.append(uri)
        if then is not None:
            then(local)
    return written


def stage_checkpoint(cfg: LTADConfig, stage: str, uri: str | None = None):
    """A stage's checkpoint: `uri` (a checkpoint directory), else the stage's latest final one in storage."""
    import ray.train

    from ltad.training.checkpoint import MODEL_FILE
    from ltad.training.ray_run import resolve_storage

    if uri is None:
        root = run_root(cfg, stage)
        finals = sorted(
            {u.rsplit("/", 1)[0] for u in storage.list(root) if u.endswith(f"-final/{MODEL_FILE}")}
        )
        if not finals:
            raise ConfigError(
                f"no finished {stage} checkpoint under {root}: train first or pass --checkpoint"
            )
        uri = finals[-1]
    if not storage.exists(storage.join(uri, MODEL_FILE)):
        raise ConfigError(
            f"checkpoint '{uri}' has no {MODEL_FILE}: expected a finished {stage} checkpoint directory"
        )
    path, fs = resolve_storage(uri, cfg.run.output)
    return ray.train.Checkpoint(path, filesystem=fs) if fs is not None else ray.train.Checkpoint(path)


def run_pipeline(
    cfg: LTADConfig,
    *,
    stages: tuple[str, ...] = ("phase1", "phase2", "evaluate"),
    checkpoints: dict[str, Any] | None = None,
    log: Log = _log,
) -> dict:
    """Run the stages on the cluster Ray is connected to; returns the evaluation metrics.

    `checkpoints` supplies the results of stages that are not run ({'phase2': Checkpoint} to only
    evaluate); a needed stage that is neither run nor supplied is the run's own finished one. Every
    stage resumed or found by run name must have been made from the same inputs (`identity.py`):
    checked before any stage runs. Every training stage rewrites `{run.output}/history.jsonl`
    (history.py) and feeds `run.loggers` (tracking.py).
    """
    cfg = preflight.check_run(cfg, log)  # before any stage: locations every node can reach
    with Tracker(cfg, log) as tracker:
        return _run_stages(cfg, tracker, stages, checkpoints, log)


def _run_stages(
    cfg: LTADConfig, tracker: Tracker, stages: tuple[str, ...], checkpoints: dict[str, Any] | None, log: Log
) -> dict:
    from ltad.training.stages import encode_stage, evaluate, phase1, phase2

    data_uri = cfg.data.uri
    if not data_uri:
        raise ConfigError(
            "data.uri is empty: pass --data s3://bucket/prefix (a prefix holding manifest.json)"
        )
    manifest = read_manifest(data_uri)
    base = stage_input(cfg)
    identities = RunIdentities(cfg, manifest, base.git_commit, stages=stages, supplied=checkpoints, log=log)
    log(
        f"{manifest.dataset}: {len(manifest.classes)} classes, {manifest.samples('train')} train / "
        f"{manifest.samples('test')} test images; {cfg.scaling.num_workers} workers, ZeRO-{cfg.scaling.zero_stage}"
    )
    if (
        cfg.data.use_feature_cache
        and find_cache(data_uri, cfg.model.encoder, manifest, cfg.data.cache_uri) is None
    ):
        log("feature cache: encoding train and test shards once")
        fit(encode_stage, base, name=f"{cfg.run.name}-encode")
    done: dict[str, Any] = dict(checkpoints or {})
    training: dict[str, float | None] = {}  # what evaluation records about training (skipped corrupt samples)
    for stage, fn, needs in (
        ("phase1", phase1, None),
        ("phase2", phase2, "phase1"),
        ("evaluate", evaluate, "phase2"),
    ):
        if stage not in stages:
            continue
        if needs and needs not in done:
            done[needs] = stage_checkpoint(cfg, needs)  # its identity was checked above
        inp = replace(base, **({f"{needs}_checkpoint": done[needs]} if needs else {}))
        log(f"{stage}: starting")
        tic = time.monotonic()
        identities.claim(stage)
        if stage == "evaluate":
            inp = replace(inp, training=training, identity=identities.provenance())
        result = fit(fn, inp, name=f"{cfg.run.name}-{stage}")
        done[stage] = result.checkpoint
        if stage != "evaluate":
            training[f"{stage}_bad_samples"] = (result.metrics or {}).get(f"{stage}/bad_samples")
            history = run_history(done)
            write_history(cfg.run.output, history)
            tracker.stage(stage, history)
        log(f"{stage}: done in {time.monotonic() - tic:.0f} s; {_brief(result.metrics)}")
    if "evaluate" not in stages:
        return {}
    written = publish(done["evaluate"], cfg.run.output, then=tracker.outputs)
    log(f"wrote {len(written)} files to {cfg.run.output}")
    metrics = storage.read_json(storage.join(cfg.run.output, "metrics.json"))
    tracker.evaluation(summary(metrics))
    return metrics


def _brief(metrics: dict[str, Any] | None) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (metrics or {}).items()
    )
