"""Print JSON: peak RSS of the evaluation at 1x and 10x the test-set size, bounded vs the earlier path.

Synthesizes two datasets that differ only in test images per class (--test and 10x --test), prepares
shards to a local directory, then in a fresh process per (size, path) scores the whole test set with
the real code (`ltad.training.scoring.score_share`, world size 1, no Ray) and runs rank 0's merge and
metrics, reporting the process's peak RSS (ru_maxrss). Path "bounded" is this tree's scoring; path
"retained" is the earlier scoring module (every fp16 map kept until the end, from git `--base`),
measured the same way for comparison. The model is untrained: memory, not quality, is measured.
Usage: .venv/bin/python benchmarks/eval_memory.py [--work DIR] [--test 40] [--size 128] [--base REV]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = 3


def prepare_data(work: Path, test_per_class: int, size: int) -> str:
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    out = work / f"shards-{test_per_class}"
    if (out / "manifest.json").exists():
        return str(out)
    root = synthesize(
        work / f"synth-{test_per_class}",
        classes=CLASSES,
        image_size=size,
        train_per_class=8,
        test_per_class=test_per_class,
        seed=0,
    )
    split = make_split(read_dataset("synth", root), "exp", ratio=2, seed=0)
    prepare("synth", root, split.save(work / f"split-{test_per_class}.json"), str(out), log=lambda _m: None)
    return str(out)


def config(data: str, size: int):
    from ltad.config import LTADConfig

    return LTADConfig.from_dict(
        {
            "data": {"uri": data, "use_feature_cache": False},
            "eval": {"batch_size": 16},
            "model": {
                "encoder": {"image_size": size, "grid": 8},
                "prompts": {"length": 2},
                "reconstruction": {
                    "hidden": 32,
                    "encoder_layers": 1,
                    "decoder_layers": 1,
                    "heads": 4,
                    "ffn": 64,
                },
                "semantic": {"projection_hidden": 32},
                "vae": {"latent": 8, "hidden": 32},
            },
        }
    )


def measure(data: str, size: int, path: str, base: str) -> dict:
    """In this process: score the test set with `path`'s scoring module, merge, compute metrics."""
    import torch

    from ltad.data.manifest import read_manifest
    from ltad.eval.outputs import evaluation_metrics, merge_shares
    from ltad.models.state import build_model

    torch.set_num_threads(2)
    if path == "bounded":
        from ltad.training import scoring
    else:  # the earlier module, loaded from git under another name
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{base}:ltad/training/scoring.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        file = Path(data).parent / "scoring_retained.py"
        file.write_text(source)
        spec = importlib.util.spec_from_file_location("scoring_retained", file)
        scoring = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(scoring)
    cfg = config(data, size)
    manifest = read_manifest(data)
    model = build_model(cfg, len(manifest.classes)).eval()
    model.cache_text()
    model.stats.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0]))  # identity standardisation (untrained model)
    model.stats_ready.fill_(True)
    w = SimpleNamespace(
        cfg=cfg, data_uri=data, manifest=manifest, rank=0, world_size=1, device=torch.device("cpu")
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tic = time.perf_counter()
    with torch.no_grad():
        share = scoring.score_share(w, model, None)
    if isinstance(share, tuple):  # this tree: (what goes to rank 0, the overlay candidates kept here)
        share = share[0]
    merged = merge_shares([share])
    metrics = evaluation_metrics(merged, list(manifest.classes), manifest.counts["train"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "path": path,
        "test_samples": manifest.samples("test"),
        "image_size": size,
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_before_scoring_mib": round(before / 1024, 1),
        "seconds": round(time.perf_counter() - tic, 1),
        "pixel_AUROC_first_class": metrics["per_class"][manifest.classes[0]]["pixel_AUROC"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/ltad-eval-memory")
    p.add_argument("--test", type=int, default=40, help="test images per class at 1x")
    p.add_argument("--size", type=int, default=128, help="evaluation image size")
    p.add_argument("--base", default="e4c574a", help="git revision of the earlier scoring module")
    p.add_argument(
        "--paths",
        default="bounded",
        help="which scoring paths to measure (comma-separated); 'retained' (the module at --base) no longer "
        "imports against this tree: its comparison is the one in docs/results/eval-memory.json",
    )
    p.add_argument("--measure", nargs=2, metavar=("DATA", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.size, args.measure[1], args.base)))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    paths = [x for x in args.paths.split(",") if x]
    for path in paths:
        for n in (args.test, 10 * args.test):
            data = prepare_data(work, n, args.size)
            cmd = [
                sys.executable,
                __file__,
                "--size",
                str(args.size),
                "--base",
                args.base,
                "--measure",
                data,
                path,
            ]
            out = subprocess.run(
                cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
            )
            rows.append(
                {"scale": "10x" if n > args.test else "1x", **json.loads(out.stdout.splitlines()[-1])}
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    ratio = {
        path: round(
            next(r["peak_rss_mib"] for r in rows if r["path"] == path and r["scale"] == "10x")
            / next(r["peak_rss_mib"] for r in rows if r["path"] == path and r["scale"] == "1x"),
            3,
        )
        for path in paths
    }
    print(
        json.dumps(
            {
                "rows": rows,
                "peak_rss_ratio_10x_over_1x": ratio,
                "command": " ".join(["benchmarks/eval_memory.py", *(argv or sys.argv[1:])]),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
