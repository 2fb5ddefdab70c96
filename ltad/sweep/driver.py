"""The sweep on Ray Tune: function trainables (trial drivers) that each fit `TorchTrainer` runs.

Order of work, each step skipped when its result is already in storage (so a restarted sweep resumes):
1. the feature cache of every level (one `encode` run per level, from the job driver, on
   `scaling.num_workers` workers);
2. Tune experiment `phase1`: one trial per shared phase-1 run (level x the values of the swept fields
   phase 1 depends on, ltad/sweep/space.py) training phase 1 under the deterministic run name
   `{phase1 run}-phase1` (e.g. `exp10-L2-phase1`); a finished checkpoint there is reused;
3. Tune experiment `trials`: the trials the space's search algorithm gives (grid: every level x
   every grid point; random: Tune's sampling; optuna: one Optuna study per level, ltad/sweep/search.py),
   each config {'level': name, key: value, ...}; each trial loads its phase-1 run's
   checkpoint and runs phase 2 and the evaluation as one stage (`phase2-evaluate`; its phase-2
   metrics, with the validation AUROC every `phase2.validate_every` steps, go to Tune for ASHA every
   `run.log_every` steps; ASHA compares trials of one imbalance level only), and publishes the evaluation to
   `<root>/trials/<trial>/` with the trial's history.jsonl (phase 1 and phase 2); `sweep.json` is
   rewritten as trials end. With `run.loggers` holding mlflow, Ray Tune's own MLflowLoggerCallback
   logs every trial (its config: the level and every swept field's value as params, and every result
   Tune receives) as one MLflow run of the experiment
   named after the sweep (ltad/training/tracking.py: `run.tracking_uri`, else `<root>/mlruns` when
   the root is local).
Both experiments live under `<root>/tune/` and are restored with `Tuner.restore` when present, so
finished trials are never re-run. Every stage a trial launches leaves `<root>/launches/<stage>/...`.
With `reuse: false` (the naive baseline of benchmarks/sweep_reuse.py) steps 1-2 are skipped and every
trial encodes images online and trains its own phase 1.

Nothing is reused by name alone: every phase-1 run and trial stage records its run identity
(ltad/training/identity.py) and is resumed, reused or republished only when the current space gives
the same one; before Tune starts, the driver checks every stage already under the root and refuses a
mismatch in one sentence (start under another --root, or delete the root).

On a cluster that grows (an autoscaler adding GPU nodes as trials wait), trial drivers hold no CPU:
they ask for one unit of the custom resource `ltad_driver`, which only the head declares (cluster.yaml,
`scripts/ray-local`), so they never take a GPU node's CPUs, and Tune starts every trial at once (or
`max_concurrent`): each trial's TorchTrainer waits for its workers' placement group, which is the
demand the autoscaler scales on. Without `ltad_driver` on the cluster the drivers take 0.01 CPU
wherever Ray puts them and concurrency is fixed from the resources at start (a fixed cluster).
A trial whose driver dies (a preempted node) is retried up to `run.max_failures` times (Tune's
FailureConfig); it resumes its stage from the stage's checkpoints.

Retries are not multiplied: Ray Train already ran a failing stage `run.max_failures + 1` times (its
FailureConfig) before the trial sees the failure, so a stage that Ray Train gave up on leaves
`<root>/gave-up/<stage>/<run>.json` (with the Ray job's id and the error), and Tune's retry
of that trial in the same sweep (same Ray job) fails at once with that error instead of launching
the stage again; a deterministic DataError thus runs `max_failures + 1` times in all, not
(`max_failures + 1`)^2. A driver that died never writes the record, so its retry resumes the stage;
a later sweep (another Ray job, e.g. after the data was fixed) launches it again.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ltad.data.manifest import read_manifest
from ltad.errors import ConfigError
from ltad.eval.outputs import summary
from ltad.eval.summary import write_sweep
from ltad.eval.validation import VAL_METRIC
from ltad.io import storage
from ltad.log import get_logger
from ltad.sweep.space import Space, Trial
from ltad.training import identity, preflight
from ltad.training.cluster import DRIVER_RESOURCE
from ltad.training.feature_cache import find_cache
from ltad.training.history import run_history, write_history
from ltad.training.inputs import StageInput, git_commit, stage_input
from ltad.training.pipeline import latest_evaluation, publish, stage_checkpoint
from ltad.training.ray_run import fit, resolve_storage
from ltad.training.stages import EVALUATED, encode_stage, phase1, phase2_and_evaluate
from ltad.training.tracking import tune_mlflow_callbacks

DRIVER_CPU = 0.01
"""CPU of a trial's driver where no node declares `ltad_driver`; its TorchTrainer workers hold the
real resources."""
TUNE_STATUS = {"PENDING": "pending", "PAUSED": "pending", "RUNNING": "running", "ERROR": "error"}
TRIAL_STAGE = "phase2-evaluate"
"""The stage of a sweep trial: phase 2 and its evaluation in one worker group."""


log = get_logger("sweep").info


def record_launch(space: Space, stage: str, run: str) -> None:
    """One object per TorchTrainer stage a sweep starts: the audit trail of what ran (and how often)."""
    uri = storage.join(space.root, "launches", stage, f"{run}-{time.time_ns()}.json")
    storage.write_json(uri, {"stage": stage, "run": run, "time": time.time(), "pid": os.getpid()})


def launches(space: Space, stage: str) -> list[str]:
    """Run names of the `stage` launches recorded so far (one entry per launch)."""
    prefix = storage.join(space.root, "launches", stage)
    return sorted(u.rsplit("/", 1)[1].rsplit("-", 1)[0] for u in storage.list(prefix))


def _identities(cfg) -> dict[str, identity.Identity]:
    return identity.stage_identities(cfg, read_manifest(cfg.data.uri))


def _remedy(space: Space) -> str:
    return f"start the sweep under another root (--root) or delete {space.root} to start it over"


def _phase1_root(space: Space, trial: Trial) -> str:
    return identity.run_root(space.run_config(trial, phase1=True), "phase1")


def check_identities(space: Space, commit: str) -> None:
    """Before Tune starts: every phase-1 run and trial stage already under the root was made from the
    inputs the space gives now (else one RunIdentityError sentence; nothing has run yet)."""
    manifests = {lv.name: read_manifest(lv.data) for lv in space.levels}
    checked: set[str] = set()
    # a grid's trials are known now; the phase-1 runs of every search (those of proposed trials are
    # checked as each trial claims its stage)
    runs = [(t, True) for t in space.trials()] + [(t, False) for t in space.phase1_runs()]
    for trial, is_trial in runs:
        cfg = space.run_config(trial)
        ids = identity.stage_identities(cfg, manifests[trial.level.name])
        stages = [(_phase1_root(space, trial), "phase1", ids["phase1"])]
        if is_trial:
            stages.append((identity.run_root(cfg, TRIAL_STAGE), TRIAL_STAGE, ids["evaluate"]))
        for root, stage, ident in stages:
            if root not in checked:
                identity.check(root, ident, commit, stage=stage, remedy=_remedy(space))
                checked.add(root)


def _claim(space: Space, cfg, stage: str, ident: identity.Identity, commit: str) -> identity.Decision:
    root = identity.run_root(cfg, stage)
    return identity.claim(root, ident, commit, stage=stage, remedy=_remedy(space), log=log)


def _finished(cfg, stage: str):
    """The stage's finished checkpoint in storage, or None."""
    try:
        return stage_checkpoint(cfg, stage)
    except ConfigError:
        return None


