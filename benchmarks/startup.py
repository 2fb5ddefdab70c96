"""Print JSON: the fixed cost of a training job (wall time minus the stages' own work), one worker
group per job against one per stage, on the same code, data and machine in one run.

The integration tests' tiny run (3 classes at 64 px, phase 1 + phase 2 of 4 steps, evaluation) on 2
Ray Train workers with DeepSpeed ZeRO-2, data and checkpoints on a local SeaweedFS: once as the job runs
it (`stages.run_job` over all stages in one `TorchTrainer` run) and once as it ran before, one
`TorchTrainer` run per stage (worker start, imports, process group and tear-down paid three times).
Each stage's own time is what the workers measure around it (`stage_seconds/<stage>`); the fixed cost
is the wall time of the fits minus those. Target: one group's fixed cost <= 40 s on a 2-core machine
(exit 1 when missed). `--rounds N` alternates the two shapes N times; medians are reported.

Usage: .venv/bin/python benchmarks/startup.py [--rounds 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ and tests/ from the repository

from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

TARGET_FIXED_S = 40.0
STAGES = ("phase1", "phase2", "evaluate")


def _data(tmp: Path, bucket: str) -> str:
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    root = synthesize(tmp / "synth", classes=3, image_size=64, train_per_class=40, test_per_class=6, seed=0)
    split = make_split(read_dataset("synth", root), "exp", ratio=4, seed=0, val_fraction=0.5)
    uri = f"s3://{bucket}/tiny"
    prepare("synth", root, split.save(tmp / "split.json"), uri, test_shard_samples=5, log=lambda _m: None)
    return uri


def _fit(inp, stages: tuple[str, ...], name: str) -> tuple[float, float]:
    """(wall seconds of the fit, the stages' own seconds as rank 0 measured them)."""
    from ltad.training.ray_run import fit
    from ltad.training.stages import STAGE_SECONDS, run_job

    tic = time.monotonic()
    result = fit(run_job, replace(inp, stages=stages), name=name)
    wall = time.monotonic() - tic
    own = sum(v for k, v in (result.metrics or {}).items() if k.startswith(STAGE_SECONDS))
    return wall, own


def measure(rounds: int) -> dict:
    import ray

    from ltad.io import storage
    from ltad.training.inputs import stage_input
    from tests.integration.conftest import tiny_config
    from tools.services.ports import free_base, free_port
    from tools.services.seaweed import GRPC, OFFSETS, SeaweedServer

    shapes: dict[str, list[tuple[float, float]]] = {"one_group": [], "per_stage": []}
    with tempfile.TemporaryDirectory(prefix="ltad-startup-") as tmpdir:
        tmp = Path(tmpdir)
        server = SeaweedServer(tmp / "s3", port=free_base(OFFSETS + tuple(o + GRPC for o in OFFSETS)))
        server.start()
        try:
            os.environ.update(server.env())
            storage.reset_client()
            server.create_bucket("bench")
            data = _data(tmp, "bench")
            ray.init(
                num_cpus=2,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                dashboard_port=free_port(),
                object_store_memory=200 << 20,
                log_to_driver=False,
            )
            try:
                for r in range(rounds):
                    for shape in ("per_stage", "one_group") if r % 2 == 0 else ("one_group", "per_stage"):
                        name = f"{shape}-{r}"
                        run = {"storage_path": f"s3://bench/ray-{name}", "name": name}
                        inp = stage_input(tiny_config(tmp / name, data, run=run), commit="bench")
                        if shape == "one_group":
                            shapes[shape].append(_fit(inp, STAGES, f"{name}-job"))
                        else:
                            parts = [_fit(inp, (s,), f"{name}-{s}") for s in STAGES]
                            shapes[shape].append((sum(p[0] for p in parts), sum(p[1] for p in parts)))
                        wall, own = shapes[shape][-1]
                        print(f"{shape}: wall {wall:.1f} s, stages' own work {own:.1f} s", file=sys.stderr)
            finally:
                ray.shutdown()
        finally:
            server.stop()
    out: dict = {"rounds": rounds, "workers": 2, "stages": list(STAGES), "load_average": os.getloadavg()}
    for shape, runs in shapes.items():
        out[shape] = {
            "wall_s": statistics.median(w for w, _ in runs),
            "own_s": statistics.median(o for _, o in runs),
            "fixed_s": statistics.median(w - o for w, o in runs),
            "runs": [{"wall_s": w, "own_s": o} for w, o in runs],
        }
    out["fixed_ratio_one_group_over_per_stage"] = out["one_group"]["fixed_s"] / out["per_stage"]["fixed_s"]
    out["target"] = {
        "one_group_fixed_s_max": TARGET_FIXED_S,
        "met": out["one_group"]["fixed_s"] <= TARGET_FIXED_S,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    add_json_flag(ap)
    args = ap.parse_args(argv)
    result = measure(args.rounds)
    emit(result, args.json, argv)
    if not result["target"]["met"]:
        print(
            f"startup: fixed cost {result['one_group']['fixed_s']:.1f} s > target {TARGET_FIXED_S:.0f} s",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
