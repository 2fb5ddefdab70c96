"""Print JSON: `ltad predict` as a Ray Data job, images/s with 2 workers vs 1 and the driver's peak RSS
at 10x the images vs 1x; exit 1 naming each missed target.

Builds a tiny exported model (the integration tests' TINY_MODEL, standardisation fitted on synthetic
normals: speed and memory, not quality, are measured) and --images / 10x --images random-texture PNGs
(--size px), then runs `ltad predict --workers N --part-size P` in a fresh process per case (each
starts its own local Ray), reading the process's ru_maxrss (the driver only: Ray's own processes and
the actors are other processes) and the part files' commit times. Images/s is the steady rate: the
images of the parts committed after the first one over the time between the first and the last
commit, so the actors' start (import, model load: the same in both cases) is left out; the rate over
the whole job is reported beside it. Targets: steady 2-worker rate >= 1.6 x the 1-worker rate, and
driver peak RSS at 10x <= 1.3 x at 1x.
Usage: .venv/bin/python benchmarks/batch_predict.py [--images 200] [--size 96] [--part-size 50] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import add_json_flag, finish  # noqa: E402  (benchmarks/record.py, beside this script)

SPEEDUP_TARGET = 1.6
RSS_TARGET = 1.3
CHILD = """
import json, resource, sys
from ltad.cli import main
rc = main(sys.argv[1:])
print("RESULT " + json.dumps({"rc": rc, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_model(work: Path) -> Path:
    """The predict tests' untrained tiny export (tests/integration/conftest.py `tiny_export`)."""
    from tests.integration.conftest import tiny_export

    return tiny_export(work, test_per_class=2, commit="bench")[0]


def make_images(folder: Path, count: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(count):
        noise = rng.integers(-20, 21, (size, size, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(folder / f"{i:06d}.png")
    return folder


def run_case(model: Path, images: Path, out: Path, workers: int, part_size: int) -> dict:
    argv = ["predict", "--model", str(model), "--images", str(images), "--out", str(out)]
    argv += ["--workers", str(workers), "--part-size", str(part_size)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    started = time.monotonic()
    ran = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    wall = time.monotonic() - started
    lines = [line for line in ran.stdout.splitlines() if line.startswith("RESULT ")]
    if ran.returncode or not lines or json.loads(lines[-1][7:])["rc"]:
        raise SystemExit(
            f"ltad predict failed ({ran.returncode}):\n{ran.stdout[-2000:]}\n{ran.stderr[-4000:]}"
        )
    result = json.loads(lines[-1][7:])
    manifest = json.loads((out / "manifest.json").read_text())
    commits = sorted(
        (p.stat().st_mtime, manifest["parts"][int(p.stem.split("-")[1])]["scored"])
        for p in (out / "parts").glob("scores-*.parquet")
    )
    steady_images = sum(n for _, n in commits[1:])
    steady_s = commits[-1][0] - commits[0][0]
    return {
        "workers": workers,
        "images": manifest["scored"] + manifest["failed"],
        "parts": len(commits),
        "job_seconds": manifest["seconds"],
        "process_seconds": round(wall, 2),
        "images_per_s_job": round((manifest["scored"] + manifest["failed"]) / manifest["seconds"], 2),
        "images_per_s_steady": round(steady_images / steady_s, 2) if steady_s > 0 else None,
        "driver_peak_rss_mib": round(result["maxrss_kib"] / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="images at 1x (10x for the memory case)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels")
    p.add_argument("--part-size", type=int, default=50)
    p.add_argument("--work", help="scratch folder (default: a temporary one)")
    add_json_flag(p)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ltad-batch-bench-") as tmp:
        work = Path(args.work or tmp)
        model = make_model(work)
        small = make_images(work / "images-1x", args.images, args.size)
        large = make_images(work / "images-10x", 10 * args.images, args.size)
        one = run_case(model, large, work / "out-10x-w1", 1, args.part_size)
        two = run_case(model, large, work / "out-10x-w2", 2, args.part_size)
        base = run_case(model, small, work / "out-1x-w2", 2, args.part_size)
    speedup = (two["images_per_s_steady"] or 0) / (one["images_per_s_steady"] or float("inf"))
    rss = two["driver_peak_rss_mib"] / base["driver_peak_rss_mib"]
    missed = []
    if speedup < SPEEDUP_TARGET:
        missed.append(f"2 workers give {speedup:.2f}x the images/s of 1 (target >= {SPEEDUP_TARGET})")
    if rss > RSS_TARGET:
        missed.append(f"driver peak RSS at 10x the images is {rss:.2f}x that at 1x (target <= {RSS_TARGET})")
    body = {
        "benchmark": "batch_predict",
        "cpus": os.cpu_count(),
        "image_size": args.size,
        "part_size": args.part_size,
        "cases": {"10x_1_worker": one, "10x_2_workers": two, "1x_2_workers": base},
        "speedup_2_vs_1_steady": round(speedup, 3),
        "speedup_2_vs_1_job": round(two["images_per_s_job"] / one["images_per_s_job"], 3),
        "driver_rss_ratio_10x_vs_1x": round(rss, 3),
        "targets": {
            "speedup_2_vs_1_steady": f">= {SPEEDUP_TARGET}",
            "driver_rss_ratio_10x_vs_1x": f"<= {RSS_TARGET}",
        },
    }
    return finish(body, missed, args.json, argv)


if __name__ == "__main__":
    sys.exit(main())
