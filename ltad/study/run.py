"""Run a study: every (level, seed) group trains LTAD twice and fits the kNN baseline, then scores.

Per group: phase 1 once; phase 2 with the configured synthesis ratio (-> ltad, sem_only, oracle) and
with synthesis 0 (-> no_vae, rec_only); the kNN bank on the raw patches of the same split, and the
per-class kNN control's banks (-> knn_class, knn_class_oracle). A spec naming only kNN methods trains
nothing, so a control can be added to a finished study's levels and seeds in minutes. Rows go to
`rows.jsonl` one group at a time (written whole, then fsynced), so an interrupted study resumes at the
first missing group and never holds half a group; `study.json` pins the spec, and a rerun with another
spec into the same folder is refused rather than mixed.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from ltad.baselines import PatchCore
from ltad.baselines.class_banks import ClassBanks, fuse_with_banks
from ltad.baselines.class_knn import ClassKNN
from ltad.baselines.patchcore import patch_maps
from ltad.config import LTADConfig
from ltad.data.datasets import read_dataset
from ltad.data.splits import make_split
from ltad.data.synth import synthesize
from ltad.errors import ConfigError
from ltad.log import get_logger
from ltad.models.encoder import Encoder
from ltad.study.cache import TrainingCache, write_training_cache
from ltad.study.features import (
    FeatureSet,
    cache_key,
    encode_records,
    load_features,
    pseudo_anomalies,
    pseudo_records,
    save_features,
)
from ltad.study.scoring import ltad_terms, maps_from, metrics, summarise
from ltad.study.spec import Level, StudySpec
from ltad.study.trainer import train_phase1, train_phase2

REPO = Path(__file__).resolve().parents[2]


_log = get_logger("study").info


def model_config(spec: StudySpec, seed: int) -> LTADConfig:
    path = Path(spec.config)
    cfg = LTADConfig.from_yaml(path if path.is_absolute() else REPO / path)
    return cfg.with_overrides([*spec.overrides, f"run.seed={seed}"])


def done_groups(rows_path: Path) -> set[tuple[str, int]]:
    if not rows_path.is_file():
        return set()
    return {(r["level"], r["seed"]) for r in map(json.loads, rows_path.read_text().splitlines()) if r}


def pin_spec(out: Path, spec: StudySpec) -> None:
    """Write study.json, or check that the folder's study is this one."""
    out.mkdir(parents=True, exist_ok=True)
    pinned = out / "study.json"
    if pinned.is_file():
        if json.loads(pinned.read_text()) != json.loads(spec.to_json()):
            raise ConfigError(
                f"'{out}' holds a study with another config ({pinned}); use a new --out or delete it"
            )
        return
    pinned.write_text(spec.to_json() + "\n")


def study_features(spec: StudySpec, work: Path, cfg: LTADConfig):
    """(dataset, train features, test features): synthesised and encoded once, then read back."""
    d = spec.dataset
    root = synthesize(
        work / f"synth-{d.classes}c-{d.image_size}px-s{d.seed}",
        classes=d.classes,
        image_size=d.image_size,
        train_per_class=d.train_per_class,
        test_per_class=d.test_per_class,
        seed=d.seed,
    )
    ds = read_dataset("synth", root)
    key = cache_key((root / "synth.json").read_text(), cfg.model.encoder, spec.test_defects)
    path = work / f"features-{key}.pt"
    got = load_features(path, key)
    enc = Encoder(cfg.model.encoder)
    if got is None:
        _log(f"encoding {len(ds.records)} images with {cfg.model.encoder.name}")
        test = (
            encode_records(enc, root, ds.select("test"), with_masks=True)
            if spec.test_defects == "synth"
            else pseudo_records(enc, root, ds.select("test"), spec.test_defects)
        )
        got = (encode_records(enc, root, ds.select("train"), with_masks=False), test)
        save_features(path, key, *got)
    train = got[0]
    if cfg.phase2.pseudo_anomaly == "cached":
        train = with_pseudo_anomalies(train, enc, root, ds, work / f"pseudo-{key}.pt")
    return ds, train, got[1], enc.weights_provenance()


def with_pseudo_anomalies(train: FeatureSet, enc: Encoder, root: Path, ds, path: Path) -> FeatureSet:
    """`train` with its cached Perlin-region pseudo-anomalies (encoded once into `path`, then read back)."""
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
    else:
        by_path = {r.path: r for r in ds.select("train")}
        _log(f"encoding a pseudo-anomalous copy of {len(train)} training images")
        feats, targets = pseudo_anomalies(enc, root, [by_path[p] for p in train.paths])
        blob = {"anom_patches": feats, "anom_target": targets}
        tmp = path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(path)
    return replace(train, anom_patches=blob["anom_patches"], anom_target=blob["anom_target"])


