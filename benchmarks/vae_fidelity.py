"""Print JSON: how close the phase-1 VAE's synthetic features are to the real features of their class.

Why the study's `no_vae` ablation beats `ltad` (docs/RESULTS.md) comes down to what the VAE samples
look like. On the validation dataset (synth seed 1, exp100 split) this trains phase 1 with the study
config, draws synthetic feature maps for every class, and compares, per head/medium/tail group:
- syn_to_class: mean distance from a synthetic map to the nearest real training map of its class;
- real_to_class: the same for held-out real normal maps (the test set's good images) of the class;
- syn_class_acc: share of synthetic maps whose nearest real training map is of the intended class;
- syn_spread / real_spread: mean RMS distance between two synthetic maps of a class, and between two
  held-out real normal maps of it. A syn_spread far below real_spread means the samples add little
  variety: either the latent carries little (posterior collapse: then `kl_nats_per_latent` is near 0)
  or the decoder's mean map smooths away the detail that tells one real map from another.
Distances are RMS over standardised patch features (what the RM and semantic head see). The phase-1
VAE losses (`vae_mse`, `vae_kl` per element) are printed beside them, and the KL in nats per latent
dimension (the information the latent carries about a map).
Usage: .venv/bin/python benchmarks/vae_fidelity.py [--work DIR] [--samples 32] [--set model.vae.beta=0.1]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

from ltad.data.splits import make_split  # noqa: E402
from ltad.study.cache import write_training_cache  # noqa: E402
from ltad.study.run import model_config, study_features  # noqa: E402
from ltad.study.spec import load_spec  # noqa: E402
from ltad.study.trainer import train_phase1  # noqa: E402


def rms_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """N x M RMS distances between flattened maps."""
    return torch.cdist(a.flatten(1), b.flatten(1)) / a[0].numel() ** 0.5


def mean_pairwise(x: torch.Tensor) -> float:
    """Mean RMS distance between distinct maps of `x` (nan for fewer than two)."""
    if x.shape[0] < 2:
        return float("nan")
    d = rms_dist(x, x)
    return float(d.sum() / (x.shape[0] * (x.shape[0] - 1)))


def _mean(v: list[float]) -> float:
    v = [x for x in v if not math.isnan(x)]
    return round(sum(v) / len(v), 4) if v else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="configs/study-validation.yaml")
    ap.add_argument("--work", default="runs/vae-fidelity")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    add_json_flag(ap)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    spec = load_spec(args.spec)
    level, seed = spec.level_specs[0], spec.seeds[0]
    cfg = model_config(spec, seed).with_overrides(args.set)
    ds, train_all, test, weights = study_features(spec, Path(args.work), cfg)
    split = make_split(ds, level.profile, None if level.profile == "full" else level.ratio, seed=seed)
    wanted = {r.path for r in split.train_records(ds)}
    train = train_all.subset(torch.tensor([i for i, p in enumerate(train_all.paths) if p in wanted]))
    model, logs = train_phase1(cfg, write_training_cache(train, ds.classes, Path(args.work) / "train-cache"))
    model.eval()
    model.cache_text()
    with torch.no_grad():
        real = model.feature_norm(train.patches.float())
        held = model.feature_norm(test.patches.float())
        groups: dict[str, dict[str, list[float]]] = {}
        for c, name in enumerate(ds.classes):
            ids = torch.full((args.samples,), c)
            syn = model.vae.sample(model.text_class[ids])
            own = real[train.class_id == c]
            good = held[(test.class_id == c) & (test.label == 0)]
            d_all = rms_dist(syn, real)
            g = groups.setdefault(
                split.group_of(name),
                {
                    k: []
                    for k in ("syn_to_class", "real_to_class", "syn_class_acc", "syn_spread", "real_spread")
                },
            )
            g["syn_to_class"].append(float(rms_dist(syn, own).min(dim=1).values.mean()))
            g["real_to_class"].append(float(rms_dist(good, own).min(dim=1).values.mean()))
            g["syn_class_acc"].append(float((train.class_id[d_all.argmin(dim=1)] == c).float().mean()))
            g["syn_spread"].append(mean_pairwise(syn))
            g["real_spread"].append(mean_pairwise(good))
    out = {
        "benchmark": "vae_fidelity",
        "data": f"synth seed {spec.dataset.seed}, {level.name} split seed {seed}",
        "weights": weights,
        "config": spec.config,
        "overrides": args.set,
        "phase1": {k: round(v, 4) for k, v in logs.items() if k.startswith("vae")},
        "kl_nats_per_latent": round(logs["vae_kl"] * real[0].numel() / cfg.model.vae.latent, 3),
        "groups": {g: {k: _mean(v) for k, v in d.items()} for g, d in groups.items()},
    }
    emit(out, args.json, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
