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


# ----------------------------------------------------------------------------- fields swept by key


def _open(tmp_path: Path, params: dict, **space) -> Path:
    """A space file sweeping `params` (no prompt_lengths / synthesis_ratios)."""
    base = {
        "levels": [
            {"profile": "exp", "ratio": 10, "data": "s3://b/exp10"},
            {"profile": "exp", "ratio": 100, "data": "s3://b/exp100"},
        ],
        "params": params,
        "root": "s3://b/sweeps/t",
    }
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump({**base, **space}, sort_keys=False))  # params keep the written order
    return path


def test_params_parse_every_domain_and_type_values_by_the_run_config(tmp_path):
    from ray.tune.search.sample import Categorical, Float

    params = {
        "phase2.lr": {"loguniform": ["1e-4", 1e-3]},  # YAML reads 1e-4 as a string: the float field decides
        "model.score.fusion_lambda": {"uniform": [0.5, 2]},
        "phase1.steps": {"choice": [10, 20]},
        "phase2.synthesis_ratio": [0, 0.25],  # a plain list: the values to try
        "model.score.class_mode": {"choice": ["predicted", "oracle"]},
    }
    space = load_space(_open(tmp_path, params, search="random", num_samples=3))
    got = {p.key: (p.domain, p.values) for p in space.params}
    assert got == {
        "phase2.lr": ("loguniform", (1e-4, 1e-3)),
        "model.score.fusion_lambda": ("uniform", (0.5, 2.0)),
        "phase1.steps": ("choice", (10, 20)),
        "phase2.synthesis_ratio": ("grid", (0.0, 0.25)),
        "model.score.class_mode": ("choice", ("predicted", "oracle")),
    }
    assert (space.search, space.num_samples) == ("random", 3)
    tune_space = space.param_space()
    assert tune_space["level"] == {"grid_search": ["exp10", "exp100"]}
    assert tune_space["phase2.synthesis_ratio"] == {"grid_search": [0.0, 0.25]}
    assert isinstance(tune_space["phase2.lr"], Float) and isinstance(tune_space["phase1.steps"], Categorical)
    assert space.phase1_keys() == ("phase1.steps",)


def test_the_first_sweeps_syntax_is_a_grid_of_the_two_fields(tmp_path):
    space = load_space(_write(tmp_path))
    assert [(p.key, p.domain, p.values) for p in space.params] == [
        ("model.prompts.length", "grid", (2, 4)),
        ("phase2.synthesis_ratio", "grid", (0.0, 0.25)),
    ]
    both = load_space(_write(tmp_path, synthesis_ratios=[], params={"phase2.lr": [1e-4, 3e-4]}))
    assert [t.name for t in both.trials()][:2] == ["exp10-L2-lr_0.0001", "exp10-L2-lr_0.0003"]


