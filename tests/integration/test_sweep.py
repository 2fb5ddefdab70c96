"""tune/sweep.py as a Ray job on a local head: a four-trial sweep that is killed and restored.

One sweep (1 level x 2 prompt lengths x 2 synthesis ratios, tiny model, 1 worker per trial so two
trials run at once on 2 CPUs) is submitted, stopped as soon as its first trial has published its
metrics, and submitted again. The tests check the finished sweep (sweep.json, 4 metrics.json, phase 1
exactly once per prompt length, the cache built once), that the restore kept the finished trials, and
that a third submission with another `--set` under the same root is refused before anything runs.
"""

from __future__ import annotations

import re
import time

import pytest
import yaml

from tests.integration.conftest import REPO, tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _space(tmp, data_uri: str, root: str) -> str:
    cfg = tiny_config(
        tmp,
        data_uri,
        # the sweep's own cache (data.cache_uri), so "built once" holds whichever test ran before
        data={"use_feature_cache": True, "cache_uri": f"{root}/cache"},
        phase2={"steps": 6, "validate_every": 2},
        scaling={"num_workers": 1, "cpus_per_worker": 0.99},
        run={
            "log_every": 2,
            "checkpoint_every": 2,
            "max_failures": 0,
            # Tune's MLflow callback, into a store on this machine (the job's driver runs here)
            "loggers": ["mlflow"],
            "tracking_uri": str(tmp / "mlruns"),
        },
    )
    (tmp / "base.yaml").write_text(cfg.to_yaml())
    space = {
        "name": "test",
        "config": str(tmp / "base.yaml"),
        "levels": [{"profile": "exp", "ratio": 4, "data": data_uri}],
        "prompt_lengths": [1, 2],
        "synthesis_ratios": [0.0, 0.5],
        "root": root,
        # a grace period beyond the run keeps all four trials (ASHA still sees every phase-2 report,
        # each with the validation AUROC of the model at that step)
        "asha": {"metric": "val_image_AUROC", "mode": "max", "grace_period": 50, "max_t": 50},
    }
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    return str(tmp / "space.yaml")


def _wait(client, job: str, timeout: float, until=None) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(job)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        if until is not None and until():
            return "condition"
        time.sleep(1)
    raise AssertionError(f"job {job} still {status} after {timeout} s:\n{client.get_job_logs(job)[-4000:]}")


def _wait_released(address: str, timeout: float) -> None:
    """Until no Ray Train worker is alive and no placement group holds resources on the head."""
    from ray.util.state import list_actors, list_placement_groups

    deadline = time.monotonic() + timeout
    while True:
        workers = list_actors(
            address=address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
            raise_on_missing_output=False,
        )  # fmt: skip
        groups = list_placement_groups(
            address=address, filters=[("state", "=", "CREATED")], raise_on_missing_output=False
        )
        if not workers and not groups:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the stopped sweep still holds {len(workers)} Ray Train workers and {len(groups)} "
                f"placement groups after {timeout:.0f} s"
            )
        time.sleep(1)


@pytest.fixture(scope="module")
def killed_and_restored(ray_head, tiny_data, s3_server, tmp_path_factory):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from ltad.io import storage
    from ltad.sweep.space import load_space

    tmp = tmp_path_factory.mktemp("sweep")
    root = f"s3://{s3_server.bucket}/sweep-{tmp.name}"
    space_file = _space(tmp, tiny_data, root)
    client = JobSubmissionClient(ray_head["RAY_ADDRESS"])
    # tmp/: scratch space of whoever works in this checkout (not in .rayignore), never needed by a job
    env = {"working_dir": str(REPO), "excludes": ["/tmp/"]}

    def published() -> list[str]:
        return [u for u in storage.list(f"{root}/trials") if u.endswith("/metrics.json")]

    first = client.submit_job(entrypoint=f"python tune/sweep.py --config {space_file}", runtime_env=env)
    state = _wait(client, first, 600, until=lambda: bool(published()))
    assert state == "condition", client.get_job_logs(first)[-4000:]
    done_before = {u.split("/")[-2]: storage.read_bytes(u) for u in published()}
    client.stop_job(first)
    assert _wait(client, first, 120) == JobStatus.STOPPED
    first_log = client.get_job_logs(first)
    # a stopped job's Ray Train workers and placement groups are released asynchronously: the
    # resubmission waits for them, so its trials do not queue behind the stopped job's leftovers
    _wait_released(ray_head["RAY_ADDRESS"], 180)
    second = client.submit_job(
        entrypoint=f"python tune/sweep.py --config {space_file} --resume", runtime_env=env
    )
    assert _wait(client, second, 600) == JobStatus.SUCCEEDED, client.get_job_logs(second)[-6000:]
    return (
        load_space(space_file),
        done_before,
        first_log,
        client.get_job_logs(second),
        (client, space_file, env),
    )


