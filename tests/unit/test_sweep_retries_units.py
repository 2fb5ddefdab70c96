"""Tune x Train retries (ltad/sweep/driver.py `_launch`): a stage Ray Train gave up on is not launched
again when Tune retries its trial in the same sweep, so a deterministic error runs `run.max_failures + 1`
times in all (Ray Train's count), not squared. Ray Train's `fit` is faked: this is the error path."""

from __future__ import annotations

import json

import pytest
import yaml

from ltad.io import storage
from ltad.sweep import driver
from ltad.sweep.space import load_space
from ltad.training.inputs import StageInput


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "levels": [{"profile": "exp", "ratio": 10, "data": str(tmp_path / "data")}],
                "prompt_lengths": [2],
                "synthesis_ratios": [0.0],
                "root": str(tmp_path / "sweep"),
            }
        )
    )
    return load_space(path, overrides=["run.max_failures=2"])


def test_a_stage_ray_train_gave_up_on_is_not_launched_again_by_tunes_retry(space, monkeypatch):
    fits: list[str] = []
    job = {"id": "01000000"}

    def failing_fit(fn, inp, *, name, **kwargs):
        fits.append(name)  # Ray Train's own max_failures + 1 attempts happen inside this one call
        raise RuntimeError(f"Training failed: DataError: shard {name} is truncated")

    monkeypatch.setattr(driver, "fit", failing_fit)
    monkeypatch.setattr(driver, "_ray_job", lambda: job["id"])
    inp = StageInput(config=space.base, deepspeed={}, git_commit="c0ffee")
    with pytest.raises(RuntimeError, match="truncated"):
        driver._launch(space, driver.TRIAL_STAGE, "exp10-a", None, inp)
    record = json.loads(storage.read_bytes(driver.gave_up_uri(space, driver.TRIAL_STAGE, "exp10-a")))
    assert record["ray_job"] == "01000000"
    assert record["error"].startswith("Ray Train gave up after run.max_failures=2 retries: ")
    # Tune retries the trial (run.max_failures times): each fails at once with the same error
    for _ in range(2):
        with pytest.raises(
            driver.StageGaveUp, match="exp10-a-phase2-evaluate: not launched again: .*truncated"
        ):
            driver._launch(space, driver.TRIAL_STAGE, "exp10-a", None, inp)
    assert fits == ["exp10-a-phase2-evaluate"]
    assert driver.launches(space, driver.TRIAL_STAGE) == ["exp10-a"]  # the record is not a launch
    # another trial, and the same one in a later sweep (another Ray job, e.g. after fixing the data), run
    with pytest.raises(RuntimeError):
        driver._launch(space, driver.TRIAL_STAGE, "exp10-b", None, inp)
    job["id"] = "02000000"
    with pytest.raises(RuntimeError):
        driver._launch(space, driver.TRIAL_STAGE, "exp10-a", None, inp)
    assert fits == ["exp10-a-phase2-evaluate", "exp10-b-phase2-evaluate", "exp10-a-phase2-evaluate"]


def test_a_stage_that_finishes_leaves_no_record(space, monkeypatch):
    monkeypatch.setattr(driver, "fit", lambda fn, inp, *, name, **kw: f"result of {name}")
    monkeypatch.setattr(driver, "_ray_job", lambda: "01000000")
    assert driver._launch(
        space, "phase1", "exp10-L2", None, StageInput(config=space.base, deepspeed={}, git_commit="c0ffee")
    ) == ("result of exp10-L2-phase1")
    assert not storage.exists(driver.gave_up_uri(space, "phase1", "exp10-L2"))