def _row(level: Level, seed: int, method: str, report: dict, extra: dict, counts: dict[str, int]) -> dict:
    """One method's figures in one (level, seed); `train_counts` lets the report relate AUROC to class size."""
    return {
        "level": level.name,
        "profile": level.profile,
        "ratio": level.ratio,
        "seed": seed,
        "method": method,
        **summarise(report),
        **extra,
        "train_counts": dict(counts),
    }


def _ltad_rows(
    spec: StudySpec,
    cfg: LTADConfig,
    data: TrainingCache,
    train: FeatureSet,
    test: FeatureSet,
    level: Level,
    seed: int,
    report: Callable[[torch.Tensor, torch.Tensor], dict],
    counts: dict[str, int],
) -> list[dict]:
    """The LTAD methods' rows of one (level, seed): phase 1 once, phase 2 per synthesis variant."""
    size = cfg.model.encoder.image_size
    rows: list[dict] = []
    t0 = time.perf_counter()
    base, logs1 = train_phase1(cfg, data)
    t_p1 = time.perf_counter() - t0
    variants = []
    if {"ltad", "sem_only", "oracle", "ltad_mb"} & set(spec.methods):
        variants.append(("synth", cfg))
    if {"no_vae", "rec_only"} & set(spec.methods):
        variants.append(("real", cfg.with_overrides(["phase2.synthesis_ratio=0"])))
    extra_mb: dict = {}
    for kind, vcfg in variants:
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        logs2 = train_phase2(vcfg, model, data)
        extra = {
            "phase1_s": round(t_p1, 1),
            "phase2_s": round(time.perf_counter() - t0, 1),
            "rec_mse": logs2.get("rec_mse"),
            "sem_ce": logs2.get("sem_ce"),
            "names_acc": logs1.get("names_acc"),
        }
        z_rec, z_sem, cls, acc = ltad_terms(model, test, oracle=False)
        extra["class_accuracy"] = acc
        scorings = {}
        if kind == "synth":
            scorings = {"ltad": model.fuse(z_rec, z_sem), "sem_only": z_sem}
            if "oracle" in spec.methods:
                o_rec, o_sem, _, _ = ltad_terms(model, test, oracle=True)
                scorings["oracle"] = model.fuse(o_rec, o_sem)
            if "ltad_mb" in spec.methods:
                z_bank, extra_mb = _bank_term(spec, train, test, cls, seed)
                scorings["ltad_mb"] = fuse_with_banks(scorings["ltad"], z_bank, spec.memory_bank_weight)
        else:
            scorings = {"no_vae": model.fuse(z_rec, z_sem), "rec_only": z_rec}
        for method, fused in scorings.items():
            if method in spec.methods:
                more = {**extra, **extra_mb} if method == "ltad_mb" else extra
                rows.append(_row(level, seed, method, report(*maps_from(model, fused, size)), more, counts))
    return rows


def _bank_term(
    spec: StudySpec, train: FeatureSet, test: FeatureSet, cls: torch.Tensor, seed: int
) -> tuple[torch.Tensor, dict]:
    """ltad_mb's added term: per-class kNN banks' z-scores of the test patches, each image scored
    against the bank of its predicted class `cls` (never its true class)."""
    t0 = time.perf_counter()
    n_classes = int(torch.cat([train.class_id.long(), cls.long().cpu()]).max()) + 1
    banks = ClassBanks(spec.memory_bank_min_images, spec.knn_coreset, seed).fit(
        train.patches, train.class_id, num_classes=n_classes
    )
    z = banks.z_scores(test.patches, cls)
    return z, {"bank_classes": len(banks.classes), "bank_s": round(time.perf_counter() - t0, 1)}


def _class_knn_rows(
    spec: StudySpec,
    train: FeatureSet,
    test: FeatureSet,
    num_classes: int,
    size: int,
    seed: int,
    report: Callable[[torch.Tensor, torch.Tensor], dict],
) -> list[tuple[str, dict, dict]]:
    """(method, report, extra) of the per-class kNN control: predicted class, and true class given."""
    t0 = time.perf_counter()
    model = ClassKNN(spec.knn_coreset, seed).fit(train.patches, train.class_id, num_classes)
    fit_s = round(time.perf_counter() - t0, 1)
    predicted = model.predict(test.patches)
    out = []
    for method, cls in (("knn_class", predicted), ("knn_class_oracle", test.class_id)):
        if method in spec.methods:
            extra = {"fit_s": fit_s, "bank_classes": len(model.classes)}
            if method == "knn_class":
                extra["class_accuracy"] = float((predicted == test.class_id).float().mean())
            out.append((method, report(*patch_maps(model.z_scores(test.patches, cls), size)), extra))
    return out


