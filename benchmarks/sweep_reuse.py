"""Print JSON: wall time of one small sweep with phase-1 reuse + the feature cache vs the naive sweep.

Both sweeps run in this process, on the same data and the same trials, through the real sweep driver
(ltad/sweep/driver.py) on a local SeaweedFS server and an in-process Ray (dashboard on): the reusing
sweep builds the feature cache once and trains phase 1 once per prompt length; the naive one
(`reuse: false`) encodes images online in every stage and trains phase 1 in every trial. Target:
reuse / naive <= 0.35.

`--encoder vit-b-16` runs both sweeps with the product's real encoder architecture (open_clip
ViT-B-16 at 224 px, random weights: offline there are no CLIP weights, and the cost is the same),
where encoding is what a sweep spends its time on; the default (`demo`, EfficientNet-Lite0 at 128 px,
70x cheaper per image on this CPU) measures the regime where Ray Train's per-stage start-up dominates.
Usage: .venv/bin/python benchmarks/sweep_reuse.py [--work DIR] [--encoder demo|vit-b-16]
           [--lengths 4] [--ratios 0 0.1 0.25 0.5] [--phase1-steps 60] [--phase2-steps 60]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "ltad-bench"
ENCODERS = {
    "demo": [],
    "vit-b-16": [
        "model.encoder.name=ViT-B-16",
        "model.encoder.pretrained=none",
        "model.encoder.layers=[5, 8, 11]",
        "model.encoder.grid=14",
        "model.encoder.image_size=224",
        "data.batch_size=8",
    ],
}


def _space(work: Path, args, data: str, reuse: bool) -> Path:
    space = {
        "name": "reuse" if reuse else "naive",
        "config": str(ROOT / "configs/demo.yaml"),
        "set": [
            f"phase1.steps={args.phase1_steps}",
            f"phase2.steps={args.phase2_steps}",
            "phase2.stats_samples=64",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=0.99",
            "run.log_every=20",
            "run.checkpoint_every=1000",
            "eval.overlays_per_class=1",
            *ENCODERS[args.encoder],
        ],
        "levels": [{"profile": "exp", "ratio": 10, "data": data}],
        "prompt_lengths": args.lengths,
        "synthesis_ratios": args.ratios,
        "root": f"s3://{BUCKET}/sweeps/{'reuse' if reuse else 'naive'}",
        "reuse": reuse,
        "asha": None,
    }
    path = work / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="scratch directory (default: a temporary one)")
    p.add_argument("--encoder", choices=sorted(ENCODERS), default="demo")
    p.add_argument("--lengths", type=int, nargs="+", default=[4])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.1, 0.25, 0.5])
    p.add_argument("--phase1-steps", type=int, default=60)
    p.add_argument("--phase2-steps", type=int, default=60)
    add_json_flag(p)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ltad-sweep-bench-") as tmp:
        return run(Path(args.work or tmp), args)


def run(work: Path, args) -> int:
    import ray

    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize
    from ltad.io import storage
    from ltad.sweep.driver import TRIAL_STAGE, launches, run_sweep
    from ltad.sweep.space import load_space
    from tools.services.ports import free_base, free_port
    from tools.services.seaweed import GRPC, OFFSETS, SeaweedServer

    work.mkdir(parents=True, exist_ok=True)
    base = free_base(OFFSETS + tuple(o + GRPC for o in OFFSETS), start=random.randrange(21000, 50000, 10))
    server = SeaweedServer(work / "s3", port=base)
    server.start()
    try:
        os.environ.update(server.env())
        storage.reset_client()
        server.create_bucket(BUCKET)
        root = synthesize(work / "synth", classes=8, image_size=128, seed=0)
        split = make_split(read_dataset("synth", root), "exp", ratio=10, seed=0)
        data = f"s3://{BUCKET}/synth-exp10"
        prepare(
            "synth", root, split.save(work / "split.json"), data, test_shard_samples=32, log=lambda _m: None
        )
        ray.init(num_cpus=os.cpu_count(), include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=free_port(), object_store_memory=300 << 20, log_to_driver=False)  # fmt: skip
        seconds, statuses, counts = {}, {}, {}
        for reuse in (True, False):
            space = load_space(_space(work, args, data, reuse))
            tic = time.monotonic()
            with contextlib.redirect_stdout(sys.stderr):  # Tune's progress tables: stdout is the JSON
                sweep = run_sweep(space)
            seconds[space.name] = round(time.monotonic() - tic, 1)
            statuses[space.name] = sorted({t["status"] for t in sweep["trials"]})
            counts[space.name] = {s: len(launches(space, s)) for s in ("encode", "phase1", TRIAL_STAGE)}
        ray.shutdown()
    finally:
        server.stop()
    result = {
        "benchmark": "sweep_reuse",
        "encoder": args.encoder,
        "overrides": ENCODERS[args.encoder],
        "trials": len(args.lengths) * len(args.ratios),
        "prompt_lengths": args.lengths,
        "synthesis_ratios": args.ratios,
        "phase1_steps": args.phase1_steps,
        "phase2_steps": args.phase2_steps,
        "cpus": os.cpu_count(),
        "reuse_s": seconds["reuse"],
        "naive_s": seconds["naive"],
        "ratio": round(seconds["reuse"] / seconds["naive"], 3),
        "target_ratio": 0.35,
        "launches": counts,
        "statuses": statuses,
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
