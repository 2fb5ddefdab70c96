"""Search-space files (ltad/sweep/space.py): trial names, run configs, and one-sentence errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ltad.errors import ConfigError
from ltad.sweep.space import load_space

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, **space) -> Path:
    base = {
        "levels": [{"profile": "exp", "ratio": 10, "data": "s3://b/exp10"}],
        "prompt_lengths": [2, 4],
        "synthesis_ratios": [0.0, 0.25],
        "root": "s3://b/sweeps/t",
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**base, **space}))
    return path


def test_shipped_spaces_load():
    for name in ("demo", "mvtec"):
        space = load_space(REPO / "tune" / f"{name}.yaml")
        assert space.asha and space.reuse
        assert (space.asha["metric"], space.asha["mode"]) == ("val_image_AUROC", "max")
        assert space.base.phase2.validate_every == space.base.run.log_every
    demo = load_space(REPO / "tune/demo.yaml")
    assert [lv.name for lv in demo.levels] == ["exp10", "exp100"] and len(demo.trials()) == 8


def test_trials_share_one_phase1_run_per_level_and_length(tmp_path):
    space = load_space(_write(tmp_path), overrides=["phase2.steps=7"])
    assert [t.name for t in space.trials()] == [
        "exp10-L2-s0",
        "exp10-L2-s0.25",
        "exp10-L4-s0",
        "exp10-L4-s0.25",
    ]
    assert [t.phase1_name for t in space.phase1_runs()] == ["exp10-L2", "exp10-L4"]
    trial = space.trials()[1]
    cfg = space.run_config(trial)
    assert (cfg.model.prompts.length, cfg.phase2.synthesis_ratio, cfg.phase2.steps) == (2, 0.25, 7)
    assert cfg.data.uri == "s3://b/exp10" and cfg.run.output == "s3://b/sweeps/t/trials/exp10-L2-s0.25"
    assert cfg.run.storage_path == "s3://b/sweeps/t/ray" and cfg.data.use_feature_cache
    assert space.run_config(trial, phase1=True).run.name == "exp10-L2"
    assert trial.params == {"model.prompts.length": 2, "phase2.synthesis_ratio": 0.25}


def test_naive_space_trains_phase1_per_trial_without_cache(tmp_path):
    space = load_space(_write(tmp_path, reuse=False))
    cfg = space.run_config(space.trials()[0], phase1=True)
    assert cfg.run.name == "exp10-L2-s0" and not cfg.data.use_feature_cache


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"prompt_lengths": [0]}, "config key 'model.prompts.length' must be an int in [1, 32], got 0"),
        ({"synthesis_ratios": [1.5]}, "config key 'phase2.synthesis_ratio' must be in [0, 1), got 1.5"),
        ({"levels": [{"profile": "exp", "ratio": 10}]}, "config key 'levels[].data' must be a shard prefix"),
        ({"levels": [{"profile": "zipf", "ratio": 10, "data": "d"}]}, "split profile 'zipf' is unknown"),
        (
            {"levels": [{"profile": "exp", "ratio": 10, "data": "d", "size": 1}]},
            "unknown config key 'levels[0].size'",
        ),
        ({"levels": []}, "config key 'levels' must be a non-empty list"),
        ({"grid": 1}, "unknown config key 'grid'"),
        ({"asha": {"mode": "min"}}, "config key 'asha.metric' must be a metric the trials report"),
        (
            {"asha": {"metric": "phase2/loss", "mode": "lowest"}},
            "config key 'asha.mode' must be one of 'min', 'max'",
        ),
        ({"set": ["phase2.nope=1"]}, "unknown config key 'phase2.nope'"),
    ],
)
def test_bad_space_is_one_clear_error(tmp_path, space, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_space(_write(tmp_path, **space))
    assert message in str(err.value)


@pytest.mark.parametrize(
    "resources, want",
    [
        ({"CPU": 0.0, "ltad_driver": 16.0}, {"CPU": 0, "ltad_driver": 1}),  # the head in cluster.yaml
        ({"CPU": 2.0, "ltad_driver": 8.0}, {"CPU": 0, "ltad_driver": 1}),  # scripts/ray-local
        ({"CPU": 2.0}, {"CPU": 0.01}),  # a cluster that does not declare it: today's driver
        ({"CPU": 8.0, "ltad_driver": 0.5}, {"CPU": 0.01}),  # not one whole unit anywhere
    ],
)
def test_trial_drivers_sit_on_ltad_driver_when_the_cluster_declares_it(resources, want):
    from ltad.sweep.driver import driver_resources

    assert driver_resources(resources) == want


@pytest.mark.parametrize(
    "resources, overrides, limit, want",
    [
        ({"CPU": 0.0, "ltad_driver": 16.0}, [], None, None),  # autoscaling: Tune queues every trial
        ({"CPU": 0.0, "ltad_driver": 16.0}, [], 3, 3),  # --max-concurrent 3
        ({"CPU": 2.0}, ["scaling.cpus_per_worker=0.99"], None, 2),  # fixed: what fits now
        ({"CPU": 2.0}, ["scaling.cpus_per_worker=1"], None, 1),  # 1 + 0.01 driver: one at a time
        ({"CPU": 64.0, "GPU": 8.0}, ["scaling.use_gpu=true", "scaling.cpus_per_worker=4"], None, 8),
        ({"CPU": 0.5}, [], 5, 5),
    ],
)
def test_concurrency_follows_the_cluster_unless_fixed(
    monkeypatch, tmp_path, resources, overrides, limit, want
):
    import ray

    from ltad.sweep.driver import driver_resources, max_concurrent

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    space = load_space(_write(tmp_path), overrides=overrides, max_concurrent=limit)
    assert max_concurrent(space, driver_resources(resources)) == want


def test_max_concurrent_from_the_space_file_and_bad_values(tmp_path):
    assert load_space(_write(tmp_path, max_concurrent=4)).max_concurrent == 4
    assert load_space(_write(tmp_path, max_concurrent=4), max_concurrent=2).max_concurrent == 2
    assert load_space(_write(tmp_path)).max_concurrent is None
    with pytest.raises(ConfigError, match="'max_concurrent' must be null or an int >= 1, got 0"):
        load_space(_write(tmp_path), max_concurrent=0)


def test_sweep_cli_passes_max_concurrent():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tune_sweep", REPO / "tune" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.build_parser().parse_args(["--config", "x.yaml", "--max-concurrent", "3"])
    assert args.max_concurrent == 3


def test_trial_stage_forwards_phase2_reports_to_tune_but_not_its_evaluation():
    from ltad.sweep.driver import phase2_reports_class
    from ltad.training.stages import EVALUATED

    callback = object.__new__(phase2_reports_class())  # its __init__ needs a live Tune session
    forwarded: list[dict] = []
    callback._training_actor_item_queue = type("Queue", (), {"put": lambda self, m: forwarded.append(m)})()
    callback.after_report(None, [{"phase2/loss": 0.5, "step": 10}, {"phase2/loss": 0.5}], None)
    callback.after_report(
        None, [{"phase2/loss": 0.4, "image_AUROC": 0.8, EVALUATED: 96}, {EVALUATED: 90}], None
    )
    assert forwarded == [{"phase2/loss": 0.5, "step": 10}]


def test_asha_metric_must_be_one_the_trials_report(tmp_path):
    from ltad.sweep.space import reported_metrics

    known = reported_metrics()
    assert {"phase2/loss", "phase2/rec_mse", "phase2/sem_ce", "phase2/steps_per_s", "val_image_AUROC"} <= set(
        known
    )
    assert not {"image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1max"} & set(known), (
        "never a test metric"
    )
    with pytest.raises(ConfigError) as info:
        load_space(_write(tmp_path, asha={"metric": "phase2/los", "mode": "min"}))
    assert "'asha.metric' must be a metric the trials report (val_image_AUROC, phase2/loss," in str(
        info.value
    )
    assert "'phase2/los'" in str(info.value)
    assert load_space(_write(tmp_path, asha={"metric": "phase2/sem_ce"})).asha["metric"] == "phase2/sem_ce"


def test_space_locations_are_resolved_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = load_space(
        _write(tmp_path, root="sweeps/t", levels=[{"profile": "exp", "ratio": 10, "data": "shards"}])
    )
    assert space.root == str(tmp_path / "sweeps" / "t") and space.levels[0].data == str(tmp_path / "shards")
    with pytest.raises(ConfigError, match="levels\\[0\\].data 'gs://b/x': scheme 'gs' is not supported"):
        load_space(_write(tmp_path, levels=[{"profile": "exp", "ratio": 10, "data": "gs://b/x"}]))
    with pytest.raises(ConfigError, match="--root 'S3://b/x'"):
        load_space(_write(tmp_path), root="S3://b/x")


def test_asha_on_validation_needs_validation_during_phase2(tmp_path):
    asha = {"metric": "val_image_AUROC", "mode": "max"}
    with pytest.raises(ConfigError, match="asha.metric val_image_AUROC needs phase2.validate_every > 0"):
        load_space(_write(tmp_path, asha=asha))
    space = load_space(_write(tmp_path, asha=asha, set=["phase2.validate_every=5"]))
    assert space.base.phase2.validate_every == 5


def test_level_asha_cuts_trials_only_against_their_own_level():
    """Two levels: exp100's trials all validate below exp10's; with one ASHA per level, exp100's better
    trial survives its rung (a shared ASHA would stop both exp100 trials)."""
    from ray.tune.schedulers import TrialScheduler

    from ltad.sweep.scheduler import LevelASHA

    class FakeTrial:
        def __init__(self, name):
            self.trial_id, self.config = name, {"trial": name}

    levels = {"a1": "exp10", "a2": "exp10", "b1": "exp100", "b2": "exp100"}
    sched = LevelASHA(
        levels, metric="val_image_AUROC", mode="max", grace_period=1, reduction_factor=2, max_t=4
    )
    assert sched.set_search_properties(None, None) and not sched.set_search_properties("other", "min")
    trials = {n: FakeTrial(n) for n in levels}
    for t in trials.values():
        sched.on_trial_add(None, t)
    values = {"a1": 0.95, "a2": 0.9, "b1": 0.6, "b2": 0.7}
    actions = {}
    for name in ("a1", "a2", "b1", "b2"):
        result = {"training_iteration": 1, "val_image_AUROC": values[name]}
        actions[name] = sched.on_trial_result(None, trials[name], result)
    assert actions == {"a1": TrialScheduler.CONTINUE, "a2": TrialScheduler.STOP,
                       "b1": TrialScheduler.CONTINUE, "b2": TrialScheduler.CONTINUE}  # fmt: skip
    assert sorted(sched.by_level) == ["exp10", "exp100"] and "level exp100" in sched.debug_string()
    # a result without the metric (a phase-2 report between validations) never stops a trial
    assert sched.on_trial_result(None, trials["b1"], {"training_iteration": 2}) == TrialScheduler.CONTINUE
