"""Tune x Train retries on real Ray Tune and Ray Train (ltad/sweep/driver.py `_launch`): a trial whose
stage fails deterministically (a DataError in every attempt) runs that stage `run.max_failures + 1`
times in all (Ray Train's retries), not once more per Tune retry of the trial."""

from __future__ import annotations

import pytest
import yaml

pytestmark = [pytest.mark.integration]


def test_a_deterministic_data_error_runs_max_failures_plus_one_times(ray_local, tmp_path):
    from ray import tune

    from ltad.sweep import driver
    from ltad.sweep.space import load_space
    from ltad.training.inputs import StageInput

    (tmp_path / "space.yaml").write_text(
        yaml.safe_dump(
            {
                "levels": [{"profile": "exp", "ratio": 4, "data": str(tmp_path / "data")}],
                "prompt_lengths": [2],
                "synthesis_ratios": [0.0],
                "root": str(tmp_path / "sweep"),
            }
        )
    )
    space = load_space(
        tmp_path / "space.yaml",
        overrides=["run.max_failures=1", "scaling.num_workers=1", f"run.output={tmp_path / 'out'}"],
    )
    inp = StageInput(config=space.base, deepspeed={}, git_commit="test", roots={})
    attempts = tmp_path / "attempts.log"

    def stage(_loop):  # every attempt of the Train run appends a line, then meets the same bad data
        from ltad.errors import DataError

        with open(attempts, "a") as f:
            f.write("attempt\n")
        raise DataError("shard s3://b/exp4/train/c0-000000.tar holds 3 samples, its manifest says 4")

    def trial(config):
        driver._launch(space, driver.TRIAL_STAGE, "exp4-retry", stage, inp)

    tuner = tune.Tuner(
        tune.with_resources(trial, {"CPU": 0.01}),
        run_config=tune.RunConfig(
            name="retries",
            storage_path=str(tmp_path / "tune"),
            failure_config=tune.FailureConfig(max_failures=space.base.run.max_failures),
            verbose=0,
        ),
    )
    results = tuner.fit()
    assert results.num_errors == 1
    error = str(results[0].error)
    assert "not launched again" in error and "manifest says 4" in error, error[-2000:]
    assert attempts.read_text().count("attempt") == space.base.run.max_failures + 1  # 2, not 4
    assert driver.launches(space, driver.TRIAL_STAGE) == ["exp4-retry"]
