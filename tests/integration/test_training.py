"""Both phases and evaluation on 2 Ray Train workers with DeepSpeed on the CPU, checkpoints on S3.

One module-scoped run (ZeRO-2, images encoded online, MLflow and TensorBoard loggers) feeds the
checks; a second phase-2 run with ZeRO-3 on cached features fails once on purpose and must resume
from its S3 checkpoint, with its history continuing at the resumed step, then restarts once more at
its final checkpoint and must evaluate from it without losing it.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from tests.integration.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METRIC_KEYS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1max")


@pytest.fixture(scope="module")
def trained(ray_local, tiny_data, s3_server, tmp_path_factory):
    """The whole pipeline once: phase 1 + phase 2 (ZeRO-2, 2 workers) + evaluation."""
    from ltad.training.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("trained")
    storage = f"s3://{s3_server.bucket}/ray-{tmp.name}"
    run = {"storage_path": storage, "name": "z2", "loggers": ["mlflow", "tensorboard"]}
    cfg = tiny_config(tmp, tiny_data, run=run)
    return cfg, run_pipeline(cfg), tmp / "out"


def test_metrics_json_keys_ranges_and_exactly_once(trained, tiny_data):
    from ltad.data.manifest import read_manifest

    cfg, metrics, out = trained
    manifest = read_manifest(tiny_data)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
        for group in ("head", "medium", "tail"):
            value = metrics["groups"][group][key]
            assert value is None or 0.0 <= value <= 1.0
        assert key in metrics["gap"]
    assert set(metrics["per_class"]) == set(manifest.classes)
    # exactly once: every test sample scored once across the 2 workers, per class as in the manifest
    assert metrics["n_evaluated"] == manifest.samples("test")
    assert metrics["training"] == {"phase1_bad_samples": 0.0, "phase2_bad_samples": 0.0}  # clean shards
    for name, row in metrics["per_class"].items():
        assert set(METRIC_KEYS) <= set(row)
        assert row["n_test"] == manifest.counts["test"][name]
    prov = metrics["provenance"]
    assert prov["split_sha256"] == manifest.split.sha256
    assert prov["weights"]["real_clip"] is False
    assert prov["config"] == cfg.to_dict() and prov["seed"] == cfg.run.seed and prov["git_commit"]
    assert prov["world_size"] == 2
    # validation: every held-out normal and its pseudo-anomalous copy scored once across the workers
    val = metrics["validation"]
    assert val["n_normal"] == val["n_pseudo"] == manifest.samples("val")
    assert metrics["val_image_AUROC"] == val["image_AUROC"] and 0.0 <= val["image_AUROC"] <= 1.0
    assert set(val["per_class"]) <= set(manifest.classes) and val["per_class"]


def test_outputs_report_overlays_and_export(trained, tiny_data):
    from ltad.data.manifest import read_manifest
    from ltad.inference.export import load_export

    _, metrics, out = trained
    manifest = read_manifest(tiny_data)
    report = (out / "report.md").read_text()
    assert report.startswith("# LTAD evaluation report") and "No real CLIP weights" in report
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        f"{c}.png" for c in manifest.classes
    )
    rows = (out / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + manifest.samples("test")
    model, meta = load_export(out / "model")
    assert bool(model.stats_ready) and bool(model.text_ready)
    assert all(math.isfinite(v) for v in model.stats.tolist())
    assert meta["classes"] == list(manifest.classes)
    # decisions by per-class thresholds calibrated on the held-out normals, recorded with their data
    cal = meta["calibration"]
    assert metrics["calibration"]["calibrated"] and cal["target_fpr"] == 0.05
    assert cal["n_heldout"] == manifest.samples("val") == 35
    assert sum(r["n_heldout"] for r in cal["per_class"].values()) == 35
    assert {c: r["threshold"] for c, r in cal["per_class"].items()} == {
        c: r["threshold"] for c, r in metrics["calibration"]["per_class"].items()
    }
    assert "Decision thresholds (per-class split-conformal" in report
    assert "Validation image AUROC (image AUROC of held-out normals vs synthetic pseudo-anomalies" in report


def test_fresh_normals_flagged_at_most_target_fpr(trained, tmp_path):
    """Normal images drawn with another seed (never seen in training, validation or test): the share
    `ltad predict` flags stays within target_fpr plus 3 standard errors of the binomial spread of both
    samples, sqrt(a (1 - a) (1/N_fresh + 1/N_heldout)) (the fresh draw and the calibration draw)."""
    from ltad import Predictor
    from ltad.data.synth import synthesize

    cfg, _, out = trained
    fresh = synthesize(
        tmp_path / "fresh", classes=3, image_size=64, train_per_class=30, test_per_class=2, seed=7
    )
    predictor = Predictor.load(out / "model")
    result = predictor.predict(sorted(fresh.glob("*/train/good/*.png")))
    meta = predictor.meta
    a, n_fresh, n_heldout = cfg.eval.target_fpr, len(result), meta["calibration"]["n_heldout"]
    flagged = float(result.decisions.mean())
    tolerance = 3 * math.sqrt(a * (1 - a) * (1 / n_fresh + 1 / n_heldout))
    print(f"fresh normals flagged: {flagged:.3f} of {n_fresh} (target {a}, tolerance {tolerance:.3f})")
    assert n_fresh == 90 and flagged <= a + tolerance
    # and the decision is the predicted class's calibrated threshold
    for score, cls, decision in zip(result.scores, result.pred_class, result.decisions):
        assert bool(decision) == bool(score >= meta["calibration"]["per_class"][cls]["threshold"])


def test_memory_bank_variant_fits_in_parallel_exports_and_its_thresholds_hold(trained, tiny_data, tmp_path):
    """ltad_mb through the job's evaluation of the run's phase-2 checkpoint: the classes with >= 10
    training images (20 and 10 of 20/10/5) get a bank, one per rank of 2; metrics.json and export.json
    say so; the scores differ from the paper's; fresh normals are flagged within target + tolerance."""
    from ltad import Predictor
    from ltad.data.manifest import read_manifest
    from ltad.data.synth import synthesize
    from ltad.training.pipeline import run_pipeline, stage_checkpoint

    cfg, metrics, out = trained
    manifest = read_manifest(tiny_data)
    rich = [c for c in manifest.classes if manifest.counts["train"][c] >= 10]
    mb_cfg = cfg.with_overrides(
        ["model.score.memory_bank.weight=2", "run.name=z2-mb", f"run.output={tmp_path / 'out'}"]
    )
    got = run_pipeline(mb_cfg, stages=("evaluate",), checkpoints={"phase2": stage_checkpoint(cfg, "phase2")})
    banks = got["memory_banks"]
    assert len(rich) == 2 and banks["classes"] == rich and set(banks["bank_rows"]) == set(rich)
    assert got["n_evaluated"] == metrics["n_evaluated"] and got["image_AUROC"] != metrics["image_AUROC"]
    meta = json.loads((tmp_path / "out" / "model" / "export.json").read_text())
    assert meta["memory_banks"] == {"weight": 2.0, "classes": rich}
    fresh = synthesize(
        tmp_path / "fresh", classes=3, image_size=64, train_per_class=30, test_per_class=2, seed=7
    )
    predictor = Predictor.load(tmp_path / "out" / "model")
    assert predictor.runner.graph.model.memory_banks.classes == [manifest.classes.index(c) for c in rich]
    result = predictor.predict(sorted(fresh.glob("*/train/good/*.png")))
    a, n_heldout = mb_cfg.eval.target_fpr, predictor.meta["calibration"]["n_heldout"]
    tolerance = 3 * math.sqrt(a * (1 - a) * (1 / len(result) + 1 / n_heldout))
    flagged = float(result.decisions.mean())
    print(
        f"ltad_mb: fresh normals flagged {flagged:.3f} of {len(result)} (target {a}, tolerance {tolerance:.3f})"
    )
    assert flagged <= a + tolerance


