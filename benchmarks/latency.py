"""One training reader on a slow object store: samples/s with D ms added per request; prints JSON.

Real object stores answer each request after 20-50 ms. This benchmark writes `--classes` tail
classes of `--per-class` PNG images (`--image-px`, random pixels, so they do not compress) with the
real shard writer and sample index into a SeaweedFS server started for this run, and starts one
counting proxy per delay in front of its S3 port (tools/services/s3_proxy.py), each in its own
process: the proxy holds each request D ms before it forwards it, responses pass at once, and it
counts the GET requests it forwarded. One training reader (`ResampledStream`, every class served by
ranged reads, PNG decode and resize to 64 px as in training) then draws the same samples directly
and through each proxy (`AWS_ENDPOINT_URL` pointed at it), in alternating order over `--passes`
passes, each pass a new epoch (the same epoch for every endpoint). Class indexes are loaded before
the clock starts, except in one extra pass per endpoint (`cold_reader_samples_per_s`: a fresh
reader that reads its class indexes as it meets the classes, as on the first epoch of a run). Reported: samples/s per endpoint (median pass), the ratio to the direct rate
(median of the per-pass ratios), GETs per delivered sample (counted at the proxy), and the same for
`data.read_ahead=0` (each sample read when it is delivered, the path before read-ahead) at 1/4 of
the samples, for reference.

Prepare from `s3://` (`prepare`): a synth dataset (PNG images and masks, 128 px) uploaded to the
server, then `ltad prepare` end to end with `--prepare-workers` processes (scan, check, write/upload,
manifest; each pass into a new prefix), direct and through each proxy in alternating order; images/s,
the ratio to direct, GETs and requests per image at the proxy; for reference, the same with lanes of
one check batch or one shard (`LANE_IMAGES = 32`: the read-ahead drained at every batch and shard, the
path before lanes), and once the serial reads before that (`READS_IN_FLIGHT = 1`, one GET at a time).

The proxy delays the chunk that starts each request (an upload's body passes at once: a real
store's latency is per request, not per 64 KiB).

Targets: at 20 ms, the reader keeps >= 0.8 of its direct rate; prepare with 2 workers >= 0.75. Exits 1
naming each missed target.

`--ci` (.ci/run, under 40 s): one reader and one prepare through a 50 ms proxy only, checking counts
that CPU load does not move: the most requests in flight at once at the proxy (>= 8; serial reads give
1 per reader or worker) and GETs per sample / per source file; rates are printed, not checked.

Usage: .venv/bin/python benchmarks/latency.py [--quick] [--only reader|prepare] [--ci] [--json docs/results/latency.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/ (local services) from the repo

from record import add_json_flag, finish  # noqa: E402  (benchmarks/record.py, beside this script)

from tools.services.s3_proxy import CountingProxy as Proxy  # noqa: E402  (the delaying, counting proxy)

TARGET_RATIO_20MS = 0.8
TARGET_PREPARE_RATIO_20MS = 0.75


def write_dataset(work: Path, prefix: str, classes: int, per_class: int, px: int) -> tuple[dict, dict]:
    """PNG shards (one per class) with sidecars, uploaded under `prefix`; (shards by class, counts)."""
    import numpy as np
    from PIL import Image

    from ltad.data.manifest import ShardEntry
    from ltad.data.sample_index import write_shard_index
    from ltad.data.shards import ShardWriter
    from ltad.io import storage

    rng = np.random.default_rng(0)
    by_class: dict[str, list] = {}
    counts = {f"c{i:03d}": per_class for i in range(classes)}
    for cls in counts:
        by_class[cls] = []

        def done(path, info, cls=cls):
            uri = storage.join(prefix, info.name)
            write_shard_index(path, uri, info.sha256)
            storage.upload_file(path, uri)
            by_class[cls].append(ShardEntry(info.name, info.samples, info.bytes, info.sha256, info.per_class))

        writer = ShardWriter(work, "train", cls, done)
        for i in range(per_class):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (px, px, 3), dtype=np.uint8)).save(buf, format="PNG")
            meta = json.dumps({"class_name": cls, "label": 0}).encode()
            writer.write(f"{cls}/{i:05d}", {"png": buf.getvalue(), "cls": b"0", "json": meta}, cls)
        writer.close()
    return by_class, counts


def use_endpoint(endpoint: str) -> None:
    from ltad.io import storage

    os.environ["AWS_ENDPOINT_URL"] = endpoint
    storage.reset_client()


def restore_endpoint(saved: str | None) -> None:
    """Put back the endpoint the benchmark found (or none), with a fresh client for it."""
    from ltad.io import storage

    if saved is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = saved
    storage.reset_client()


def one_pass(
    prefix: str,
    by_class: dict,
    counts: dict,
    epoch: int,
    samples: int,
    read_ahead: int,
    proxy: Proxy | None,
    cold: bool = False,
) -> dict:
    """One reader's epoch of `samples` draws; samples/s, what it requested, what the proxy saw."""
    from ltad.data.streams import ResampledStream, class_weights, decode_image_sample

    stream = ResampledStream(
        prefix,
        by_class,
        class_weights(counts, 1.0),
        epoch_samples=samples,
        seed=0,
        rank=0,
        world_size=1,
        decode=partial(decode_image_sample, image_size=64, with_mask=False),
        epoch=epoch,
        max_open_sources=1,
        sample_index=True,
        read_ahead=read_ahead,
    )
    assert not stream.sequential_classes(samples), "every class must be served by ranged reads"
    for cls in [] if cold else counts:  # the class indexes (a GET per shard, once a reader) before the clock
        assert stream._class_index(cls) is not None
    before = proxy.stats() if proxy else None
    tic = time.perf_counter()
    n = sum(1 for _ in stream.samples(epoch, 0, samples))
    seconds = time.perf_counter() - tic
    row = {"samples": n, "seconds": seconds, "samples_per_s": n / seconds, **stream.stats}
    if proxy and before:
        after = proxy.stats()
        row["proxy_gets"] = after["gets"] - before["gets"]
        row["proxy_requests"] = after["requests"] - before["requests"]
    return row