@pytest.mark.parametrize(
    ("params", "extra", "message"),
    [
        ({"phase2.nope": [1]}, {}, "params key 'phase2.nope': unknown config key 'phase2.nope' (known keys of phase2:"),
        ({"phase2": [1]}, {}, "params key 'phase2': config key 'phase2' is a section, not a value"),
        ({"phase2.lr": {"normal": [0, 1]}}, {}, "params key 'phase2.lr' must be one of {grid: [..]}, {choice: [..]}"),
        ({"phase2.lr": {"grid": [1e-4], "choice": [1e-3]}}, {}, "params key 'phase2.lr' must be one of"),
        ({"phase2.lr": 1e-4}, {}, "params key 'phase2.lr' must be one of"),
        ({"phase2.lr": {"grid": []}}, {}, "params key 'phase2.lr': grid must be a non-empty list of values"),
        ({"phase2.lr": {"uniform": [1e-3, 1e-4]}}, {"search": "random"},
         "params key 'phase2.lr': uniform must be [lo, hi] with lo < hi, got [0.001, 0.0001]"),
        ({"phase2.lr": {"loguniform": [0, 1e-3]}}, {"search": "random"}, "loguniform needs lo > 0"),
        ({"phase2.steps": {"uniform": [10, 20]}}, {"search": "random"},
         "params key 'phase2.steps': uniform draws floats, but the key is int: use choice or grid"),
        ({"phase2.synthesis_ratio": {"uniform": [0, 1]}}, {"search": "random"},
         "params key 'phase2.synthesis_ratio': uniform bound 1.0: config key 'phase2.synthesis_ratio' must be in [0, 1)"),
        ({"phase2.synthesis_ratio": {"choice": [0.1, 1.5]}}, {},
         "params key 'phase2.synthesis_ratio': choice value 1.5: config key 'phase2.synthesis_ratio' must be in [0, 1)"),
        ({"phase2.steps": {"grid": [1, "many"]}}, {}, "grid value 'many': config key 'phase2.steps' must be an int"),
        ({"phase2.steps": {"grid": [5, 5]}}, {}, "params key 'phase2.steps': grid values [5, 5] must be distinct"),
        ({"run.name": ["a", "b"]}, {}, "params key 'run.name' is set by the sweep itself"),
        ({"phase2.lr": {"loguniform": [1e-4, 1e-3]}}, {}, "params key 'phase2.lr' is loguniform, which search grid cannot enumerate"),
        ({"phase2.lr": {"grid": [1e-4, 1e-3]}}, {"search": "optuna", "metric": "phase2/loss", "mode": "min"},
         "params key 'phase2.lr' is a grid, which search optuna cannot take"),
        ({"phase1.lr": {"loguniform": [1e-4, 1e-3]}}, {"search": "random"},
         "params key 'phase1.lr' is loguniform, but phase 1 depends on it and is shared (reuse: true)"),
        ({"phase2.lr": [1e-4]}, {"num_samples": 2}, "'num_samples' must be 1 with search grid"),
        ({"phase2.lr": [1e-4], "phase2.steps": {"choice": [5, 9]}}, {"search": "random", "num_samples": 4},
         "search random needs at least one uniform or loguniform field"),
        ({"phase2.lr": {"uniform": [1e-4, 1e-3]}}, {"search": "optuna"},
         "config key 'metric' must be what search optuna optimises"),
        ({"phase2.lr": {"uniform": [1e-4, 1e-3]}}, {"search": "optuna", "metric": "phase2/loss"},
         "config key 'mode' must be 'min' or 'max'"),
        ({"phase2.lr": [1e-4]}, {"search": "bayes"}, "config key 'search' must be one of 'grid', 'random', 'optuna'"),
        ({"model.prompts.length": [3]}, {"prompt_lengths": [2]}, "params key 'model.prompts.length' is given twice"),
        ({}, {}, "config key 'params' must be a non-empty mapping"),
    ],
)  # fmt: skip
def test_bad_params_are_one_sentence_naming_the_key(tmp_path, params, extra, message):
    with pytest.raises(ConfigError) as err:
        load_space(_open(tmp_path, params, **extra))
    text = str(err.value)
    assert text.startswith("search space '") and message in text and "\n" not in text


def test_a_continuous_phase1_field_is_allowed_when_phase1_is_not_shared(tmp_path):
    space = load_space(
        _open(tmp_path, {"phase1.lr": {"loguniform": [1e-4, 1e-3]}}, search="random", reuse=False)
    )
    assert space.phase1_runs() == [] and space.trials() == []
    trial = space.trial({"level": "exp10", "phase1.lr": 2.5e-4})
    assert space.run_config(trial, phase1=True).run.name == trial.name  # its own phase 1


def test_trials_share_phase1_runs_on_the_fields_phase1_depends_on(tmp_path):
    from ltad.training.identity import stage_identities
    from tests.unit.test_run_identity import _manifest

    params = {
        "phase1.steps": [10, 20],
        "phase2.lr": [1e-4, 3e-4],
        "model.score.fusion_lambda": [0.5, 1.0],  # scoring only: never splits phase 1
    }
    space = load_space(_open(tmp_path, params))
    trials = space.trials()
    assert len(trials) == 2 * 2 * 2 * 2
    assert [t.name for t in space.phase1_runs()] == [
        "exp10-steps_10", "exp10-steps_20", "exp100-steps_10", "exp100-steps_20"
    ]  # fmt: skip
    assert trials[0].name == "exp10-steps_10-lr_0.0001-fusion_lambda_0.5"
    groups: dict[str, list] = {}
    for t in trials:
        groups.setdefault(t.phase1_name, []).append(t)
    assert sorted(groups) == sorted(r.name for r in space.phase1_runs())
    assert all(len(members) == 4 for members in groups.values())
    manifest = _manifest()
    for run in space.phase1_runs():
        shared = stage_identities(space.run_config(run, phase1=True), manifest)["phase1"].fingerprint
        for t in groups[run.name]:
            assert stage_identities(space.run_config(t), manifest)["phase1"].fingerprint == shared
            assert space.run_config(t, phase1=True).run.name == run.name
            cfg = space.run_config(t)
            assert (cfg.phase1.steps, cfg.phase2.lr, cfg.model.score.fusion_lambda) == (
                t.params["phase1.steps"], t.params["phase2.lr"], t.params["model.score.fusion_lambda"]
            )  # fmt: skip
    other = {t.phase1_name for t in trials if t.params["phase1.steps"] == 20 and t.level.name == "exp10"}
    assert other == {"exp10-steps_20"}