def _trial(space: Space, config: dict[str, Any]) -> Trial:
    """The trial (or, by its name, the shared phase-1 run) a Tune config gives."""
    return space.trial(config)


def gave_up_uri(space: Space, stage: str, run: str) -> str:
    """Where a stage that Ray Train gave up on is recorded (see the module docstring)."""
    return storage.join(space.root, "gave-up", stage, f"{run}.json")


def _ray_job() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def _launch(space: Space, stage: str, run: str, fn, inp: StageInput, **kwargs):
    """Record, then fit, the TorchTrainer run `{run}-{stage}`; its `ray.train.Result`. Raises
    `StageGaveUp` without fitting when Ray Train gave up on this stage earlier in this sweep."""
    gave_up = gave_up_uri(space, stage, run)
    job = _ray_job()
    prior = storage.read_optional(gave_up)
    if prior is not None and json.loads(prior).get("ray_job") == job:
        raise StageGaveUp(f"{run}-{stage}: not launched again: {json.loads(prior)['error']}")
    record_launch(space, stage, run)
    try:
        return fit(fn, inp, name=f"{run}-{stage}", **kwargs)
    except (
        Exception
    ) as exc:  # Ray Train's retries are spent (or the start failed): Tune must not multiply them
        error = f"Ray Train gave up after run.max_failures={inp.config.run.max_failures} retries: {exc}"
        storage.write_json(gave_up, {"ray_job": job, "time": time.time(), "error": error[:4000]})
        raise


