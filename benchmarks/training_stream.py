"""One training reader over many classes: open sources, bytes read per byte delivered, peak memory.

Writes `--classes` classes (exp profile: `--head` samples down to 1) of `--sample-kb` KB random
payloads with the real shard writer and sample index into a temporary directory, then runs one
reader (loader worker 0 of `--workers`) for `--epochs` epochs of `--epoch-samples` samples a rank, once
with the sample index (bounded: `data.max_open_sources`) and once without (the sequential stream of
shards prepared before the index), each in a fresh subprocess so that its peak RSS is its own.
`peak_open_file_reads` counts every open sequential read (shards and index sidecars, read whole).
Prints one JSON object (written to `--out` too when given).

Usage: .venv/bin/python benchmarks/training_stream.py [--classes 300] [--out docs/results/x.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READER = """
import io, json, resource, sys, time
from ltad.io import storage
from ltad.data.manifest import ShardEntry
from ltad.data.streams import ResampledStream, class_weights

root, indexed, epoch_samples, epochs, workers, balance, max_open = sys.argv[1:8]
doc = json.loads((__import__("pathlib").Path(root) / "layout.json").read_text())
by_class = {c: [ShardEntry(**e) for e in v] for c, v in doc["shards"].items()}
meter = {"open": 0, "peak": 0, "bytes": 0}

class Counting(io.RawIOBase):
    def __init__(self, path):
        self.f = open(path, "rb", buffering=0); meter["open"] += 1; meter["peak"] = max(meter["peak"], meter["open"])
    def readable(self): return True
    def readinto(self, b):
        n = self.f.readinto(b); meter["bytes"] += n; return n
    def close(self):
        if not self.closed: meter["open"] -= 1; self.f.close()
        super().close()

read_range = storage.read_range
def ranged(uri, offset, length, retries=None):
    data = read_range(uri, offset, length); meter["bytes"] += len(data); return data
storage.open_read = lambda uri, retries=None: io.BufferedReader(Counting(uri), storage.BUFFER)
storage.read_range = ranged

def decode(s):
    return {"bytes": sum(512 + -(-len(v) // 512) * 512 for k, v in s.items() if not k.startswith("__"))}

stream = ResampledStream(root, by_class, class_weights(doc["counts"], float(balance)), epoch_samples=int(epoch_samples),
    seed=0, rank=0, world_size=1, decode=decode, sample_index=indexed == "1", max_open_sources=int(max_open))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tic, delivered, n = time.perf_counter(), 0, 0
for epoch in range(int(epochs)):
    for sample in stream.samples(epoch, 0, stream.reader_samples(0, int(workers))):
        delivered += sample["bytes"]; n += 1
print(json.dumps({"samples": n, "seconds": round(time.perf_counter() - tic, 2),
    "peak_open_file_reads": meter["peak"], "open_sources_peak": stream.stats["open_sources_peak"],
    "sources_opened": stream.stats["sources_opened"], "ranged_reads": stream.stats["ranged_reads"],
    "bytes_read": meter["bytes"], "bytes_delivered": delivered,
    "read_amplification": round(meter["bytes"] / delivered, 3),
    "rss_before_mb": round(base / 1024, 1),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def write_classes(root: Path, classes: int, head: int, sample_kb: float) -> dict:
    import numpy as np

    from ltad.data.sample_index import write_shard_index
    from ltad.data.shards import ShardWriter

    counts = {f"c{i:03d}": max(1, round(head * head ** (-i / max(1, classes - 1)))) for i in range(classes)}
    rng = np.random.default_rng(0)
    shards: dict[str, list[dict]] = {}
    for cls, n in counts.items():
        shards[cls] = []

        def done(path, info, cls=cls):
            write_shard_index(path, str(path), info.sha256)
            shards[cls].append(
                {
                    "name": info.name,
                    "samples": info.samples,
                    "bytes": info.bytes,
                    "sha256": info.sha256,
                    "per_class": info.per_class,
                }
            )

        writer = ShardWriter(root, "train", cls, done)
        for i in range(n):
            body = rng.integers(0, 255, int(sample_kb * 1024), dtype=np.uint8).tobytes()
            meta = json.dumps({"class_name": cls}).encode()
            writer.write(f"{cls}/{i:05d}", {"png": body, "cls": b"0", "json": meta}, cls)
        writer.close()
    layout = {"counts": counts, "shards": shards}
    (root / "layout.json").write_text(json.dumps(layout))
    return layout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=300)
    parser.add_argument("--head", type=int, default=60)
    parser.add_argument("--sample-kb", type=float, default=20)
    parser.add_argument("--epoch-samples", type=int, default=800, help="per rank (batch 8 x 100 steps)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--class-balance", type=float, default=0.5)
    parser.add_argument("--max-open-sources", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ltad-stream-bench-") as tmp:
        tic = time.perf_counter()
        layout = write_classes(Path(tmp), args.classes, args.head, args.sample_kb)
        result: dict = {
            "command": "benchmarks/training_stream.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "classes": args.classes,
            "samples": sum(layout["counts"].values()),
            "sample_kb": args.sample_kb,
            "epoch_samples_per_rank": args.epoch_samples,
            "epochs": args.epochs,
            "loader_workers": args.workers,
            "class_balance": args.class_balance,
            "max_open_sources": args.max_open_sources,
            "write_seconds": round(time.perf_counter() - tic, 1),
        }
        for name, flag in (("indexed", "1"), ("sequential_before", "0")):
            ran = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    READER,
                    tmp,
                    flag,
                    str(args.epoch_samples),
                    str(args.epochs),
                    str(args.workers),
                    str(args.class_balance),
                    str(args.max_open_sources),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            result[name] = json.loads(ran.stdout.strip().splitlines()[-1])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