def write_raw_dataset(work: Path, prefix: str, classes: int, train: int, test: int, px: int) -> Path:
    """A synth dataset (MVTec layout, PNG images and masks) uploaded under `prefix`; its split file."""
    from ltad.data.datasets import read_dataset
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize
    from ltad.io import storage

    root = synthesize(work / "synth", classes=classes, image_size=px, train_per_class=train,
                      test_per_class=test, seed=0)  # fmt: skip
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        storage.upload_file(path, storage.join(prefix, str(path.relative_to(root))))
    return make_split(read_dataset("synth", root), "full", seed=0).save(work / "split.json")


def prepare_pass(
    root: str,
    split: Path,
    out: str,
    workers: int,
    reads_in_flight: int,
    proxy: Proxy | None,
    lane_images: int | None = None,
) -> dict:
    """One `prepare` from `root` (s3://) to `out` with `workers` processes, end to end (scan, check,
    write/upload, manifest); images/s, and the GETs and requests per image the proxy saw.
    `lane_images` overrides `LANE_IMAGES` (32: one check batch or one shard per lane, the path before)."""
    import multiprocessing

    from ltad.data import prepare as prepare_module
    from ltad.data.executor import start_context

    default_lane = prepare_module.LANE_IMAGES
    prepare_module.READS_IN_FLIGHT = reads_in_flight  # forked workers inherit it
    prepare_module.LANE_IMAGES = lane_images or default_lane
    method = start_context().get_start_method()
    before = proxy.stats() if proxy else None
    tic = time.perf_counter()
    try:
        manifest = prepare_module.prepare("synth", root, split, out, workers=workers, log=lambda _m: None)
    finally:
        prepare_module.LANE_IMAGES = default_lane
    seconds = time.perf_counter() - tic
    images = sum(manifest.samples(s) for s in manifest.shards)
    row = {"images": images, "seconds": seconds, "images_per_s": images / seconds, "start": method}
    if proxy and before:
        after = proxy.stats()
        row["gets_per_image"] = (after["gets"] - before["gets"]) / images
        row["requests_per_image"] = (after["requests"] - before["requests"]) / images
    assert multiprocessing.active_children() == [], "prepare left worker processes behind"
    return row


def prepare_summary(rows_by: dict[str, list[dict]]) -> dict:
    out: dict = {}
    direct = rows_by["direct"]
    for name, rows in rows_by.items():
        fig = {
            "images_per_s": round(statistics.median(r["images_per_s"] for r in rows), 1),
            "passes_images_per_s": [round(r["images_per_s"], 1) for r in rows],
            "images_per_pass": rows[0]["images"],
            "worker_start": sorted({r["start"] for r in rows}),
        }
        if name != "direct":
            fig["ratio_to_direct"] = round(
                statistics.median(r["images_per_s"] / d["images_per_s"] for r, d in zip(rows, direct)), 3
            )
            fig["gets_per_image_at_proxy"] = round(statistics.mean(r["gets_per_image"] for r in rows), 3)
            fig["requests_per_image_at_proxy"] = round(
                statistics.mean(r["requests_per_image"] for r in rows), 3
            )
        out[name] = fig
    return out


