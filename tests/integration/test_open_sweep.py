"""An open sweep (ltad/sweep/space.py `params`) searched by Optuna, run in-process on a local Ray.

One level, two fields the first sweeps could not search (`phase2.lr` loguniform, the scoring weight
`model.score.fusion_lambda` uniform), `search: optuna`, two trials, two steps per phase: as cheap as a
sweep gets. Neither field shapes phase 1, so both trials share one phase-1 run. The test checks that
each trial's own values reach its run config, sweep.json, results.csv and MLflow.
"""

from __future__ import annotations

import csv
import math

import pytest
import yaml

from tests.integration.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIELDS = ("phase2.lr", "model.score.fusion_lambda")


def test_optuna_sweep_over_two_new_fields_reaches_results_csv(ray_local, tiny_data, s3_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from ltad.eval.summary import read_sweep, summarize
    from ltad.io import storage
    from ltad.sweep.driver import TRIAL_STAGE, launches, run_sweep
    from ltad.sweep.space import load_space
    from ltad.training.tracking import allow_file_store

    root = f"s3://{s3_server.bucket}/open-sweep-{tmp_path.name}"
    cfg = tiny_config(
        tmp_path,
        tiny_data,
        data={"use_feature_cache": True, "cache_uri": f"{root}/cache"},
        phase1={"steps": 2},
        phase2={"steps": 2, "validate_every": 2},
        scaling={"num_workers": 1, "cpus_per_worker": 0.99},
        run={
            "log_every": 2,
            "checkpoint_every": 2,
            "max_failures": 0,
            "loggers": ["mlflow"],
            "tracking_uri": str(tmp_path / "mlruns"),
        },
    )
    (tmp_path / "base.yaml").write_text(cfg.to_yaml())
    space_file = tmp_path / "space.yaml"
    space_file.write_text(
        yaml.safe_dump(
            {
                "name": "open",
                "config": str(tmp_path / "base.yaml"),
                "levels": [{"profile": "exp", "ratio": 4, "data": tiny_data}],
                "params": {
                    "phase2.lr": {"loguniform": [1e-4, 1e-2]},
                    "model.score.fusion_lambda": {"uniform": [0.5, 2.0]},
                },
                "search": "optuna",
                "num_samples": 2,
                "metric": "val_image_AUROC",
                "mode": "max",
                "root": root,
            },
            sort_keys=False,
        )
    )
    space = load_space(space_file)
    assert space.phase1_keys() == () and [r.name for r in space.phase1_runs()] == ["exp4"]

    sweep = run_sweep(space)

    trials = sweep["trials"]
    assert len(trials) == 2 and {t["status"] for t in trials} == {"finished"}, trials
    values = {t["name"]: tuple(t["params"][k] for k in FIELDS) for t in trials}
    assert len(set(values.values())) == 2  # Optuna proposed two settings
    for lr, lam in values.values():
        assert 1e-4 <= lr <= 1e-2 and 0.5 <= lam <= 2.0
    # each trial ran with its own values (the config its evaluation records) and shared phase 1
    for t in trials:
        recorded = storage.read_json(f"{root}/{t['path']}/metrics.json")["provenance"]["config"]
        assert (recorded["phase2"]["lr"], recorded["model"]["score"]["fusion_lambda"]) == values[t["name"]]
    assert launches(space, "phase1") == ["exp4"] and sorted(launches(space, TRIAL_STAGE)) == sorted(values)
    assert read_sweep(root)["trials"] == trials

    summarize([root], [], str(tmp_path / "summary"))
    with (tmp_path / "summary" / "results.csv").open() as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    assert set(rows) == set(values)
    for name, (lr, lam) in values.items():
        assert math.isclose(float(rows[name]["phase2.lr"]), lr)
        assert math.isclose(float(rows[name]["model.score.fusion_lambda"]), lam)

    uri = str(tmp_path / "mlruns")
    allow_file_store(uri)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("open").experiment_id])
    logged = {
        (float(r.data.params["phase2.lr"]), float(r.data.params["model.score.fusion_lambda"])) for r in runs
    }
    assert {(r.data.params["level"]) for r in runs} == {"exp4"}
    assert {r.data.tags["trial_name"] for r in runs} == set(values)  # MLflow runs named as the trials
    assert all(
        any(math.isclose(a, lr) and math.isclose(b, lam) for a, b in logged) for lr, lam in values.values()
    )