def test_trial_names_are_readable_and_unique_for_sampled_values(tmp_path):
    params = {"phase2.lr": {"loguniform": [1e-4, 1e-3]}, "model.prompts.length": {"choice": [2, 4]}}
    space = load_space(_open(tmp_path, params, search="random", num_samples=4))
    a = space.trial({"level": "exp10", "phase2.lr": 0.000123456789, "model.prompts.length": 4})
    b = space.trial({"level": "exp10", "phase2.lr": 0.000123456001, "model.prompts.length": 4})
    assert a.name.startswith("exp10-L4-lr_0.0001235-") and b.name.startswith("exp10-L4-lr_0.0001235-")
    assert a.name != b.name and a.phase1_name == b.phase1_name == "exp10-L4"
    assert (
        space.trial({"level": "exp10", "phase2.lr": 2e-4, "model.prompts.length": 2}).name
        == "exp10-L2-lr_0.0002"
    )
    assert a.config == {"level": "exp10", "phase2.lr": 0.000123456789, "model.prompts.length": 4}
    # two swept keys ending alike are named by their whole key
    both = load_space(_open(tmp_path, {"phase1.lr": [1e-4], "phase2.lr": [2e-4]}))
    assert both.trials()[0].name == "exp10-phase1_lr_0.0001-phase2_lr_0.0002"
    # Tune hands back what the domain held (an int for a float field): the same trial
    grid = load_space(_write(tmp_path))
    assert (
        grid.trial({"level": "exp10", "model.prompts.length": 2, "phase2.synthesis_ratio": 0}).name
        == "exp10-L2-s0"
    )
    # experiments made before fields were swept by key name their trials
    assert grid.trial({"trial": "exp10-L4-s0.25"}).params == {
        "model.prompts.length": 4,
        "phase2.synthesis_ratio": 0.25,
    }


def test_search_gives_tune_each_algorithm(tmp_path):
    from ray.tune.search import BasicVariantGenerator

    from ltad.sweep.driver import search
    from ltad.sweep.search import LevelSearch

    grid = load_space(_open(tmp_path, {"phase2.lr": {"choice": [1e-4, 3e-4]}}))
    param_space, alg, n = search(grid)
    assert (
        alg is None and n == 1 and param_space["phase2.lr"] == {"grid_search": [1e-4, 3e-4]}
    )  # choice as a grid
    random = load_space(
        _open(tmp_path, {"phase2.lr": {"loguniform": [1e-4, 1e-3]}}, search="random", num_samples=3)
    )
    param_space, alg, n = search(random)
    assert isinstance(alg, BasicVariantGenerator) and n == 3 and "phase2.lr" in param_space
    optuna = load_space(_open(tmp_path, {"phase2.lr": {"loguniform": [1e-4, 1e-3]}}, search="optuna",
                              num_samples=2, metric="val_image_AUROC", mode="max"))  # fmt: skip
    param_space, alg, n = search(optuna)
    assert param_space == {} and isinstance(alg, LevelSearch) and n == 4
    assert (alg.metric, alg.mode) == ("val_image_AUROC", "max")
    # optuna's metric and mode default to ASHA's
    asha = {"metric": "phase2/loss", "mode": "min"}
    params = {"phase2.lr": {"loguniform": [1e-4, 1e-3]}}
    from_asha = load_space(_open(tmp_path, params, search="optuna", asha=asha))
    assert (from_asha.metric, from_asha.mode) == ("phase2/loss", "min")