def test_onnx_and_openvino_exports_of_the_trained_model_decide_as_ltad_predict(trained, tmp_path, capsys):
    """`ltad export --format onnx` and `--format openvino` of the run's model (uint8 graphs with the
    per-class decision inside): on real procedural test images, maps, raw and normalised scores within
    1e-4 of the torch export, the same classes and decisions; `ltad predict` on each folder writes the
    same scores.csv rows (evaluate's columns) as on the torch export, up to that tolerance."""
    import csv

    import numpy as np

    from ltad import Predictor
    from ltad.cli import main
    from ltad.data.synth import synthesize

    _, _, out = trained
    folders = {"torch": out / "model"}
    for fmt in ("onnx", "openvino"):
        folders[fmt] = tmp_path / fmt
        argv = ["export", "--model", str(out / "model"), "--format", fmt, "--out", str(folders[fmt])]
        assert main(argv) == 0
        assert "max |map difference|" in capsys.readouterr().out
    root = synthesize(
        tmp_path / "synth", classes=3, image_size=64, train_per_class=8, test_per_class=6, seed=0
    )
    images = sorted(root.glob("*/test/*/*.png"))
    got = {fmt: Predictor.load(folder, batch_size=8).predict(images) for fmt, folder in folders.items()}
    t = got["torch"]
    for fmt in ("onnx", "openvino"):
        g = got[fmt]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(t.maps, g.maps))
        print(f"{fmt} parity on the trained model: max |map difference| {diff:.3g} over {len(images)} images")
        assert diff <= 1e-4 and np.abs(t.scores - g.scores).max() <= 1e-4
        assert np.abs(t.scores_normalised - g.scores_normalised).max() <= 1e-4
        assert t.pred_class == g.pred_class and (t.decisions == g.decisions).all()
    rows = {}
    for fmt, folder in folders.items():
        pred = tmp_path / f"pred-{fmt}"
        assert main(["predict", "--model", str(folder), "--images", str(root), "--out", str(pred)]) == 0
        with (pred / "scores.csv").open() as f, (out / "scores.csv").open() as g:
            assert next(csv.reader(f)) == next(csv.reader(g))  # predict and evaluate share the columns
        rows[fmt] = list(csv.DictReader((pred / "scores.csv").open()))
    assert len(rows["torch"]) == len(list(root.rglob("*.png")))
    for fmt in ("onnx", "openvino"):
        assert [(r["key"], r["pred_class"], r["pred_anomalous"]) for r in rows[fmt]] == [
            (r["key"], r["pred_class"], r["pred_anomalous"]) for r in rows["torch"]
        ]
        for r, q in zip(rows[fmt], rows["torch"]):  # scores.csv keeps 6 significant digits
            assert abs(float(r["pred_score"]) - float(q["pred_score"])) <= 1e-4 + 1e-5 * abs(
                float(q["pred_score"])
            )
    flagged = sum(int(r["pred_anomalous"]) for r in rows["torch"])
    print(f"ltad predict: {flagged} of {len(rows['torch'])} images anomalous, the same in every format")
    assert 0 < flagged < len(rows["torch"])  # the decisions compared are not all one way (12 of 51 here)


