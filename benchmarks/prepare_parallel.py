"""Print JSON (and write it with --out): `ltad prepare` images/s with 1 vs 2 local worker processes on a
synthetic tree, and the stored/source byte ratio of a tree of ~1-megapixel JPEGs (kept as they are)
beside what the previous PNG re-encode made of the same images, and with --max-size 256.

Throughput: passes alternate 1, 2, 1, 2, ... workers (--passes of each), every pass into a fresh
output (nothing skipped), timed end to end (pool start, scan, check, write, manifest); the images/s of
each worker count is from its median pass. The tree is `ltad synth` with each train image also present
--copies times under other names (byte copies: every copy is read, decoded and written like any
image; synthesizing that many PNGs would take longer than preparing them). The pool's start (workers
up and a no-op answered by each) is timed on its own, as `pool_start_s`.

Usage: .venv/bin/python benchmarks/prepare_parallel.py [--work DIR] [--out docs/results/prepare-parallel.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from ltad.data.datasets import read_dataset  # noqa: E402
from ltad.data.executor import Processes, start_context  # noqa: E402
from ltad.data.prepare import prepare  # noqa: E402
from ltad.data.splits import make_split  # noqa: E402
from ltad.data.synth import synthesize  # noqa: E402


def _timed(root: Path, split: Path, out: Path, **kw) -> tuple[float, object]:
    started = time.perf_counter()
    manifest = prepare(
        "synth" if "synth" in root.name else "mvtec", root, split, str(out), log=lambda m: None, **kw
    )
    return time.perf_counter() - started, manifest


def _bytes(manifest) -> int:
    return sum(e.bytes for s in manifest.shards.values() for e in s)


def _with_copies(root: Path, copies: int) -> int:
    """Add `copies` byte copies of every train image beside it (`NNN-cK.png`); the images now in the tree."""
    for path in sorted(root.glob("*/train/good/*.png")):
        if "-c" in path.stem:
            continue  # a tree reused from an earlier run with --work
        for k in range(copies):
            copy = path.with_name(f"{path.stem}-c{k}.png")
            if not copy.exists():
                shutil.copyfile(path, copy)
    dataset = read_dataset("synth", root)
    return len(dataset.select("train")) + len(dataset.select("test"))


def _pool_start_seconds(workers: int) -> float:
    """Seconds from nothing to `workers` worker processes that have each answered a no-op."""
    started = time.perf_counter()
    run = Processes(workers)
    try:
        list(run(_pid, list(range(workers))))
        return time.perf_counter() - started
    finally:
        run.close()


def _pid(_: int) -> int:
    return os.getpid()


def _spin(n: int) -> int:
    return sum(i * i for i in range(n))


def _cpu_ceiling(passes: int, units: int = 8, n: int = 1_500_000) -> float:
    """What 2 processes give over 1 on this machine now: the same pure-CPU units (no I/O, no pickled
    data) in this process vs on 2 started workers, alternating, median seconds 1 / median seconds 2."""
    run = Processes(2)
    seconds: dict[int, list[float]] = {1: [], 2: []}
    try:
        list(run(_spin, [1, 1]))  # workers up before the clock starts
        for _ in range(passes):
            for workers in (1, 2):
                started = time.perf_counter()
                if workers == 1:
                    [_spin(n) for _ in range(units)]
                else:
                    list(run(_spin, [n] * units))
                seconds[workers].append(time.perf_counter() - started)
    finally:
        run.close()
    return statistics.median(seconds[1]) / statistics.median(seconds[2])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--copies", type=int, default=4, help="byte copies of each train image (see above)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes per worker count")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="ltad-bench-prepare-"))

    # 1. Throughput: a synthetic PNG tree, every image through check + write, 1 vs 2 processes.
    root = synthesize(
        work / "synth",
        classes=args.classes,
        image_size=args.image_size,
        train_per_class=60,
        test_per_class=20,
        seed=0,
    )
    images = _with_copies(root, args.copies)
    split = make_split(read_dataset("synth", root), "full", None, 0).save(work / "synth-split.json")
    seconds: dict[int, list[float]] = {1: [], 2: []}
    manifests = []
    for p in range(args.passes):
        for workers in (1, 2):
            out = work / f"out-w{workers}-p{p}"
            shutil.rmtree(out, ignore_errors=True)
            took, manifest = _timed(root, split, out, workers=workers)
            seconds[workers].append(round(took, 3))
            manifests.append(manifest)
            shutil.rmtree(out)
    rates = {
        w: {
            "seconds": round(statistics.median(seconds[w]), 2),
            "images_per_s": round(images / statistics.median(seconds[w]), 1),
            "pass_seconds": seconds[w],
        }
        for w in seconds
    }
    identical = all(m == manifests[0] for m in manifests)
    pool_start = _pool_start_seconds(2)
    ceiling = _cpu_ceiling(args.passes)

    # 2. Bytes: ~1-megapixel JPEG photographs-like images (synth at 1024 px saved as JPEG q90).
    big = synthesize(
        work / "big-src", classes=2, image_size=1024, train_per_class=6, test_per_class=3, seed=1
    )
    jpeg_root = work / "jpeg"
    source_images = 0
    png_bytes = 0
    png_seconds = 0.0
    for path in sorted(big.rglob("*.png")):
        rel = path.relative_to(big)
        dest = jpeg_root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if "ground_truth" in rel.parts:
            dest.write_bytes(path.read_bytes())
            continue
        with Image.open(path) as im:
            im.convert("RGB").save(dest.with_suffix(".jpg"), quality=90)
        data = dest.with_suffix(".jpg").read_bytes()
        source_images += len(data)
        started = time.perf_counter()  # what the previous prepare did to every image: decode + PNG
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG", compress_level=1)
        png_seconds += time.perf_counter() - started
        png_bytes += len(buf.getvalue())
    count = len(list(jpeg_root.rglob("*.jpg")))
    jsplit = make_split(read_dataset("mvtec", jpeg_root), "full", None, 0).save(work / "jpeg-split.json")
    source_all = sum(p.stat().st_size for p in jpeg_root.rglob("*") if p.is_file())
    _, kept = _timed(jpeg_root, jsplit, work / "jpeg-out")
    _, small = _timed(jpeg_root, jsplit, work / "jpeg-out-256", max_size=256)
    result = {
        "command": "python benchmarks/prepare_parallel.py --out docs/results/prepare-parallel.json",
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "throughput": {
            "tree": (
                f"ltad synth: {args.classes} classes, {args.image_size} px PNG, split full, {images} images "
                f"(each train image plus {args.copies} byte copies)"
            ),
            "passes": f"{args.passes} per worker count, alternating 1, 2; images/s from the median pass",
            "workers": rates,
            "speedup_2_vs_1": round(rates[1]["seconds"] / rates[2]["seconds"], 2),
            "workers_1_and_2_identical_manifest": identical,
            "pool_start_s": round(pool_start, 3),
            "pool_start_method": start_context().get_start_method(),
            "cpu_bound_speedup_2_vs_1": round(ceiling, 2),
        },
        "jpeg": {
            "tree": f"{count} JPEG images 1024x1024 (q90) + PNG masks, MVTec layout",
            "source_bytes": source_all,
            "shard_bytes_kept": _bytes(kept),
            "ratio_kept": round(_bytes(kept) / source_all, 3),
            "png_reencode_ratio_images": round(png_bytes / source_images, 2),
            "png_reencode_ms_per_image": round(1000 * png_seconds / count, 1),
            "shard_bytes_max_size_256": _bytes(small),
            "ratio_max_size_256": round(_bytes(small) / source_all, 3),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