CI_DELAY_MS = 50.0
CI_MIN_IN_FLIGHT = 8
"""--ci: requests in flight at once that the proxy must see, from one reader and from prepare's 2 workers.
Serial reads show 1 (a reader) or 2 (a worker each); read-ahead shows up to 32: a count of what the
code asks for, so CPU load on the machine does not move it the way it moves a ratio of rates."""


def ci_check(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The CI form (under 40 s): one reader and one `prepare` through a 50 ms proxy; checked are the
    requests in flight at the proxy and the GETs per sample / per source file, not a rate."""
    from ltad.io import storage
    from tools.services.seaweed import SeaweedServer

    started = time.monotonic()
    saved = os.environ.get("AWS_ENDPOINT_URL")
    result: dict = {"delay_ms": CI_DELAY_MS, "read_ahead": args.read_ahead}
    with tempfile.TemporaryDirectory(prefix="ltad-latency-ci-") as tmp:
        server = SeaweedServer(Path(tmp) / "s3")
        server.start()
        proxy = None
        try:
            os.environ.update(server.env())
            storage.reset_client()
            server.create_bucket("bench")
            by_class, counts = write_dataset(Path(tmp) / "work", "s3://bench/latency", 20, 12, 64)
            split = write_raw_dataset(Path(tmp) / "raw", "s3://bench/raw", 2, 24, 6, 64)
            sources = sum(1 for p in (Path(tmp) / "raw" / "synth").rglob("*.png"))
            proxy = Proxy(int(server.endpoint.rsplit(":", 1)[1]), CI_DELAY_MS)
            use_endpoint(proxy.endpoint)
            proxy.reset()
            row = one_pass("s3://bench/latency", by_class, counts, 100, 160, args.read_ahead, proxy)
            reader = {
                "samples": row["samples"],
                "samples_per_s": round(row["samples_per_s"], 1),
                "gets_per_sample": round(row["proxy_gets"] / row["samples"], 3),
                "most_in_flight": proxy.stats()["most_in_flight"],
            }
            proxy.reset()
            row = prepare_pass(
                "s3://bench/raw", split, "s3://bench/prepared-ci", 2, args.prepare_reads_in_flight, proxy
            )
            prep = {
                "images": row["images"],
                "source_files": sources,
                "images_per_s": round(row["images_per_s"], 1),
                "gets_per_source_file": round(row["gets_per_image"] * row["images"] / sources, 3),
                "most_in_flight": proxy.stats()["most_in_flight"],
            }
        finally:
            if proxy is not None:
                proxy.stop()
            server.stop()
            restore_endpoint(saved)
    missed = []
    for name, fig in (("one reader", reader), ("prepare with 2 workers", prep)):
        if fig["most_in_flight"] < CI_MIN_IN_FLIGHT:
            missed.append(
                f"{name} had at most {fig['most_in_flight']} requests in flight at a {CI_DELAY_MS:g} ms store, "
                f"target >= {CI_MIN_IN_FLIGHT}"
            )
    if reader["gets_per_sample"] > 1.0:
        missed.append(f"one reader made {reader['gets_per_sample']} GETs per sample, target <= 1")
    if prep["gets_per_source_file"] > 2.1:  # each image and mask once per pass (+ listing, manifest)
        missed.append(f"prepare made {prep['gets_per_source_file']} GETs per source file, target <= 2.1")
    result.update({
        "reader": reader,
        "prepare": prep,
        "targets": {
            "most_in_flight": f">= {CI_MIN_IN_FLIGHT}",
            "reader_gets_per_sample": "<= 1",
            "prepare_gets_per_source_file": "<= 2.1",
        },
        "rates_not_checked": "samples/s and images/s are printed, not asserted: they move with load",
        "seconds": round(time.monotonic() - started, 1),
    })  # fmt: skip
    return finish(result, missed, args.json, argv)


def main(argv: list[str] | None = None) -> int:
    from ltad.data.prepare import READS_IN_FLIGHT
    from ltad.data.streams import COALESCE_GAP, READ_AHEAD, READ_AHEAD_BYTES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and passes (under 2 minutes)")
    parser.add_argument(
        "--read-ahead", type=int, default=READ_AHEAD, help="data.read_ahead of the measured reader"
    )
    parser.add_argument("--delays", default="20,50", help="ms added per request, comma-separated")
    parser.add_argument("--classes", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--image-px", type=int, default=96)
    parser.add_argument("--samples", type=int, help="draws per pass (default 300, --quick 200)")
    parser.add_argument("--passes", type=int, help="default 5, --quick 3")
    parser.add_argument(
        "--only", choices=("reader", "prepare"), help="run one part (default: both; targets of both)"
    )
    parser.add_argument("--prepare-classes", type=int, default=6)
    parser.add_argument("--prepare-train", type=int, default=60, help="train images per class")
    parser.add_argument("--prepare-test", type=int, default=16, help="test images per class")
    parser.add_argument("--prepare-workers", type=int, default=2)
    parser.add_argument(
        "--prepare-reads-in-flight", type=int, default=READS_IN_FLIGHT, help="--ci: prepare's reads ahead"
    )
    parser.add_argument(
        "--ci",
        action="store_true",
        help="the CI form: requests in flight and GETs per sample at a 50 ms store, no rate (under 40 s)",
    )
    add_json_flag(parser)
    args = parser.parse_args(argv)
    if args.ci:
        return ci_check(args, argv)
    samples = args.samples or (200 if args.quick else 300)
    passes = args.passes or (3 if args.quick else 5)
    prepare_passes = 2 if args.quick else 3
    sample_bytes = 0.0
    delays = [float(d) for d in args.delays.split(",") if d]
    if samples >= 64 * args.classes:
        parser.error(
            f"--samples must stay below 64 x --classes ({64 * args.classes}): else classes go sequential"
        )

    from ltad.io import storage
    from tools.services.seaweed import SeaweedServer

    started = time.monotonic()
    saved = os.environ.get("AWS_ENDPOINT_URL")
    with tempfile.TemporaryDirectory(prefix="ltad-latency-") as tmp:
        server = SeaweedServer(Path(tmp) / "s3")
        server.start()
        proxies: list[Proxy] = []
        try:
            os.environ.update(server.env())
            storage.reset_client()
            server.create_bucket("bench")
            prefix = "s3://bench/latency"
            target = int(server.endpoint.rsplit(":", 1)[1])
            proxies = [Proxy(target, d) for d in delays]
            endpoints = [("direct", server.endpoint, None)] + [
                (f"{p.delay_ms:g}ms", p.endpoint, p) for p in proxies
            ]
            runs: dict[str, dict[str, list[dict]]] = {"read_ahead": {}, "read_ahead_0": {}}
            cold: dict[str, dict[str, list[dict]]] = {"read_ahead": {}, "read_ahead_0": {}}
            prep: dict[str, dict[str, list[dict]]] = {
                "pipelined": {},
                "per_batch_lanes": {},
                "serial_reads": {},
            }
            if args.only in (None, "reader"):
                by_class, counts = write_dataset(
                    Path(tmp) / "work", prefix, args.classes, args.per_class, args.image_px
                )
                sample_bytes = statistics.mean(e.bytes / e.samples for v in by_class.values() for e in v)
            for p in range(passes if args.only in (None, "reader") else 0):
                order = endpoints if p % 2 == 0 else endpoints[::-1]  # alternate: load hits all alike
                for name, endpoint, proxy in order:
                    for kind, ra, n in (
                        ("read_ahead", args.read_ahead, samples),
                        ("read_ahead_0", 0, max(20, samples // 4)),
                    ):
                        use_endpoint(endpoint)
                        row = one_pass(prefix, by_class, counts, 100 + p, n, ra, proxy)
                        runs[kind].setdefault(name, []).append(row)
                        if p == passes - 1:  # once: a fresh reader, its class indexes read on the clock
                            row = one_pass(prefix, by_class, counts, 100 + p, n, ra, proxy, cold=True)
                            cold[kind].setdefault(name, []).append(row)
            if args.only in (None, "prepare"):
                use_endpoint(server.endpoint)
                raw = "s3://bench/raw"
                split = write_raw_dataset(
                    Path(tmp) / "raw", raw, args.prepare_classes, args.prepare_train, args.prepare_test, 128
                )
            for p in range(prepare_passes if args.only in (None, "prepare") else 0):
                order = endpoints if p % 2 == 0 else endpoints[::-1]
                for name, endpoint, proxy in order:
                    kinds = [("pipelined", READS_IN_FLIGHT, None), ("per_batch_lanes", READS_IN_FLIGHT, 32)]
                    kinds += [("serial_reads", 1, 32)] if p == 0 else []
                    for kind, in_flight, lane in kinds:  # the paths before, for reference
                        use_endpoint(endpoint)
                        out = f"s3://bench/prepared-{kind}-{name}-{p}"
                        row = prepare_pass(raw, split, out, args.prepare_workers, in_flight, proxy, lane)
                        prep[kind].setdefault(name, []).append(row)
        finally:
            for proxy in proxies:
                proxy.stop()
            server.stop()
            restore_endpoint(saved)

    def summary(rows_by: dict[str, list[dict]]) -> dict:
        out: dict = {}
        direct = rows_by["direct"]
        for name, rows in rows_by.items():
            fig = {
                "samples_per_s": round(statistics.median(r["samples_per_s"] for r in rows), 1),
                "passes_samples_per_s": [round(r["samples_per_s"], 1) for r in rows],
                "samples_per_pass": rows[0]["samples"],
                "ranged_requests_per_sample": round(
                    sum(r["ranged_requests"] for r in rows) / sum(r["samples"] for r in rows), 3
                ),
            }
            if name != "direct":
                fig["ratio_to_direct"] = round(
                    statistics.median(r["samples_per_s"] / d["samples_per_s"] for r, d in zip(rows, direct)),
                    3,
                )
                fig["gets_per_sample_at_proxy"] = round(
                    sum(r["proxy_gets"] for r in rows) / sum(r["samples"] for r in rows), 3
                )
            out[name] = fig
        return out

    missed = []
    result: dict = {}
    if args.only in (None, "reader"):
        measured = summary(runs["read_ahead"])
        before = summary(runs["read_ahead_0"])
        ratio_20 = measured.get("20ms", {}).get("ratio_to_direct")
        if ratio_20 is None:
            missed.append("no 20 ms run (--delays must include 20)")
        elif ratio_20 < TARGET_RATIO_20MS:
            missed.append(
                f"at 20 ms one reader keeps {ratio_20} of its direct rate (read_ahead={args.read_ahead}), "
                f"target >= {TARGET_RATIO_20MS}"
            )
        result.update({
            "read_ahead": args.read_ahead,
            "measured": measured,
            "read_ahead_0_for_reference": before,
            "cold_reader_samples_per_s": {
                kind: {name: round(rows[0]["samples_per_s"], 1) for name, rows in by.items()}
                for kind, by in cold.items()
            },
            "sizes": {
                "classes": args.classes,
                "per_class": args.per_class,
                "image_px": args.image_px,
                "decode_to_px": 64,
                "mean_sample_bytes": round(sample_bytes),
                "passes": passes,
                "delays_ms": delays,
                "shards": "one per class, every class served by ranged reads (max_open_sources=1, class_balance=1)",
            },
        })  # fmt: skip
    if args.only in (None, "prepare"):
        pipelined = prepare_summary(prep["pipelined"])
        prep_20 = pipelined.get("20ms", {}).get("ratio_to_direct")
        if prep_20 is None:
            missed.append("no 20 ms prepare run (--delays must include 20)")
        elif prep_20 < TARGET_PREPARE_RATIO_20MS:
            missed.append(
                f"at 20 ms prepare from s3:// with {args.prepare_workers} workers keeps {prep_20} of its "
                f"direct rate (READS_IN_FLIGHT={READS_IN_FLIGHT}), target >= {TARGET_PREPARE_RATIO_20MS}"
            )
        result["prepare"] = {
            "reads_in_flight": READS_IN_FLIGHT,
            "workers": args.prepare_workers,
            "measured": pipelined,
            "per_batch_lanes_for_reference": prepare_summary(prep["per_batch_lanes"]),
            "serial_reads_for_reference": prepare_summary(prep["serial_reads"]),
            "sizes": {
                "classes": args.prepare_classes,
                "train_per_class": args.prepare_train,
                "test_per_class": args.prepare_test,
                "image_px": 128,
                "passes": prepare_passes,
                "what": "synth PNG images and masks under s3://, prepare end to end (scan, check, "
                "write/upload, manifest) into a new s3:// prefix each pass",
            },
        }
    result.update({
        "targets": {
            "ratio_to_direct_at_20ms": f">= {TARGET_RATIO_20MS}",
            "prepare_ratio_to_direct_at_20ms": f">= {TARGET_PREPARE_RATIO_20MS}",
        },
        "bounds": {
            "read_ahead_bytes": READ_AHEAD_BYTES,
            "coalesce_gap_bytes": COALESCE_GAP,
            "in_flight_requests_at_most": args.read_ahead,
            "prepare_reads_in_flight_per_worker": READS_IN_FLIGHT,
        },
        "delays_ms": delays,
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
    })  # fmt: skip
    return finish(result, missed, args.json, argv)


if __name__ == "__main__":
    sys.exit(main())