class StageGaveUp(RuntimeError):
    """A trial's stage that Ray Train gave up on earlier in this sweep (Tune's retry of the trial)."""


def _fits(cpus: float, gpus: int) -> int:
    """How many units of `cpus` CPUs (and `gpus` GPUs) the cluster holds now; 0 if not one."""
    import ray

    have = ray.cluster_resources()
    n = int(have.get("CPU", 0) / cpus + 1e-9)
    if gpus:
        n = min(n, int(have.get("GPU", 0) // gpus))
    return n


def phase1_trial(config: dict[str, Any], space: Space, commit: str) -> None:
    """Tune trial: phase 1 of one (level, prompt length), unless its final checkpoint already exists."""
    from ray import tune

    cfg = space.run_config(_trial(space, config), phase1=True)
    _claim(space, cfg, "phase1", _identities(cfg)["phase1"], commit)  # same inputs, or refused
    reused = _finished(cfg, "phase1") is not None
    if not reused:
        _launch(space, "phase1", cfg.run.name, phase1, stage_input(cfg, commit=commit))
    tune.report({"phase1_reused": reused})


def _evaluation(cfg) -> str | None:
    """The finished evaluation of a run (its directory holds metrics.json), or None."""
    return latest_evaluation(identity.run_root(cfg, TRIAL_STAGE))


def phase2_reports_class():
    """Ray Train callback class forwarding a stage's phase-2 reports to Tune, not its evaluation report.

    The trial reports the evaluation itself once it is published, so Tune counts phase-2 reports + 1
    iterations per trial (what ASHA's `max_t` in tune/*.yaml is set to), and ASHA can never stop a
    trial between its evaluation and the publishing of it.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class Phase2Reports(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and EVALUATED in metrics[0]:
                return
            super().after_report(run_context, metrics, checkpoint)

    return Phase2Reports


def _phase1_checkpoint(space: Space, trial: Trial, cfg, commit: str):
    """The phase-1 checkpoint a trial starts from: the shared one (made from the same inputs), or
    (naive sweep) its own."""
    ident = _identities(cfg)["phase1"]
    if space.reuse:
        shared = space.run_config(trial, phase1=True)
        identity.check(_phase1_root(space, trial), ident, commit, stage="phase1", remedy=_remedy(space))
        return stage_checkpoint(shared, "phase1")
    _claim(space, cfg, "phase1", ident, commit)
    done = _finished(cfg, "phase1")
    if done is not None:
        return done
    return _launch(space, "phase1", cfg.run.name, phase1, stage_input(cfg, commit=commit)).checkpoint


def sweep_trial(config: dict[str, Any], space: Space, commit: str) -> None:
    """Tune trial: (phase 1 when not shared,) phase 2 + evaluation of one setting; publishes the results.

    A trial whose evaluation is already in storage (it finished after Tune's last experiment
    snapshot, then was restored as unfinished) only republishes it. An interrupted phase-2 stage
    resumes from its latest checkpoint (same run name). Both only when the stage's recorded run
    identity is the one this trial's config gives.
    """
    from ray import tune

    trial = _trial(space, config)
    cfg = space.run_config(trial)
    last: dict[str, Any] = {}
    ids = _identities(cfg)
    _claim(space, cfg, TRIAL_STAGE, ids["evaluate"], commit)  # same inputs, or refused
    evaluation = _evaluation(cfg)
    if evaluation is None:
        start = _phase1_checkpoint(space, trial, cfg, commit)
        root = identity.run_root(cfg, TRIAL_STAGE)  # phase 2 and its evaluation share the trial's directory
        inp = stage_input(
            cfg, commit=commit, phase1_checkpoint=start, identity=_provenance(space, trial, cfg, ids)
        )
        inp = replace(inp, roots={**inp.roots, "phase2": root, "evaluate": root})
        # every phase-2 report (each run.log_every steps) reaches Tune as one result: ASHA's time axis
        callbacks = [phase2_reports_class()()]
        result = _launch(space, TRIAL_STAGE, cfg.run.name, phase2_and_evaluate, inp, callbacks=callbacks)
        evaluation = _evaluation(cfg)
        if evaluation is None:
            raise RuntimeError(f"{trial.name}: the evaluation left no results under {root}")
        last = {k: v for k, v in (result.metrics or {}).items() if k.startswith("phase2/")}
    else:
        log(f"{trial.name}: evaluated before, republishing its results")
    publish(evaluation, space.trial_dir(trial))
    _write_history(space, trial, cfg)
    metrics = storage.read_json(storage.join(space.trial_dir(trial), "metrics.json"))
    tune.report({**last, **summary(metrics), "published": space.trial_dir(trial)})


def _write_history(space: Space, trial: Trial, cfg) -> None:
    """The trial's history.jsonl: its phase 1 (shared or own) and its phase 2, from their final checkpoints."""
    p1 = space.run_config(trial, phase1=True) if space.reuse else cfg
    checkpoints = {"phase1": _finished(p1, "phase1"), "phase2": _finished(cfg, TRIAL_STAGE)}
    write_history(space.trial_dir(trial), run_history(checkpoints))


def _provenance(space: Space, trial: Trial, cfg, ids: dict[str, identity.Identity]) -> dict[str, Any]:
    """metrics.json's `identity`: fingerprints, and the commits recorded by the phase-1 run and the
    trial stage (phase 2 and the evaluation)."""
    p1 = _phase1_root(space, trial) if space.reuse else identity.run_root(cfg, "phase1")
    p1_commits = (identity.read(p1) or {}).get("commits") or []
    trial_commits = (identity.read(identity.run_root(cfg, TRIAL_STAGE)) or {}).get("commits") or []
    commits = {"phase1": p1_commits, "phase2": trial_commits, "evaluate": trial_commits}
    return identity.provenance(ids, commits)


def write_status(
    space: Space, statuses: dict[str, str], last: dict[str, dict] | None = None, seen: Sequence[Trial] = ()
) -> str:
    """sweep.json with every planned trial (a grid's) and every trial Tune has (`seen`: those a search
    algorithm proposed), each with its swept fields' values (`params`); Tune's TERMINATED is finished
    with results, stopped without. A stopped trial keeps the validation AUROC of its last Tune result
    in `last` (what ASHA stopped it on), so the summary can list it."""
    trials = []
    known = {t.name: t for t in [*space.trials(), *seen]}
    for t in known.values():
        status = statuses.get(t.name, "PENDING")
        if status == "TERMINATED":
            has = storage.exists(storage.join(space.trial_dir(t), "metrics.json"))
            status = "finished" if has else "stopped"
        else:
            status = TUNE_STATUS.get(status, status)
        entry: dict[str, Any] = {"name": t.name, "level": t.level.name, "status": status}
        entry["params"] = space.recorded_params(t)
        entry["path"] = f"trials/{t.name}"
        value = (last or {}).get(t.name, {}).get(VAL_METRIC)
        if status == "stopped" and isinstance(value, int | float) and math.isfinite(value):
            entry[VAL_METRIC] = float(value)
        trials.append(entry)
    levels = [lv.to_dict() for lv in space.levels]
    return write_sweep(space.root, space.name, levels, trials, metric=VAL_METRIC)


def _recorder(space: Space):
    from ray import tune

    class SweepRecorder(tune.Callback):
        """Rewrites sweep.json (in the sweep driver: one writer) whenever a trial starts or ends."""

        def _write(self, trials) -> None:
            named = [(space.trial(t.config), t) for t in trials]
            last = {s.name: t.last_result or {} for s, t in named}
            write_status(space, {s.name: t.status for s, t in named}, last, [s for s, _ in named])

        def on_trial_start(self, iteration, trials, trial, **info):
            self._write(trials)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._write(trials)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._write(trials)

    return SweepRecorder()


def driver_resources(cluster: dict[str, float]) -> dict[str, float]:
    """A trial driver's resources on a cluster holding `cluster` (ray.cluster_resources()): one
    `ltad_driver` unit and no CPU where a node declares that resource, else 0.01 CPU."""
    if cluster.get(DRIVER_RESOURCE, 0) >= 1:
        return {"CPU": 0, DRIVER_RESOURCE: 1}
    return {"CPU": DRIVER_CPU}


def max_concurrent(space: Space, drivers: dict[str, float]) -> int | None:
    """Tune's max_concurrent_trials: the space's `max_concurrent` when set; None (Tune starts every
    trial and each waits for its workers, which is what an autoscaler scales on) when the drivers sit
    on `ltad_driver`; else what the cluster holds now (a cluster without `ltad_driver` is taken as fixed)."""
    if space.max_concurrent:
        return space.max_concurrent
    if DRIVER_RESOURCE in drivers:
        return None
    return concurrency(space)


def concurrency(space: Space) -> int:
    """Trials that fit the cluster at once: its CPUs (and GPUs) over one trial's workers + driver."""
    sc = space.base.scaling
    per_trial = sc.num_workers * sc.cpus_per_worker + DRIVER_CPU
    n = _fits(per_trial, sc.num_workers if sc.use_gpu else 0)
    if n < 1:
        log(f"the cluster holds less than one trial now ({per_trial:g} CPUs, {sc.num_workers if sc.use_gpu else 0} "
            "GPUs): 1 at a time (an autoscaler adds nodes)")  # fmt: skip
    return max(n, 1)


class TrialName:
    """Tune's trial_name_creator: a Tune trial is named as the space names it (`exp10-L2-s0.25`), which
    MLflow's runs (Tune's MLflow callback) and Tune's progress tables then show."""

    def __init__(self, space: Space):
        self.space = space

    def __call__(self, trial) -> str:
        return self.space.trial(trial.config).name


def _tuner(
    space: Space,
    name: str,
    fn,
    param_space: dict[str, Any],
    commit: str,
    drivers: dict[str, float],
    *,
    callbacks=(),
    scheduler=None,
    search_alg=None,
    num_samples: int = 1,
):
    from ray import tune

    path, fs = resolve_storage(storage.join(space.root, "tune"), "")
    trainable = tune.with_resources(tune.with_parameters(fn, space=space, commit=commit), drivers)
    experiment = f"{path.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log(f"{name}: restoring the experiment in {space.root}/tune/{name} (finished trials are kept)")
        return tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent(space, drivers),
            trial_name_creator=TrialName(space),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=fs,
            callbacks=list(callbacks),
            # a trial whose driver died (e.g. its node was preempted) runs again and resumes its stage
            failure_config=tune.FailureConfig(max_failures=space.base.run.max_failures),
            verbose=1,
            # experiment snapshots reach storage within ~15 s (Tune's default is 5 min)
            sync_config=tune.SyncConfig(sync_period=15),
        ),
    )


