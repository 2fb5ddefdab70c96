"""Stream throughput local vs S3, and prepare's peak memory at two dataset sizes; prints JSON.

The same shards go through the same evaluation pipeline (PNG decode and resize included) from a
local directory and from a SeaweedFS server started for this run, in alternating passes; the median
pass of each gives `local_images_per_s` and `s3_images_per_s` (target ratio >= 0.9; on a shared
machine the passes are noisy, so every pass, the best-pass ratio and the load average are printed
too). `prepare` runs
in a fresh subprocess per size (10x apart) and reports its own peak RSS (target ratio <= 1.3: it
streams, so memory must not grow with the dataset).

Usage: .venv/bin/python benchmarks/stream.py [--classes 8] [--image-size 256] [--passes 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ (local services) from the repo

from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

PREPARE = """
import resource, sys
from ltad.data.prepare import prepare
prepare(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], log=lambda m: None)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_dataset(out: Path, classes: int, image_size: int, train: int, test: int) -> tuple[Path, Path]:
    from ltad.data.datasets import read_dataset
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    synthesize(
        out, classes=classes, image_size=image_size, train_per_class=train, test_per_class=test, seed=0
    )
    split = make_split(read_dataset("synth", out), "full", None, 0)
    return out, split.save(out.parent / f"{out.name}-split.json")


def prepare_peak_rss_mb(root: Path, split: Path, out: str) -> float:
    """Peak RSS (MB) of `prepare` in its own process (ru_maxrss is in KiB on Linux)."""
    done = subprocess.run(
        [sys.executable, "-c", PREPARE, "synth", str(root), str(split), out],
        capture_output=True, text=True, check=True, env=os.environ,
    )  # fmt: skip
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def images_per_s(uri: str, image_size: int) -> float:
    """One full pass over every shard (train + test) through the evaluation decode."""
    from functools import partial

    from ltad.data.manifest import read_manifest
    from ltad.data.streams import ExactlyOnceStream, decode_image_sample

    manifest = read_manifest(uri)
    shards = manifest.shards["train"] + manifest.shards["test"]
    decode = partial(decode_image_sample, image_size=image_size, with_mask=True)
    start = time.perf_counter()
    n = sum(1 for _ in ExactlyOnceStream(uri, shards, 0, 1, decode))
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--train-per-class", type=int, default=50, help="of the large dataset (small: 1/10)")
    parser.add_argument("--test-per-class", type=int, default=20, help="of the large dataset (small: 1/10)")
    parser.add_argument("--passes", type=int, default=5)
    add_json_flag(parser)
    args = parser.parse_args(argv)

    from ltad.data.datasets import read_dataset
    from ltad.io import storage
    from tools.services.seaweed import SeaweedServer

    with tempfile.TemporaryDirectory(prefix="ltad-bench-") as tmp:
        tmp_path = Path(tmp)
        server = SeaweedServer(tmp_path / "s3")
        server.start()
        try:
            os.environ.update(server.env())
            storage.reset_client()
            server.create_bucket("bench")
            large = make_dataset(
                tmp_path / "large", args.classes, args.image_size, args.train_per_class, args.test_per_class
            )
            small = make_dataset(
                tmp_path / "small", args.classes, args.image_size,
                max(1, args.train_per_class // 10), max(1, args.test_per_class // 10),
            )  # fmt: skip
            small_images = len(read_dataset("synth", small[0]).records)
            rss_small = prepare_peak_rss_mb(*small, "s3://bench/small")
            rss_large = prepare_peak_rss_mb(*large, "s3://bench/large")
            local = str(tmp_path / "shards")
            prepare_peak_rss_mb(*large, local)
            local_runs, s3_runs = [], []
            for _ in range(args.passes):  # alternate so machine noise hits both alike
                local_runs.append(images_per_s(local, args.image_size))
                s3_runs.append(images_per_s("s3://bench/large", args.image_size))
            from ltad.data.manifest import read_manifest

            manifest = read_manifest(local)
            shard_mb = sum(e.bytes for s in manifest.shards.values() for e in s) / 1e6
        finally:
            server.stop()
    local_ips, s3_ips = statistics.median(local_runs), statistics.median(s3_runs)
    result = {
        "images": manifest.samples("train") + manifest.samples("test"),
        "shard_mb": round(shard_mb, 1),
        "image_size": args.image_size,
        "local_images_per_s": round(local_ips, 1),
        "s3_images_per_s": round(s3_ips, 1),
        "ratio": round(s3_ips / local_ips, 3),
        "ratio_best_pass": round(max(s3_runs) / max(local_runs), 3),
        "passes": {"local": [round(x, 1) for x in local_runs], "s3": [round(x, 1) for x in s3_runs]},
        "load_average": round(os.getloadavg()[0], 2),
        "prepare_images": {"small": small_images, "large": manifest.samples("train") + manifest.samples("test")},
        "prepare_peak_rss_mb": {"small": round(rss_small, 1), "large": round(rss_large, 1)},
        "prepare_rss_ratio": round(rss_large / rss_small, 3),
        "cpus": os.cpu_count(),
    }  # fmt: skip
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
