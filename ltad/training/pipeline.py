"""The driver side of a training job: encode (if needed), phase 1, phase 2, evaluate, publish.

Runs on the Ray driver (`ray job submit ... python jobs/train.py`, or `ltad train`). All stages run in
one `TorchTrainer` run (`{run.name}-job`, `stages.run_job`), so workers start once; each stage keeps
its checkpoints in its own run directory `{run.name}-{stage}` under `run.storage_path`, so rerunning the
same job skips finished stages and resumes the unfinished one from its latest checkpoint. Bad input
(no manifest, a missing DeepSpeed config, an unreachable bucket) fails here, before any worker starts.
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
from ltad.training.store import latest_final, uri_of
from ltad.training.tracking import Tracker

Log = Callable[[str], None]
_log = get_logger("pipeline").info


def publish(checkpoint, output: str, then: Callable[[Path], None] | None = None) -> list[str]:
    """Copy a finished evaluation's files (metrics, report, overlays, model) from its directory (a URI or
    `ray.train.Checkpoint`) to a local dir or S3 prefix, metrics.json last; S3 to S3 by server-side
    copy, so no byte passes through the driver. The model's encoder weights, which the evaluation only
    refers to by sha256, are copied from their source into the published model (checked to be that
    content first: `blobs.copy_checked`). `then` gets a local folder holding the published files
    (downloaded for it only) before it is removed."""
    source = uri_of(checkpoint)
    prefix = source.rstrip("/") + "/"
    sizes = {u[len(prefix) :]: n for u, n in storage.list_sizes(source) if u.startswith(prefix)}
    rels = sorted(r for r in sizes if not (r.startswith(".") or "/." in r))  # no markers, no Ray metadata
    last = [r for r in rels if r == "metrics.json"]
    written = []
    for rel in [r for r in rels if r != "metrics.json"]:
        storage.copy(prefix + rel, storage.join(output, rel), size=sizes[rel])
        written.append(storage.join(output, rel))
    written += _publish_encoder_weights(prefix, rels, output)
    for rel in last:
        storage.copy(prefix + rel, storage.join(output, rel), size=sizes[rel])
        written.append(storage.join(output, rel))
    if then is not None:
        with tempfile.TemporaryDirectory(prefix="ltad-publish-") as tmp:
            base = output.rstrip("/") + "/"
            for uri in written:
                storage.copy(uri, str(Path(tmp) / uri[len(base) :]))
            then(Path(tmp))
    return written


def _publish_encoder_weights(prefix: str, rels: list[str], output: str) -> list[str]:
    """The encoder weights each published model's export.json refers to without carrying them,
    copied from their source into that model's folder; the URIs written."""
    import json

    from ltad.io import blobs

    written = []
    for rel in rels:
        if rel.rsplit("/", 1)[-1] != "export.json":
            continue
        record = json.loads(storage.read_bytes(prefix + rel)).get("encoder_weights") or {}
        folder = rel.rsplit("/", 1)[0] if "/" in rel else ""
        name = f"{folder}/{record.get('file')}" if folder else str(record.get("file"))
        if not record or name in rels:  # no checkpoint file, or an evaluation that carries its copy
            continue
        dst = storage.join(output, name)
        blobs.copy_checked(record["source"], record["sha256"], dst, etag=record.get("etag"))
        written.append(dst)
    return written


def stage_checkpoint(cfg: LTADConfig, stage: str, uri: str | None = None) -> str:
    """A stage's finished checkpoint directory as a URI: `uri`, else the stage's newest final one."""
    from ltad.training.checkpoint import MODEL_FILE

    if uri is None:
        root = run_root(cfg, stage)
        found = latest_final(root)
        if found is None:
            raise ConfigError(
                f"no finished {stage} checkpoint under {root}: train first or pass --checkpoint"
            )
        return found
    uri = uri.rstrip("/")
    if not storage.is_s3(uri):
        uri = str(Path(uri).resolve())
    if not storage.exists(storage.join(uri, MODEL_FILE)):
        raise ConfigError(
            f"checkpoint '{uri}' has no {MODEL_FILE}: expected a finished {stage} checkpoint directory"
        )
    return uri


