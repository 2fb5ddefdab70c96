"""Rank 0's peak memory for phase 2's validation at 1x and 10x the held-out images; prints JSON.

Phase 2's validation (ltad/training/validation.py) encodes every held-out normal image and its
pseudo-anomalous copy once, then scores them at each validation. In a fresh process per (path, size)
this builds the model (the default encoder, 64 px images on a 14 x 14 grid, small heads), then with
the process's peak RSS reset (/proc/self/clear_refs) runs `Phase2Validation` over `--heldout` or 10x
as many held-out images and one validation call, and reports the peak minus the RSS before that work.
The held-out batches are random images with the real pseudo-defect generator (`pseudo_batch`), made
one batch at a time where `heldout_batches` would read them from the val shards, so only what the
validation itself keeps counts. Paths: "streamed" is this tree's module (features on local disk, one
batch in memory); "held" is the module before that (git `--base`: every batch's features kept in
memory), loaded from git under another name.

Target: the checked path's (`--check`, default streamed) extra peak at 10x <= 1.3x that at 1x; exits
1 when missed. `--check held` shows the check failing on the holding module.
Usage: .venv/bin/python benchmarks/validation_memory.py [--paths streamed,held] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from record import add_json_flag, finish  # noqa: E402  (benchmarks/record.py, beside this script)

TARGET = 1.3
CLASSES = 4
SIZE = 64
BATCH = 16


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _module(path: str, base: str, work: Path):
    if path == "streamed":
        from ltad.training import validation

        return validation
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{base}:ltad/training/validation.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    file = work / "validation_held.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location("validation_held", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(path: str, images: int, base: str) -> dict:
    """In this process: the model, then Phase2Validation over `images` held-out images and one call."""
    import torch

    from ltad.config import LTADConfig
    from ltad.models.state import build_model, trained_state
    from ltad.training.scoring import pseudo_batch

    torch.set_num_threads(2)
    cfg = LTADConfig.from_dict({
        "eval": {"batch_size": BATCH},
        "model": {
            "encoder": {"image_size": SIZE, "grid": 14},
            "prompts": {"length": 2},
            "reconstruction": {"hidden": 32, "encoder_layers": 1, "decoder_layers": 1, "heads": 4, "ffn": 64},
            "semantic": {"projection_hidden": 32},
            "vae": {"latent": 8, "hidden": 32},
        },
    })  # fmt: skip
    model = build_model(cfg, CLASSES).eval()
    model.cache_text()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        stats_images = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
        stats = [(model.encoder.encode_images(stats_images).patches, torch.arange(BATCH) % CLASSES)]

    def heldout(_w, _rank, _world):  # what heldout_batches yields, made one batch at a time
        for start in range(0, images, BATCH):
            n = min(BATCH, images - start)
            batch = torch.rand(n, 3, SIZE, SIZE, generator=gen)
            keys = [f"c{(start + i) % CLASSES}/{start + i:06d}" for i in range(n)]
            yield keys, [(start + i) % CLASSES for i in range(n)], (batch, pseudo_batch(batch, keys))

    with tempfile.TemporaryDirectory(prefix="ltad-valmem-") as tmp:
        module = _module(path, base, Path(tmp))
        module.heldout_batches = heldout
        w = SimpleNamespace(
            cfg=cfg, manifest=SimpleNamespace(classes=tuple(f"c{i}" for i in range(CLASSES))),
            device=torch.device("cpu"),
        )  # fmt: skip
        state = trained_state(model)
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from the current RSS
        before = _status_mib("VmRSS")
        tic = time.perf_counter()
        check = module.Phase2Validation(w, model, stats, ("reconstruction.", "semantic."))
        with torch.no_grad():
            value = check(state)
        peak = _status_mib("VmHWM")
        seconds = time.perf_counter() - tic
        del check
    return {
        "path": path,
        "heldout_images": images,
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "extra_peak_mib": round(peak - before, 1),
        "seconds": round(seconds, 1),
        "val_image_AUROC": round(next(iter(value.values())), 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heldout", type=int, default=32, help="held-out normal images at 1x")
    p.add_argument("--paths", default="streamed,held", help="comma-separated: streamed, held")
    p.add_argument("--check", default="streamed", help="the path the target applies to")
    p.add_argument("--base", default="8c156af^", help="git revision of the holding module")
    p.add_argument("--child", nargs=2, metavar=("PATH", "IMAGES"), help=argparse.SUPPRESS)
    add_json_flag(p)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.base)))
        return 0
    paths = [x for x in args.paths.split(",") if x]
    if args.check not in paths:
        p.error(f"--check {args.check} must be one of --paths {paths}")
    started = time.monotonic()
    rows: dict[str, dict[str, dict]] = {}
    for path in paths:
        for scale in (1, 10):
            ran = subprocess.run(
                [sys.executable, __file__, "--child", path, str(args.heldout * scale), "--base", args.base],
                capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            if ran.returncode != 0:
                raise SystemExit(f"{path} at {scale}x failed (exit {ran.returncode}):\n{ran.stderr[-3000:]}")
            rows.setdefault(path, {})[f"{scale}x"] = json.loads(ran.stdout.strip().splitlines()[-1])
    ratios = {
        path: round(by["10x"]["extra_peak_mib"] / max(1e-9, by["1x"]["extra_peak_mib"]), 3)
        for path, by in rows.items()
    }
    missed = []
    if ratios[args.check] > TARGET:
        missed.append(
            f"rank 0's extra peak RSS for validation at 10x held-out images is {ratios[args.check]}x that "
            f"at 1x on the {args.check} path, target <= {TARGET}"
        )
    result = {
        "extra_peak_ratio_10x_over_1x": ratios,
        "checked_path": args.check,
        "runs": rows,
        "target": f"extra peak at 10x <= {TARGET} x extra peak at 1x",
        "sizes": {
            "heldout_images_1x": args.heldout,
            "classes": CLASSES,
            "image_px": SIZE,
            "grid": 14,
            "encoder": "ltad-effnet-lite0 (bundled)",
            "eval_batch_size": BATCH,
            "what": "Phase2Validation construction (encode every held-out image and its pseudo-anomalous "
            "copy) plus one validation call; peak RSS minus the RSS before, in a fresh process each",
        },
        "held_base_revision": args.base,
        "seconds": round(time.monotonic() - started, 1),
    }
    return finish(result, missed, args.json, argv)


if __name__ == "__main__":
    sys.exit(main())