def split_train(ds, train_all: FeatureSet, level: Level, seed: int):
    """(the level's long-tailed split at `seed`, the features of its training images)."""
    split = make_split(ds, level.profile, None if level.profile == "full" else level.ratio, seed=seed)
    wanted = {r.path for r in split.train_records(ds)}
    train = train_all.subset(torch.tensor([i for i, p in enumerate(train_all.paths) if p in wanted]))
    return split, train


def run_group(
    spec: StudySpec, ds, train_all: FeatureSet, test: FeatureSet, level: Level, seed: int
) -> list[dict]:
    """All methods of one (level, seed): a list of rows."""
    cfg = model_config(spec, seed)
    split, train = split_train(ds, train_all, level, seed)
    counts, order, size = split.counts, split.class_order, cfg.model.encoder.image_size
    rows: list[dict] = []

    def report(maps, scores):
        return metrics(maps, scores, test, ds.classes, counts, order)

    ltad_methods = {"ltad", "sem_only", "oracle", "no_vae", "rec_only", "ltad_mb"} & set(spec.methods)
    if ltad_methods:
        # the trainer reads the job's training stream, so the split is written as a feature cache
        with tempfile.TemporaryDirectory(prefix="ltad-study-cache-") as tmp:
            data = write_training_cache(train, ds.classes, Path(tmp))
            rows.extend(_ltad_rows(spec, cfg, data, train, test, level, seed, report, counts))
    if "knn" in spec.methods:
        t0 = time.perf_counter()
        bank = PatchCore(coreset_ratio=spec.knn_coreset, seed=seed).fit(
            [train.patches[i : i + 64].float() for i in range(0, len(train), 64)]
        )
        maps, scores = [], []
        for i in range(0, len(test), 64):
            m, s = bank.score(test.patches[i : i + 64].float(), size)
            maps.append(m)
            scores.append(s)
        rows.append(
            _row(
                level,
                seed,
                "knn",
                report(torch.cat(maps), torch.cat(scores)),
                {"fit_s": round(time.perf_counter() - t0, 1)},
                counts,
            )
        )
    if {"knn_class", "knn_class_oracle"} & set(spec.methods):
        for method, rep, extra in _class_knn_rows(spec, train, test, len(ds.classes), size, seed, report):
            rows.append(_row(level, seed, method, rep, extra, counts))
    groups = {c: split.group_of(c) for c in counts}  # head/medium/tail, for per-class tail claims
    order_idx = {m: i for i, m in enumerate(spec.methods)}
    return sorted(({**r, "class_group": groups} for r in rows), key=lambda r: order_idx[r["method"]])


def append_rows(path: Path, rows: list[dict]) -> None:
    from ltad.eval.aggregate import json_safe

    text = "".join(json.dumps(json_safe(r), sort_keys=True) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def run_study(spec: StudySpec, out: Path, work: Path | None = None, threads: int | None = None) -> Path:
    """Run every missing group of `spec` into `out`; returns the rows file."""
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be an int >= 1, got {threads}")
    torch.set_num_threads(threads or max(1, os.cpu_count() or 1))
    pin_spec(out, spec)
    work = work or out / "work"
    cfg0 = model_config(spec, spec.seeds[0])
    ds, train_all, test, weights = study_features(spec, work, cfg0)
    (out / "weights.json").write_text(json.dumps(weights, indent=1) + "\n")
    rows_path = out / "rows.jsonl"
    done = done_groups(rows_path)
    groups = [(lv, s) for lv in spec.level_specs for s in spec.seeds]
    for i, (level, seed) in enumerate(groups, 1):
        if (level.name, seed) in done:
            continue
        t0 = time.perf_counter()
        rows = run_group(spec, ds, train_all, test, level, seed)
        append_rows(rows_path, rows)
        best = {r["method"]: round(r["image_AUROC"], 3) for r in rows}
        _log(f"group {i}/{len(groups)} {level.name} seed {seed} in {time.perf_counter() - t0:.0f}s: {best}")
    return rows_path