def latest_evaluation(root: str) -> str | None:
    """The newest complete evaluation directory under `root` (one holding metrics.json), or None."""
    from ltad.training.checkpoint import EVALUATION_PREFIX

    found = sorted(
        u.rsplit("/", 1)[0]
        for u in storage.list(root)
        if u.endswith("/metrics.json") and u.rsplit("/", 2)[-2].startswith(EVALUATION_PREFIX)
    )
    return found[-1] if found else None


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
    # before any stage: locations every node can reach, a checkpoint given by `--checkpoint` included
    given = [("--checkpoint", uri_of(c)) for c in (checkpoints or {}).values()]
    cfg = preflight.check_run(cfg, log, given)
    with Tracker(cfg, log) as tracker:
        return _run_stages(cfg, tracker, stages, checkpoints, log)


def _run_stages(
    cfg: LTADConfig, tracker: Tracker, stages: tuple[str, ...], checkpoints: dict[str, Any] | None, log: Log
) -> dict:
    from ltad.training.stages import STAGE_SECONDS, run_job

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
    run: list[str] = [s for s in ("phase1", "phase2", "evaluate") if s in stages]
    if (
        cfg.data.use_feature_cache
        and find_cache(data_uri, cfg.model.encoder, manifest, cfg.data.cache_uri) is None
    ):
        log("feature cache: encoding train and test shards once")
        run.insert(0, "encode")
    given: dict[str, Any] = dict(checkpoints or {})
    for stage, needs in (("phase2", "phase1"), ("evaluate", "phase2")):
        if stage in run and needs not in run and needs not in given:
            given[needs] = stage_checkpoint(cfg, needs)  # its identity was checked above
    for stage in run:
        if stage != "encode":
            identities.claim(stage)
    inp = replace(
        base,
        stages=tuple(run),
        phase1_checkpoint=given.get("phase1"),
        phase2_checkpoint=given.get("phase2"),
        identity=identities.provenance(),
    )
    log(f"{', '.join(run)}: starting in one worker group")
    tic = time.monotonic()
    result = fit(run_job, inp, name=f"{cfg.run.name}-job")
    seconds = {k.removeprefix(STAGE_SECONDS): v for k, v in (result.metrics or {}).items()}
    own = sum(v for k, v in seconds.items() if k in run)
    log(f"job: done in {time.monotonic() - tic:.0f} s, of which stages {own:.0f} s")
    finals = {s: given.get(s) for s in ("phase1", "phase2")}
    for stage in run:
        last: dict[str, Any] = {}
        if stage in finals:
            finals[stage] = stage_checkpoint(cfg, stage)
            history = run_history(finals)
            write_history(cfg.run.output, history)
            tracker.stage(stage, history)
            records = [r for r in history if r.get("stage") == stage]
            if records:
                last = {"step": records[-1]["step"]}
                last |= {
                    f"{stage}/{k}": v for k, v in records[-1].items() if k not in ("stage", "step", "time")
                }
        log(f"{stage}: done in {seconds.get(stage, 0.0):.0f} s; {_brief(last)}".rstrip("; "))
    if "evaluate" not in run:
        return {}
    evaluation = latest_evaluation(run_root(cfg, "evaluate"))
    if evaluation is None:
        raise ConfigError(f"the evaluation left no results under {run_root(cfg, 'evaluate')}")
    written = publish(evaluation, cfg.run.output, then=tracker.outputs if tracker.mlflow else None)
    log(f"wrote {len(written)} files to {cfg.run.output}")
    metrics = storage.read_json(storage.join(cfg.run.output, "metrics.json"))
    tracker.evaluation(summary(metrics))
    return metrics


def _brief(metrics: dict[str, Any] | None) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (metrics or {}).items()
    )