def test_four_trials_finish_with_sweep_json_and_phase1_once_per_length(killed_and_restored):
    from ltad.eval.summary import collect, read_sweep
    from ltad.io import storage
    from ltad.sweep.driver import launches

    space, _, first_log, log, _ = killed_and_restored
    sweep = read_sweep(space.root)
    names = sorted(t.name for t in space.trials())
    assert sorted(t["name"] for t in sweep["trials"]) == names and len(names) == 4
    assert {t["status"] for t in sweep["trials"]} == {"finished"} and sweep["metric"] == "val_image_AUROC"
    for name in names:
        metrics = storage.read_json(f"{space.root}/trials/{name}/metrics.json")
        assert 0.0 <= metrics["image_AUROC"] <= 1.0
        assert metrics["provenance"]["feature_cache"]  # every trial read the shared cache
    results, missing = collect([space.root], [])
    assert len(results) == 4 and not missing
    assert all(0.0 <= r.values["val_image_AUROC"] <= 1.0 for r in results)  # chosen by validation
    assert {(r.prompt_length, r.synthesis_ratio) for r in results} == {(1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5)}
    # phase 1 ran exactly once per prompt length, the cache once for the level, across both jobs
    assert launches(space, "phase1") == ["exp4-L1", "exp4-L2"]
    assert len(launches(space, "encode")) == 1
    # the cache is built on the configured workers (scaling.num_workers), not what the cluster holds
    assert re.findall(r"building the feature cache on (\d+) workers", first_log) == ["1"]
    # the local head declares `ltad_driver` like cluster.yaml's: drivers hold no CPU, Tune queues all
    assert "trial drivers take {'CPU': 0, 'ltad_driver': 1}; at most all trials at once" in first_log
    assert "sweep test: {'finished': 4}" in log


def test_each_trial_has_its_history_and_an_mlflow_run(killed_and_restored):
    """history.jsonl per trial (its shared phase 1, then its phase 2); Tune's MLflowLoggerCallback
    logged each trial (runs of the killed first job's unfinished trials stay unfinished there)."""
    import json
    import math

    from mlflow.tracking import MlflowClient

    from ltad.io import storage
    from ltad.training.tracking import allow_file_store, mlflow_uri

    space = killed_and_restored[0]
    base = space.base
    for trial in space.trials():
        records = [
            json.loads(x) for x in storage.read_bytes(f"{space.trial_dir(trial)}/history.jsonl").splitlines()
        ]
        steps = [(r["stage"], r["step"]) for r in records]
        assert steps == [("phase1", s) for s in range(2, base.phase1.steps + 1, 2)] + [
            ("phase2", s) for s in range(2, base.phase2.steps + 1, 2)
        ]
        assert all(math.isfinite(r["loss"]) for r in records)
        # phase 2 validated the model at every logged step (phase2.validate_every = run.log_every)
        assert all(0.0 <= r["val_image_AUROC"] <= 1.0 for r in records if r["stage"] == "phase2")
    uri = mlflow_uri(base.run)
    allow_file_store(uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(space.name)
    runs = client.search_runs([experiment.experiment_id])
    finished = [r for r in runs if r.info.status == "FINISHED"]
    # a trial that finished after Tune's last snapshot of the killed job is restored and republished,
    # so it may have two finished runs; the republishing one reports no phase-2 steps
    # each run's params are the trial's Tune config: its level and its swept fields' values
    setting = ("model.prompts.length", "phase2.synthesis_ratio")
    logged = {(r.data.params["level"], *(float(r.data.params[k]) for k in setting)) for r in finished}
    assert logged == {(t.level.name, *(float(t.params[k]) for k in setting)) for t in space.trials()}
    for run in finished:
        assert 0.0 <= run.data.metrics["image_AUROC"] <= 1.0
    # phase-2 reports per setting, over all of its runs: a trial stopped by the kill logged its steps
    # so far in the first job's run and resumes from its last checkpoint in the second job's (where
    # the kill fell decides the split: before phase 2 ended, after it, or during evaluation)
    by_setting: dict[tuple, list] = {}
    for r in runs:
        by_setting.setdefault(
            (r.data.params["level"], *(float(r.data.params[k]) for k in setting)), []
        ).append(r)
    assert len(by_setting) == len(space.trials())
    every_step = {float(s) for s in range(base.run.log_every, base.phase2.steps + 1, base.run.log_every)}
    for key, group in by_setting.items():
        history = {r.info.run_id: client.get_metric_history(r.info.run_id, "step") for r in group}
        assert {m.value for h in history.values() for m in h} == every_step, key
        for r in group:
            losses = client.get_metric_history(r.info.run_id, "phase2/loss")
            assert all(math.isfinite(m.value) for m in losses)
            # what ASHA ranked: the validation AUROC in every phase-2 report
            assert len(client.get_metric_history(r.info.run_id, "val_image_AUROC")) >= len(
                history[r.info.run_id]
            )


def test_restore_keeps_finished_trials_and_completes_the_rest(killed_and_restored):
    from ltad.io import storage
    from ltad.sweep.driver import TRIAL_STAGE, launches

    space, done_before, _, log, _ = killed_and_restored
    assert done_before and "restoring the experiment" in log
    evaluated = launches(space, TRIAL_STAGE)  # phase 2 + evaluation: one stage per trial
    for name, metrics in done_before.items():
        assert evaluated.count(name) == 1
        assert storage.read_bytes(f"{space.root}/trials/{name}/metrics.json") == metrics
    assert sorted(set(evaluated)) == sorted(t.name for t in space.trials())


def test_rerun_with_other_settings_under_the_same_root_is_refused(killed_and_restored):
    """A re-run with another --set would have republished the old evaluations: now one sentence, exit 2."""
    from ray.job_submission import JobStatus

    from ltad.sweep.driver import TRIAL_STAGE, launches

    space, _, _, _, (client, space_file, env) = killed_and_restored
    evaluated = launches(space, TRIAL_STAGE)
    job = client.submit_job(
        entrypoint=f"python tune/sweep.py --config {space_file} --set phase2.steps=7", runtime_env=env
    )
    assert _wait(client, job, 300) == JobStatus.FAILED
    errors = [line for line in client.get_job_logs(job).splitlines() if "tune/sweep.py: error:" in line]
    assert len(errors) == 1, client.get_job_logs(job)[-4000:]
    assert "already holds a phase2-evaluate run made from other inputs (phase2.steps differs)" in errors[0]
    assert f"another root (--root) or delete {space.root}" in errors[0]
    assert launches(space, TRIAL_STAGE) == evaluated  # nothing ran
