"""The driver side of a training job: encode (if needed), phase 1, phase 2, evaluate, publish.

Runs on the Ray driver (`ray job submit ... python jobs/train.py`, or `ltad train`); each stage is a
`TorchTrainer` run named `{run.name}-{stage}` under `run.storage_path`, so rerunning the same job
resumes every unfinished stage from its latest checkpoint. Bad input (no manifest, a missing DeepSpeed
config, an unreachable bucket) fails here, before any worker starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ltad.config import LTADConfig
from ltad.data import storage
from ltad.data.manifest import read_manifest
from ltad.errors import ConfigError
from ltad.training.engine import load_zero_config
from ltad.training.feature_cache import cache_uri, encode_shards, find_cache, write_cache_manifest
from ltad.training.identity import RunIdentities, run_root
from ltad.training.ray_run import fit

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(f"[ltad {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def git_commit() -> str:
    """LTAD_GIT_COMMIT (set by whoever submits from a checkout), else `git rev-parse`, else 'unknown'."""
    if os.environ.get("LTAD_GIT_COMMIT"):
        return os.environ["LTAD_GIT_COMMIT"]
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def encode_stage(config: dict[str, Any]) -> None:
    """Train function: each worker encodes its share of the shards; rank 0 writes the cache manifest."""
    import ray.train

    from ltad.eval.evaluate import gather_to_rank0
    from ltad.models.encoder import Encoder
    from ltad.training.phases import worker

    w = worker(config)
    encoder = Encoder(w.cfg.model.encoder).to(w.device)
    out = cache_uri(w.data_uri, w.cfg.model.encoder, w.manifest)
    written = encode_shards(
        encoder,
        w.data_uri,
        w.manifest,
        out,
        rank=w.rank,
        world_size=w.world_size,
        batch_size=w.cfg.eval.batch_size,
    )
    gathered = gather_to_rank0(written, w.rank, w.world_size)
    if w.rank == 0:
        everything = [entry for part in gathered for entry in part]
        write_cache_manifest(out, w.manifest, everything, w.cfg.model.encoder, encoder.weights_provenance())
    ray.train.report({"encoded_shards": len(written)})


def publish(checkpoint, output: str) -> list[str]:
    """Copy a checkpoint's files (metrics, report, overlays, model) to a local dir or S3 prefix."""
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
    checked before any stage runs.
    """
    from ltad.eval.evaluate import evaluate
    from ltad.training.phases import phase1, phase2

    data_uri = cfg.data.uri
    if not data_uri:
        raise ConfigError(
            "data.uri is empty: pass --data s3://bucket/prefix (a prefix holding manifest.json)"
        )
    manifest = read_manifest(data_uri)
    ds_base = load_zero_config(cfg.scaling.zero_stage)
    commit = git_commit()
    identities = RunIdentities(cfg, manifest, commit, stages=stages, supplied=checkpoints, log=log)
    base = {"config": cfg.to_dict(), "data_uri": data_uri, "deepspeed": ds_base, "git_commit": commit}
    log(
        f"{manifest.dataset}: {len(manifest.classes)} classes, {manifest.samples('train')} train / "
        f"{manifest.samples('test')} test images; {cfg.scaling.num_workers} workers, ZeRO-{cfg.scaling.zero_stage}"
    )
    if cfg.data.use_feature_cache and find_cache(data_uri, cfg.model.encoder, manifest) is None:
        log("feature cache: encoding train and test shards once")
        fit(encode_stage, base, cfg, name=f"{cfg.run.name}-encode")
    done: dict[str, Any] = dict(checkpoints or {})
    training: dict[str, Any] = {}  # what evaluation records about training (skipped corrupt samples)
    for stage, fn, needs in (
        ("phase1", phase1, None),
        ("phase2", phase2, "phase1"),
        ("evaluate", evaluate, "phase2"),
    ):
        if stage not in stages:
            continue
        if needs and needs not in done:
            done[needs] = stage_checkpoint(cfg, needs)  # its identity was checked above
        extra = {f"{needs}_checkpoint": done[needs]} if needs else {}
        log(f"{stage}: starting")
        tic = time.monotonic()
        identities.claim(stage)
        if stage == "evaluate":
            extra["training"] = training
            extra["identity"] = identities.provenance()
        result = fit(fn, {**base, **extra}, cfg, name=f"{cfg.run.name}-{stage}")
        done[stage] = result.checkpoint
        if stage != "evaluate":
            training[f"{stage}_bad_samples"] = (result.metrics or {}).get(f"{stage}/bad_samples")
        log(f"{stage}: done in {time.monotonic() - tic:.0f} s; {_brief(result.metrics)}")
    if "evaluate" not in stages:
        return {}
    written = publish(done["evaluate"], cfg.run.output)
    log(f"wrote {len(written)} files to {cfg.run.output}")
    return storage.read_json(storage.join(cfg.run.output, "metrics.json"))


def _brief(metrics: dict[str, Any] | None) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (metrics or {}).items()
    )


def load_config(
    path: str | None, *, data: str | None = None, output: str | None = None, overrides=()
) -> LTADConfig:
    """The run config: YAML file (or defaults), then `--set key=value` overrides, then --data/--output."""
    cfg = LTADConfig.from_yaml(path) if path else LTADConfig()
    extra = list(overrides)
    if data:
        extra.append(f"data.uri={data}")
    if output:
        extra.append(f"run.output={output}")
    return cfg.with_overrides(extra)


def add_run_arguments(parser) -> None:
    """--config / --data / --output / --set, shared by `ltad train`, `ltad evaluate` and the jobs."""
    parser.add_argument("--config", help="run config YAML (configs/demo.yaml, configs/mvtec.yaml, ...)")
    parser.add_argument("--data", help="prepared shard prefix holding manifest.json (overrides data.uri)")
    parser.add_argument("--output", help="local dir or s3:// prefix for metrics, report, overlays, model")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
