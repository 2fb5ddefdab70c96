"""Load check (run once, not a CI test): synth -> prepare to S3 -> stream -> one phase-2 epoch.

    .venv/bin/python tests/reliability/load_check.py --train-per-class 600 --test-per-class 240

Starts its own SeaweedFS in `--workdir`, generates the synthetic dataset (8 classes at 128 px, split
'full' so every training image streams), prepares shards, streams one training epoch and the whole
test set, then runs one epoch of the real phase-2 objective with the demo config's model (plain
AdamW in this process, no Ray or DeepSpeed: the point is the data path's memory and throughput). RSS is
sampled every 0.2 s; per stage it prints images/s and RSS at the start and the peak, as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class RssSampler:
    """Peak RSS of this process, and of its children (the SeaweedFS server) apart, sampled in a thread."""

    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self.server_peak, self._stop = every, 0, 0, threading.Event()
        self.proc = psutil.Process()

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def server_rss(self) -> int:
        total = 0
        for child in self.proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def __enter__(self) -> RssSampler:
        self.start_rss = self.peak = self.rss()
        self.server_peak = self.server_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.tic = time.perf_counter()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.rss())
            self.server_peak = max(self.server_peak, self.server_rss())

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.tic
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    def figures(self, images: int) -> dict:
        return {
            "images": images,
            "seconds": round(self.seconds, 1),
            "images_per_s": round(images / max(self.seconds, 1e-9), 1),
            "rss_start_mb": round(self.start_rss / 2**20),
            "rss_peak_mb": round(self.peak / 2**20),
            "server_rss_peak_mb": round(self.server_peak / 2**20),
        }


def phase2_epoch(uri: str, manifest, limit: int | None, trace: list[int]) -> int:
    """One epoch (as many draws as training images) of the phase-2 objective with the demo's model
    and batch size, images encoded online (the memory-heaviest path); images seen."""
    import torch

    from ltad.config import LTADConfig
    from ltad.data.streams import make_loader, train_stream
    from ltad.models.state import build_model
    from ltad.training.objectives import Phase2Objective

    cfg = LTADConfig.from_yaml(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    image_size, batch_size = cfg.model.encoder.image_size, cfg.data.batch_size
    model = build_model(cfg, len(manifest.classes))
    counts = [manifest.counts["train"].get(c, 0) for c in manifest.classes]
    objective = Phase2Objective(model, counts, cfg.phase2, batch_size=batch_size)
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.phase2.lr)
    n = min(manifest.samples("train"), limit or manifest.samples("train"))
    stream = train_stream(uri, manifest, image_size=image_size, epoch_samples=n, seed=0, rank=0, world_size=1)
    seen = 0
    for batch in make_loader(stream, batch_size, 0):
        loss, _ = objective(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += batch["image"].shape[0]
        trace.append(psutil.Process().memory_info().rss)  # RSS after every step: flat or growing?
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=60)
    p.add_argument("--test-per-class", type=int, default=24)
    p.add_argument("--image-size", type=int, default=128, help="dataset image side")
    p.add_argument("--workdir", default="tmp/load-check")
    p.add_argument("--skip-phase2", action="store_true")
    p.add_argument("--phase2-samples", type=int, default=None, help="cap the phase-2 epoch (time)")
    args = p.parse_args(argv)

    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.streams import eval_stream, make_loader, train_stream
    from ltad.data.synth import synthesize
    from ltad.io import storage
    from tools.services.seaweed import SeaweedServer

    work = Path(args.workdir).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = SeaweedServer(work / "s3")
    server.start()
    os.environ.update(server.env())
    storage.reset_client()
    server.create_bucket("load")
    figures: dict = {"args": vars(args)}
    try:
        total = args.classes * (args.train_per_class + args.test_per_class)
        with RssSampler() as s:
            root = synthesize(
                work / "synth", args.classes, args.image_size, args.train_per_class, args.test_per_class, 0
            )
        figures["synth"] = s.figures(total)
        split = make_split(read_dataset("synth", root), "full", seed=0)
        split_path = split.save(work / "split.json")
        uri = "s3://load/synth"
        with RssSampler() as s:
            manifest = prepare("synth", root, split_path, uri, log=lambda _m: None)
        figures["prepare"] = s.figures(total)
        figures["shard_mb"] = round(sum(e.bytes for sp in manifest.shards.values() for e in sp) / 1e6, 1)
        n_train = manifest.samples("train")
        with RssSampler() as s:
            stream = train_stream(
                uri, manifest, image_size=args.image_size, epoch_samples=n_train, seed=0, rank=0, world_size=1
            )
            seen = sum(b["image"].shape[0] for b in make_loader(stream, 32, 0))
        figures["stream_train"] = s.figures(seen)
        with RssSampler() as s:
            stream = eval_stream(uri, manifest, image_size=args.image_size, rank=0, world_size=1)
            seen = sum(b["image"].shape[0] for b in make_loader(stream, 32, 0))
        assert seen == manifest.samples("test"), (seen, manifest.samples("test"))
        figures["stream_test"] = s.figures(seen)
        if not args.skip_phase2:
            with RssSampler() as s:
                trace: list[int] = []
                seen = phase2_epoch(uri, manifest, args.phase2_samples, trace)
            figures["phase2_epoch"] = s.figures(seen)
            quarters = [trace[min(len(trace) - 1, len(trace) * q // 4)] // 2**20 for q in (1, 2, 3, 4)]
            figures["phase2_epoch"]["rss_mb_at_quarters"] = quarters
    finally:
        server.stop()
    print(json.dumps(figures), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
