"""Print JSON (and write it with --out): `ltad prepare` images/s with 1 vs 2 local worker processes on a
synthetic tree, and the stored/source byte ratio of a tree of ~1-megapixel JPEGs (kept as they are)
beside what the previous PNG re-encode made of the same images, and with --max-size 256.

Usage: .venv/bin/python benchmarks/prepare_parallel.py [--work DIR] [--out docs/results/prepare-parallel.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from ltad.data.datasets import read_dataset  # noqa: E402
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=256)
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
    split = make_split(read_dataset("synth", root), "full", None, 0).save(work / "synth-split.json")
    images = len(read_dataset("synth", root).select("train")) + len(
        read_dataset("synth", root).select("test")
    )
    rates = {}
    for workers in (1, 2):
        seconds, manifest = _timed(root, split, work / f"out-w{workers}", workers=workers)
        rates[workers] = {"seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1)}
    identical = _timed(root, split, work / "out-w1b", workers=1)[1] == manifest

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
            "tree": f"ltad synth: {args.classes} classes, {args.image_size} px PNG, split full, {images} images",
            "workers": rates,
            "speedup_2_vs_1": round(rates[1]["seconds"] / rates[2]["seconds"], 2),
            "workers_1_and_2_identical_manifest": identical,
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
