"""Print JSON: phase-2 epoch time with cached features vs images encoded online.

Synthesizes the demo dataset (or reuses --work), prepares shards to a local directory, builds the
feature cache once (its time is reported too), then trains phase 2 of the demo model for one epoch
(= the training set's size in samples) from each source with a plain AdamW loop, so the difference is
the frozen encoder's forward pass plus PNG decoding vs reading fp16 features.
Usage: .venv/bin/python benchmarks/feature_cache.py [--work DIR] [--classes 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

from ltad.config import LTADConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def prepare_data(work: Path, classes: int) -> str:
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    root = synthesize(work / "synth", classes=classes, seed=0)
    split = make_split(read_dataset("synth", root), "exp", ratio=10, seed=0)
    prepare("synth", root, split.save(work / "split.json"), str(work / "shards"), log=lambda _m: None)
    return str(work / "shards")


def epoch_seconds(cfg: LTADConfig, data: str, manifest, cache: str | None) -> tuple[float, int]:
    from ltad.models.state import build_model
    from ltad.training.data import training_batches
    from ltad.training.objectives import Phase2Objective

    model = build_model(cfg, len(manifest.classes))
    counts = [manifest.counts["train"][c] for c in manifest.classes]
    objective = Phase2Objective(model, counts, cfg.phase2, batch_size=cfg.data.batch_size)
    opt = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=cfg.phase2.lr)
    steps = math.ceil(manifest.samples("train") / cfg.data.batch_size)
    batches = training_batches(
        cfg,
        data,
        manifest,
        cache,
        seed=0,
        rank=0,
        world_size=1,
        start_step=0,
        epoch_steps=steps,
        batch_size=objective.n_real,
    )
    tic = time.perf_counter()
    for _, batch in zip(range(steps), batches):
        loss, _ = objective(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - tic, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    ap.add_argument("--work", help="working directory (kept); default: a temporary one")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    add_json_flag(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from ltad.data.manifest import read_manifest
    from ltad.models.encoder import Encoder
    from ltad.training.feature_cache import encode

    cfg = LTADConfig.from_yaml(args.config)
    with tempfile.TemporaryDirectory(prefix="ltad-bench-") as tmp:
        work = Path(args.work or tmp)
        data = prepare_data(work, args.classes)
        manifest = read_manifest(data)
        tic = time.perf_counter()
        cache = encode(Encoder(cfg.model.encoder), data, batch_size=32, force=True)
        encode_s = time.perf_counter() - tic
        cached_s, steps = epoch_seconds(cfg, data, manifest, cache)
        online_s, _ = epoch_seconds(cfg, data, manifest, None)
    emit(
        {
            "benchmark": "feature_cache",
            "model": Path(args.config).name,
            "train_samples": manifest.samples("train"),
            "test_samples": manifest.samples("test"),
            "batch_size": cfg.data.batch_size,
            "steps_per_epoch": steps,
            "threads": args.threads,
            "cache_build_s_train_and_test": round(encode_s, 2),
            "phase2_epoch_s_cached": round(cached_s, 2),
            "phase2_epoch_s_online": round(online_s, 2),
            "speedup": round(online_s / cached_s, 2),
            "load_average": os.getloadavg()[0],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