def _asha(space: Space):
    """ASHA (time = Tune reports of a trial) within each imbalance level (ltad/sweep/scheduler.py)."""
    if not space.asha:
        return None
    from ltad.sweep.scheduler import LevelASHA

    settings = {"mode": "min", **space.asha}
    return LevelASHA({t.name: t.level.name for t in space.trials()}, **settings)


def search(space: Space) -> tuple[dict[str, Any], Any, int]:
    """The `trials` experiment's (param_space, search_alg, num_samples) for the space's `search`: grid
    (Tune's default generator over every grid point, once), random (the same generator, seeded with
    run.seed, `num_samples` draws per level and grid point), optuna (one study per level,
    `num_samples` trials each, on the space's metric and mode)."""
    if space.search == "optuna":
        from ltad.sweep.search import LevelSearch

        searcher = LevelSearch(
            [lv.name for lv in space.levels],
            space.search_space(),
            metric=space.metric,
            mode=space.mode,
            num_samples=space.num_samples,
            seed=space.base.run.seed,
        )
        return {}, searcher, space.num_samples * len(space.levels)
    if space.search == "random":
        from ray.tune.search import BasicVariantGenerator

        generator = BasicVariantGenerator(random_state=space.base.run.seed)
        return space.param_space(), generator, space.num_samples
    return space.param_space(), None, 1