def test_level_search_runs_one_optuna_study_per_level(tmp_path):
    from ray.tune.search import Searcher

    from ltad.sweep.search import LevelSearch

    space = load_space(_open(tmp_path, {"phase2.lr": {"loguniform": [1e-4, 1e-3]},
                                        "model.prompts.length": {"choice": [2, 4]}},
                             search="optuna", num_samples=2, metric="val_image_AUROC", mode="max"))  # fmt: skip
    alg = LevelSearch(["exp10", "exp100"], space.search_space(), metric="val_image_AUROC", mode="max",
                      num_samples=2, seed=0)  # fmt: skip
    configs = {f"t{i}": alg.suggest(f"t{i}") for i in range(4)}
    assert [c["level"] for c in configs.values()] == ["exp10", "exp100", "exp10", "exp100"]  # round robin
    assert alg.suggest("t4") == Searcher.FINISHED
    for c in configs.values():
        assert 1e-4 <= c["phase2.lr"] <= 1e-3 and c["model.prompts.length"] in (2, 4)
        trial = space.trial(c)
        assert trial.phase1_name in {r.name for r in space.phase1_runs()}  # a choice: its phase 1 exists
    alg.on_trial_result("t0", {"training_iteration": 1, "phase2/loss": 0.3})  # no metric: not forwarded
    alg.on_trial_result("t0", {"training_iteration": 2, "val_image_AUROC": 0.6})
    alg.on_trial_complete("t0", {"val_image_AUROC": 0.7})
    alg.on_trial_complete("t1", None, error=True)
    exp10, exp100 = alg.studies["exp10"]._ot_study, alg.studies["exp100"]._ot_study
    assert [t.value for t in exp10.trials if t.value is not None] == [0.7] and exp100.trials[
        0
    ].state.name == "FAIL"
    alg.save(str(tmp_path / "searcher.pkl"))
    restored = LevelSearch(["exp10", "exp100"], space.search_space(), metric="val_image_AUROC", mode="max",
                           num_samples=2)  # fmt: skip
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.issued == {"exp10": 2, "exp100": 2} and restored.level_of == alg.level_of
    assert restored.suggest("t5") == Searcher.FINISHED


def test_sweep_json_lists_the_trials_tune_ran_with_their_params(tmp_path):
    from ltad.eval.summary import read_sweep
    from ltad.sweep.driver import write_status

    params = {"phase2.lr": {"loguniform": [1e-4, 1e-3]}, "model.score.fusion_lambda": {"choice": [0.5, 2.0]}}
    space = load_space(_open(tmp_path, params, search="random", num_samples=2, root=str(tmp_path / "root")))
    seen = [
        space.trial({"level": "exp10", "phase2.lr": 2e-4, "model.score.fusion_lambda": 0.5}),
        space.trial({"level": "exp100", "phase2.lr": 5e-4, "model.score.fusion_lambda": 2.0}),
    ]
    write_status(space, {seen[0].name: "RUNNING"}, None, seen)
    sweep = read_sweep(space.root)
    # params: the swept fields, after the prompt length and synthesis ratio every summary row has
    fixed = {"model.prompts.length": 4, "phase2.synthesis_ratio": 0.25}
    assert [(t["name"], t["level"], t["status"], t["params"]) for t in sweep["trials"]] == [
        ("exp10-lr_0.0002-fusion_lambda_0.5", "exp10", "running",
         {**fixed, "phase2.lr": 2e-4, "model.score.fusion_lambda": 0.5}),
        ("exp100-lr_0.0005-fusion_lambda_2", "exp100", "pending",
         {**fixed, "phase2.lr": 5e-4, "model.score.fusion_lambda": 2.0}),
    ]  # fmt: skip


def test_level_asha_reads_the_level_from_the_trial_config():
    from ltad.sweep.scheduler import LevelASHA

    sched = LevelASHA({}, metric="val_image_AUROC", mode="max", grace_period=1, max_t=4)
    trial = type("T", (), {"trial_id": "x", "config": {"level": "exp100", "phase2.lr": 1e-4}})()
    sched.on_trial_add(None, trial)
    assert sched.level_of(trial) == "exp100" and list(sched.by_level) == ["exp100"]


def test_tune_trials_are_named_as_the_space_names_them(tmp_path):
    """Tune's trial name (MLflow's run name) is the trial's name, for new and old-style configs."""
    import pickle

    from ltad.sweep.driver import TrialName

    space = load_space(_write(tmp_path))
    name = pickle.loads(pickle.dumps(TrialName(space)))  # Tune saves it with the experiment
    trial = type(
        "T", (), {"config": {"level": "exp10", "model.prompts.length": 4, "phase2.synthesis_ratio": 0.25}}
    )
    assert name(trial) == "exp10-L4-s0.25"
    assert name(type("T", (), {"config": {"trial": "exp10-L2"}})) == "exp10-L2"  # a phase-1 run