def test_history_jsonl_and_trackers(trained):
    """history.jsonl: every logged step of both phases, increasing, finite; the same points in MLflow
    (a real file store) and TensorBoard (real event files), logged once although 2 workers trained."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, metrics, out = trained
    records = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for stage in ("phase1", "phase2"):
        rows = [r for r in records if r["stage"] == stage]
        steps = getattr(cfg, stage).steps
        assert [r["step"] for r in rows] == list(range(cfg.run.log_every, steps + 1, cfg.run.log_every))
        for r in rows:
            assert math.isfinite(r["loss"]) and r["lr"] > 0 and r["samples_per_s"] > 0, r
    phase1 = [r for r in records if r["stage"] == "phase1"]
    assert all(r["lr_names"] == cfg.phase1.names_lr and r["lr"] == cfg.phase1.lr for r in phase1)
    phase2 = [r for r in records if r["stage"] == "phase2"]
    assert all(0 < r["synthetic_fraction"] < 1 for r in phase2)  # synthesis_ratio 0.25 of each batch

    client = MlflowClient((out / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "z2"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["phase2.steps"] == str(cfg.phase2.steps)
    history = client.get_metric_history(run.info.run_id, "phase2/loss")
    assert sorted((m.step, m.value) for m in history) == [(r["step"], r["loss"]) for r in phase2]
    assert run.data.metrics["evaluate/image_AUROC"] == metrics["image_AUROC"]
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "report.md", "scores.csv", "history.jsonl", "model"} <= artefacts
    assert "ltad-model" in artefacts  # the export as a pyfunc model (test_mlflow_model.py loads one)

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("phase1/loss")] == [r["step"] for r in phase1]
    assert [e.value for e in acc.Scalars("phase2/loss")] == pytest.approx([r["loss"] for r in phase2])


def test_checkpoints_in_s3_hold_every_rank(trained):
    from ltad.io import storage

    cfg, _, _ = trained
    listed = storage.list(cfg.run.storage_path)
    assert any("/z2-phase1/" in u and u.endswith("-final/model.pt") for u in listed)
    # ZeRO-2 partitions optimizer state: rank 1's shard was merged into the same checkpoint
    assert any("/z2-phase2/" in u and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in u for u in listed)
    assert any("/z2-evaluate/evaluation-" in u and u.endswith("/metrics.json") for u in listed)


def test_phase2_zero3_cached_features_fails_once_and_resumes(trained, tiny_data, ray_local):
    """ZeRO-3 on cached features: an injected failure after step 2 -> Ray restarts, resumes at 2."""

    from ltad.io import storage
    from ltad.models.encoder import Encoder
    from ltad.training import stages, store
    from ltad.training.checkpoint import load_model_state
    from ltad.training.feature_cache import encode
    from ltad.training.history import read_checkpoint_history
    from ltad.training.inputs import StageInput, stage_input
    from ltad.training.pipeline import latest_evaluation, stage_checkpoint
    from ltad.training.ray_run import fit

    cfg, _, _ = trained
    cache = encode(Encoder(cfg.model.encoder), tiny_data)
    cfg3 = cfg.with_overrides(
        ["scaling.zero_stage=3", "data.use_feature_cache=true", "run.name=z3", "run.max_failures=1"]
    )
    inp = stage_input(cfg3, phase1_checkpoint=stage_checkpoint(cfg, "phase1"))

    def fails_once(loop):
        given = StageInput.of(loop)
        if store.latest(given.root("phase2")) is None:
            short = replace(given, config=given.config.with_overrides(["phase2.steps=2"]))
            stages.phase2(short.loop_config())
            raise RuntimeError("injected failure after step 2")
        stages.phase2(loop)

    result = fit(fails_once, inp, name="z3-phase2")
    assert result.metrics["step"] == cfg3.phase2.steps and result.metrics["final"]
    ours = stage_checkpoint(cfg3, "phase2")
    listed = storage.list(cfg3.run.storage_path)
    assert any("/z3-phase2/step-0000002-final/" in u for u in listed)  # the first attempt's checkpoint
    # resumed, not restarted: a restart from 0 would have saved the regular step-2 checkpoint again
    assert not any("/z3-phase2/step-0000002/" in u for u in listed)
    # ZeRO-3 partitions parameters: both ranks wrote model states into the resumed checkpoint
    final = [u for u in listed if "/z3-phase2/step-0000004-final/" in u]
    assert any("zero_pp_rank_0_mp_rank_00_model_states.pt" in u for u in final)
    assert any("zero_pp_rank_1_mp_rank_00_model_states.pt" in u for u in final)
    # the history went on from the resumed step: each logged step once, in order
    assert [r["step"] for r in read_checkpoint_history(ours)] == [2, 4]
    state = load_model_state(ours)
    assert bool(state["stats_ready"]) and all(
        torch.isfinite(v).all() for v in state.values() if v.is_floating_point()
    )
    assert cache.startswith(tiny_data + "/features/")
    # Restarted at its final checkpoint (a sweep trial killed after phase 2 saved it, before the
    # evaluation did), the stage goes on from it without training or writing it again.
    fit(stages.phase2_and_evaluate, inp, name="z3-phase2")
    assert latest_evaluation(inp.root("evaluate")) is not None
    kept = stage_checkpoint(cfg3, "phase2")
    assert kept.endswith("/z3-phase2/step-0000004-final")
    assert [r["step"] for r in read_checkpoint_history(kept)] == [2, 4]
    assert load_model_state(kept).keys() == state.keys()


def test_cached_features_match_online_encoding_within_fp16_rounding(tiny_data, tmp_path):
    """The cache's documented tolerance: |cached - online| <= 2^-11 |online| (fp16 rounding) plus
    1e-5 of the largest |feature| (fp32 results depend slightly on how images are batched)."""
    from functools import partial

    from ltad.data.manifest import read_manifest
    from ltad.data.shards import iterate_shard
    from ltad.data.streams import decode_image_sample
    from ltad.io import storage
    from ltad.models.encoder import Encoder
    from ltad.training.feature_cache import BATCH_ATOL, FP16_RTOL, encode, feature_decoder

    cfg = tiny_config(tmp_path, tiny_data)
    encoder = Encoder(cfg.model.encoder)
    cache = encode(encoder, tiny_data)
    manifest, cached_manifest = read_manifest(tiny_data), read_manifest(cache)
    assert [(e.name, e.samples) for e in cached_manifest.shards["test"]] == [
        (e.name, e.samples) for e in manifest.shards["test"]
    ]
    entry = manifest.shards["test"][0]
    size = cfg.model.encoder.image_size
    images = list(
        iterate_shard(
            storage.join(tiny_data, entry.name),
            entry.samples,
            partial(decode_image_sample, image_size=size, with_mask=True),
        )
    )
    cached = list(
        iterate_shard(storage.join(cache, entry.name), entry.samples, feature_decoder(size, with_mask=True))
    )
    assert [s["key"] for s in cached] == [s["key"] for s in images]
    for a, b in zip(images, cached):
        assert a["gt_label"] == b["gt_label"] and torch.equal(a["gt_mask"], b["gt_mask"])
    online = encoder.encode_images(torch.stack([s["image"] for s in images]))
    for name, ref, got in (
        ("patches", online.patches, torch.stack([s["patches"] for s in cached])),
        ("global_emb", online.global_emb, torch.stack([s["global_emb"] for s in cached])),
    ):
        assert got.dtype == torch.float16, name
        err = (got.float() - ref).abs()
        bound = FP16_RTOL * ref.abs() + BATCH_ATOL * float(ref.abs().max())
        assert bool((err <= bound).all()), f"{name}: max error {float(err.max())}"
    # the cache's shards carry sample indexes too: one ranged read gives the sample the stream gave
    from ltad.data.sample_index import read_fragment, read_shard_index

    assert cached_manifest.sample_index
    for e in cached_manifest.shards["train"] + cached_manifest.shards["test"]:
        index = read_shard_index(storage.join(cache, e.name), e.sha256, e.bytes)
        assert index is not None and len(index.offsets) == e.samples, e.name
    centry = next(e for e in cached_manifest.shards["test"] if e.name == entry.name)
    index = read_shard_index(storage.join(cache, centry.name), centry.sha256, centry.bytes)
    url, offset, length = storage.join(cache, centry.name), int(index.offsets[-1]), int(index.lengths[-1])
    ranged = feature_decoder(size, with_mask=True)(
        read_fragment(storage.read_range(url, offset, length), url, offset, length)
    )
    assert ranged["key"] == cached[-1]["key"] and torch.equal(ranged["patches"], cached[-1]["patches"])


# --------------------------------------------------------------------------- one training path

WEIGHT_TOL = 1e-5
METRIC_TOL = 0.005


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest |a - b| over every tensor of `a`, and where."""
    diffs = {k: float((v.double() - b[k].double()).abs().max()) for k, v in a.items() if v.numel()}
    where = max(diffs, key=lambda k: diffs[k])
    return diffs[where], where


