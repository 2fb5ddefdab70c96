#!/usr/bin/env python
"""Probe `ltad_mb` bank rules on the validation data with one trained model (no test data).

python scripts/bank_probe.py --work runs/val-fixed-batch/work --out runs/bank-probe --rows docs/results/bank-probe.jsonl
Trains LTAD once as the validation round's reported candidate does (configs/study-validation.yaml:
synth seed 1, exp100, training seed 0; phase 2 with and without synthesis), keeps its standardised
terms, then scores every bank rule in RULES on the same model, so differences between rules are not
training noise. One row per rule: mean, head and tail image AUROC and the per-class figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ltad.baselines.class_banks import fit_class_bank, one_image_bank  # noqa: E402
from ltad.models.memory_banks import MemoryBanks  # noqa: E402
from ltad.models.state import build_model  # noqa: E402
from ltad.study.cache import write_training_cache  # noqa: E402
from ltad.study.run import model_config, split_train, study_features  # noqa: E402
from ltad.study.scoring import ltad_terms, maps_from, metrics, summarise  # noqa: E402
from ltad.study.spec import StudySpec, spec_from_dict  # noqa: E402
from ltad.study.trainer import train_phase1, train_phase2  # noqa: E402

# (label, bank weight, smallest class with a bank, coreset ratio of banks under 10 images)
RULES = [
    ("w2 min10 (chosen)", 2.0, 10, 0.1),
    ("w3 min10", 3.0, 10, 0.1),
    ("w4 min10", 4.0, 10, 0.1),
    ("w6 min10", 6.0, 10, 0.1),
    ("w2 min2", 2.0, 2, 0.1),
    ("w2 min2 small-full", 2.0, 2, 1.0),
    ("w2 min1 small-full", 2.0, 1, 1.0),
    ("w1 min1 small-full", 1.0, 1, 1.0),
    ("w4 min1 small-full", 4.0, 1, 1.0),
]


def fit_banks(train, n_classes: int, min_images: int, small_coreset: float, seed: int) -> MemoryBanks:
    banks = {}
    for cid in sorted(train.class_id.unique().tolist()):
        own = train.patches[train.class_id == cid]
        if len(own) >= 10:
            banks[int(cid)] = fit_class_bank(own, 0.1, seed)
        elif len(own) >= max(min_images, 2):
            banks[int(cid)] = fit_class_bank(own, small_coreset, seed)
        elif len(own) == 1 and min_images == 1:
            banks[int(cid)] = one_image_bank(own)
    return MemoryBanks(n_classes, train.patches.shape[1]).set_banks(banks)


def terms(spec: StudySpec, out: Path, work: Path):
    """The trained model's test terms (cached in `out`): fused, rec-only and no-synthesis scores."""
    path = out / "terms.pt"
    cfg = model_config(spec, spec.seeds[0])
    ds, train_all, test, _ = study_features(spec, work, cfg)
    split, train = split_train(ds, train_all, spec.level_specs[0], spec.seeds[0])
    key = spec.to_json() + cfg.to_yaml()  # a cache made by another spec or config is not reused
    if not path.is_file() or torch.load(path, weights_only=True).get("key") != key:
        with tempfile.TemporaryDirectory() as tmp:
            data = write_training_cache(train, ds.classes, Path(tmp))
            base, _ = train_phase1(cfg, data)
            got: dict = {"key": key}
            for kind, vcfg in (("synth", cfg), ("real", cfg.with_overrides(["phase2.synthesis_ratio=0"]))):
                model = copy.deepcopy(base)
                train_phase2(vcfg, model, data)
                z_rec, z_sem, cls, _ = ltad_terms(model, test, oracle=False)
                got[kind] = {"fused": model.fuse(z_rec, z_sem), "rec": z_rec, "cls": cls}
            out.mkdir(parents=True, exist_ok=True)
            torch.save(got, path)
    model = build_model(cfg, len(ds.classes))  # to_maps reads only the score config
    return cfg, ds, split, train, test, model, torch.load(path, weights_only=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--rows", type=Path)
    args = p.parse_args(argv)
    spec = spec_from_dict(yaml.safe_load((REPO / "configs/study-validation.yaml").read_text()))
    cfg, ds, split, train, test, model, t = terms(spec, args.out, args.work)
    size = cfg.model.encoder.image_size
    torch.set_grad_enabled(False)

    def report(fused):
        return summarise(
            metrics(*maps_from(model, fused, size), test, ds.classes, split.counts, split.class_order)
        )

    rows = []
    for label, fused in (
        ("ltad", t["synth"]["fused"]),
        ("rec_only", t["real"]["rec"]),
        ("no_vae", t["real"]["fused"]),
    ):
        rows.append({"rule": label, **report(fused)})
    cls = t["synth"]["cls"]
    for label, w, lo, small in RULES:
        banks = fit_banks(train, len(ds.classes), lo, small, spec.seeds[0])
        z = torch.cat(
            [banks.z_scores(test.patches[i : i + 64], cls[i : i + 64]) for i in range(0, len(test), 64)]
        )
        rows.append(
            {
                "rule": f"ltad_mb {label}",
                "bank_classes": len(banks.classes),
                **report(t["synth"]["fused"] + w * z),
            }
        )
    for r in rows:
        print(
            f"{r['rule']:28s} mean {100 * r['image_AUROC']:.1f} head {100 * r['head_image_AUROC']:.1f} "
            f"tail {100 * r['tail_image_AUROC']:.1f}  "
            + " ".join(f"{c}:{100 * v:.0f}" for c, v in r["per_class_image_AUROC"].items()),
            flush=True,
        )
    if args.rows:
        with open(args.rows, "a") as f:
            for r in rows:
                f.write(json.dumps({"train_counts": split.counts, **r}, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