def encode_levels(space: Space, commit: str) -> None:
    """The feature cache of each level, built once and shared by every trial of the level."""
    for trial in space.phase1_runs():
        cfg = space.run_config(trial, phase1=True)
        manifest = read_manifest(cfg.data.uri)
        if find_cache(cfg.data.uri, cfg.model.encoder, manifest, cfg.data.cache_uri) is None:
            log(f"{trial.level.name}: building the feature cache on {cfg.scaling.num_workers} workers")
            _launch(space, "encode", trial.level.name, encode_stage, stage_input(cfg, commit=commit))


def run_sweep(space: Space) -> dict[str, Any]:
    """Run (or resume) the whole sweep on the connected Ray cluster; returns the final sweep.json."""
    # A restored trial whose phase 2 had finished reports evaluation metrics without the ASHA metric.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    import ray

    space = preflight.check_sweep(space, log)  # before any stage: locations every node can reach
    trackers = tune_mlflow_callbacks(space.base.run, space.root, space.name)  # a bad setting fails here
    commit = git_commit()
    for level in space.levels:
        read_manifest(level.data)  # fail here, in one sentence, on a level that was never prepared
    check_identities(space, commit)  # and here, before anything runs, on a root made from other inputs
    param_space, search_alg, num_samples = search(space)
    planned = len(space.trials()) or f"{space.search} search of {num_samples}"
    fields = ", ".join(p.key for p in space.params)
    log(f"{space.name}: {planned} trials over {len(space.levels)} levels ({fields}) -> {space.root}")
    drivers = driver_resources(ray.cluster_resources())
    limit = max_concurrent(space, drivers)
    fixed = "" if DRIVER_RESOURCE in drivers else f" (no node declares '{DRIVER_RESOURCE}': a fixed cluster)"
    log(f"trial drivers take {drivers}; at most {limit or 'all'} trials at once{fixed}")
    if space.reuse:
        encode_levels(space, commit)
        from ray import tune

        runs = {"trial": tune.grid_search([t.phase1_name for t in space.phase1_runs()])}
        results = _tuner(space, "phase1", phase1_trial, runs, commit, drivers).fit()
        failed = [r.config["trial"] for r in results if r.error]
        if failed:
            raise RuntimeError(f"phase 1 failed for {failed}: see the trial errors above")
    write_status(space, {})
    results = _tuner(
        space,
        "trials",
        sweep_trial,
        param_space,
        commit,
        drivers,
        callbacks=[_recorder(space), *trackers],
        scheduler=_asha(space),
        search_alg=search_alg,
        num_samples=num_samples,
    ).fit()
    ran = [(space.trial(r.config), r) for r in results]
    statuses = {t.name: "ERROR" if r.error else "TERMINATED" for t, r in ran}
    write_status(space, statuses, {t.name: r.metrics or {} for t, r in ran}, [t for t, _ in ran])
    return storage.read_json(storage.join(space.root, "sweep.json"))