def _cached_test_set(cache: str, size: int):
    """The feature cache's test split as the study's FeatureSet (fp16 patches, masks)."""
    from ltad.data.manifest import read_manifest
    from ltad.data.shards import iterate_shard
    from ltad.io import storage
    from ltad.study.features import FeatureSet
    from ltad.training.feature_cache import feature_decoder

    samples = [
        s
        for e in read_manifest(cache).shards["test"]
        for s in iterate_shard(storage.join(cache, e.name), e.samples, feature_decoder(size, with_mask=True))
    ]
    return FeatureSet(
        torch.stack([s["patches"] for s in samples]),
        torch.stack([s["global_emb"] for s in samples]).float(),
        torch.tensor([s["class_id"] for s in samples]),
        torch.tensor([s["gt_label"] for s in samples]),
        torch.stack([s["gt_mask"][0] for s in samples]).to(torch.uint8),
        [s["key"] for s in samples],
    )


def test_study_trainer_trains_what_a_one_worker_zero0_job_trains(ray_local, tiny_data, s3_server, tmp_path):
    """One training path (issue 16): the same feature cache, config and seed through the job's stages
    (one Ray Train worker, DeepSpeed ZeRO-0: phase 1, then phase 2 + evaluation in one worker group)
    and through the study's in-process trainer give the same weights within 1e-5 and the same image
    and pixel AUROC within 0.005 (the job's metrics.json against the study's scoring of its model)."""
    from ltad.io import storage
    from ltad.models.encoder import Encoder
    from ltad.models.state import build_model, trained_state
    from ltad.study.cache import TrainingCache
    from ltad.study.scoring import ltad_terms, maps_from, metrics
    from ltad.study.trainer import train_phase1, train_phase2
    from ltad.training import stages
    from ltad.training.checkpoint import load_model_state
    from ltad.training.feature_cache import encode
    from ltad.training.inputs import stage_input
    from ltad.training.pipeline import latest_evaluation, stage_checkpoint
    from ltad.training.ray_run import fit

    cfg = tiny_config(
        tmp_path,
        tiny_data,
        data={"use_feature_cache": True},
        phase1={"steps": 12, "norm_samples": 32, "lr": 1e-3},
        phase2={"steps": 12, "stats_samples": 16, "lr": 1e-3},
        scaling={"num_workers": 1, "zero_stage": 0},
        run={"name": "eq", "storage_path": f"s3://{s3_server.bucket}/ray-{tmp_path.name}", "log_every": 6},
        eval={"pixel_bins": 1000},
    )
    cache = encode(Encoder(cfg.model.encoder), tiny_data)  # in process: the stages find and read it
    base = stage_input(cfg)
    fit(stages.run_job, replace(base, stages=("phase1", "phase2", "evaluate")), name="eq-job")
    job1 = load_model_state(stage_checkpoint(cfg, "phase1"))
    job2 = load_model_state(stage_checkpoint(cfg, "phase2"))
    evaluated = latest_evaluation(base.root("evaluate"))
    assert evaluated is not None
    job_metrics = storage.read_json(f"{evaluated}/metrics.json")

    data = TrainingCache.read(cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray worker (OMP_NUM_THREADS=1): the same float reduction order
    try:
        model, _ = train_phase1(cfg, data)
        study1 = {k: v for k, v in trained_state(model).items() if k in job1}
        train_phase2(cfg, model, data)
        study2 = trained_state(model)
    finally:
        torch.set_num_threads(threads)
    assert study1.keys() == job1.keys()
    diff1, where1 = _max_diff(job1, study1)
    assert study2.keys() == job2.keys()
    diff2, where2 = _max_diff(job2, study2)
    initial = trained_state(build_model(cfg, data.num_classes))
    trained = {k: v for k, v in job2.items() if k.startswith(stages.PHASE2_KEYS)}
    moved, _ = _max_diff(trained, initial)
    print(
        f"max |job - study| phase 1 {diff1:.3g} ({where1}), phase 2 {diff2:.3g} ({where2}); trained {moved:.3g}"
    )
    assert diff1 <= WEIGHT_TOL, f"phase 1 weights differ by {diff1} at {where1}"
    assert diff2 <= WEIGHT_TOL, f"phase 2 weights differ by {diff2} at {where2}"
    assert moved > 100 * WEIGHT_TOL  # not equal by doing nothing: phase 2 moved its weights

    size = cfg.model.encoder.image_size
    test = _cached_test_set(cache, size)
    z_rec, z_sem, _, _ = ltad_terms(model, test, oracle=False)
    m = data.manifest
    maps, scores = maps_from(model, model.fuse(z_rec, z_sem), size)
    study_metrics = metrics(maps, scores, test, m.classes, m.counts["train"], m.split.class_order)
    for name in ("image_AUROC", "pixel_AUROC"):
        print(f"{name}: job {job_metrics[name]:.5f}, study {study_metrics[name]:.5f}")
        assert abs(job_metrics[name] - study_metrics[name]) <= METRIC_TOL, name
