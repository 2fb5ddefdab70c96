"""The README's benchmark table, rendered from the benchmarks' committed JSON under docs/results/.

Each row's figures are read from `bench-<name>.json` (written by `python benchmarks/<name>.py --json
FILE`, with the command, date, commit and machine); a benchmark without a committed JSON says so
instead of quoting figures nobody can trace. Rendered by `python -m tools.results_doc`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def _g(v: float) -> str:
    return f"{v:g}"


def _source(files: list[str], data: list[dict]) -> str:
    dates = sorted({d.get("provenance", {}).get("date", "")[:10] for d in data} - {""})
    loads = [d["provenance"]["machine"]["load_average_1min_at_end"] for d in data if "provenance" in d]
    where = ", ".join(f"`docs/results/{f}`" for f in files)
    when = f", {', '.join(dates)}" if dates else ""
    load = (
        f", 1-min load {'/'.join(_g(x) for x in loads)} at the end on {data[0]['provenance']['machine']['cpus']} cores"
        if loads
        else ""
    )
    return f" ({where}{when}{load})"


def _stream(d: dict) -> str:
    small, large = d["prepare_images"]["small"], d["prepare_images"]["large"]
    rss = d["prepare_peak_rss_mb"]
    return (
        f"local {_g(d['local_images_per_s'])} vs S3 {_g(d['s3_images_per_s'])} images/s (medians of alternating "
        f"passes), **ratio {_g(d['ratio'])}** (target ≥ 0.9; best "
        f"pass {_g(d['ratio_best_pass'])}); prepare peak RSS {_g(rss['small'])} MB at {small} images vs "
        f"{_g(rss['large'])} MB at {large}, **ratio {_g(d['prepare_rss_ratio'])}** (target ≤ 1.3)"
    )


def _model(d: dict) -> str:
    p, s = d["params"], d["seconds"]
    return (
        f"trainable {p['phase1_trainable'] / 1e6:.2f} M (phase 1) / {p['phase2_trainable'] / 1e6:.2f} M "
        f"(phase 2), frozen encoder {p['frozen_encoder'] / 1e6:.2f} M; encode {_g(s['encode'])} s, "
        f"phase-1 forward+backward {_g(s['phase1_forward_backward'])} s, phase-2 forward+backward "
        f"{_g(s['phase2_forward_backward'])} s per batch (medians; these times scale with the load); "
        f"peak RSS {_g(d['peak_rss_mb']['final'])} MB"
    )


def _train_overhead(d: dict) -> str:
    return (
        f"bare {_g(d['bare_pytorch_steps_per_s'])} vs Ray + DeepSpeed {_g(d['ray_deepspeed_steps_per_s'])} "
        f"steps/s, **ratio {_g(d['ratio'])}** (target ≥ 0.9; {d['steps_each']} steps each in alternating "
        f"blocks, so load hits both alike)"
    )


def _feature_cache(d: dict) -> str:
    return (
        f"{_g(d['phase2_epoch_s_cached'])} s vs {_g(d['phase2_epoch_s_online'])} s per epoch "
        f"(**{_g(d['speedup'])}×**); building the cache took {_g(d['cache_build_s_train_and_test'])} s "
        f"for {d['train_samples']} training + {d['test_samples']} test images"
    )


def _sweep_reuse(d: dict) -> str:
    return (
        f"reuse {_g(d['reuse_s'])} s vs naive {_g(d['naive_s'])} s, **ratio {_g(d['ratio'])}** (target ≤ "
        f"0.35); command in `docs/results/index.json` (written before `--json` existed; not re-run: the "
        f"two sweeps take over half an hour alone)"
    )


def _patchcore(ds: list[dict]) -> str:
    mean = ", ".join(_g(round(d["image_AUROC"], 3)) for d in ds)
    tail = " / ".join(_g(round(d["groups"]["tail"], 3)) for d in ds)
    return f"mean image AUROC {mean} (balanced, exp100, step100; tail thirds {tail})"


def _vae_fidelity(d: dict) -> str:
    g = d["groups"]
    acc = [100 * v["syn_class_acc"] for v in g.values()]
    return (
        f"tail: {_g(g['tail']['syn_to_class'])} vs {_g(g['tail']['real_to_class'])} RMS, head: "
        f"{_g(g['head']['syn_to_class'])} vs {_g(g['head']['real_to_class'])}; {min(acc):.0f}-{max(acc):.0f} % "
        f"of samples nearest their own class; KL {_g(d['kl_nats_per_latent'])} nats per latent dimension "
        f"(docs/RESULTS.md has the table)"
    )


ROWS: tuple[tuple[str, str, list[str], Callable], ...] = (
    (
        "benchmarks/stream.py",
        "the same shards through the same pipeline (PNG decode included) from local disk vs the local S3 "
        "server; `prepare` peak RSS at two dataset sizes 10x apart",
        ["bench-stream.json"],
        lambda ds: _stream(ds[0]),
    ),
    (
        "benchmarks/model.py",
        "the default model (224 px, batch 8, 15 classes, CPU)",
        ["bench-model.json"],
        lambda ds: _model(ds[0]),
    ),
    (
        "benchmarks/train_overhead.py",
        "phase-2 steps/s of the same model and batch, bare PyTorch loop vs DeepSpeed ZeRO-2 inside a Ray "
        "Train worker, alternating blocks in one run",
        ["bench-train_overhead.json"],
        lambda ds: _train_overhead(ds[0]),
    ),
    (
        "benchmarks/feature_cache.py",
        "one phase-2 epoch on cached fp16 features vs encoding online (demo config, 128 px)",
        ["bench-feature_cache.json"],
        lambda ds: _feature_cache(ds[0]),
    ),
    (
        "benchmarks/sweep_reuse.py",
        "the same 4-trial sweep with phase-1 reuse + the shared feature cache vs naive (each trial encodes "
        "online and trains phase 1), `--encoder vit-b-16` (ViT-B-16 224 px, random weights)",
        ["sweep_reuse-vit-b-16.json"],
        lambda ds: _sweep_reuse(ds[0]),
    ),
    (
        "benchmarks/patchcore_smoke.py",
        "the PatchCore-like kNN baseline (`ltad/baselines/`) on the same frozen features, default "
        "synthetic data (8 classes), `--profile full`, `exp --ratio 100`, `step --ratio 100`",
        [
            "bench-patchcore_smoke-balanced.json",
            "bench-patchcore_smoke-exp100.json",
            "bench-patchcore_smoke-step100.json",
        ],
        _patchcore,
    ),
    (
        "benchmarks/vae_fidelity.py",
        "distance of VAE-synthesised feature maps to real maps of their class vs held-out real normals "
        "(validation data, exp100)",
        ["bench-vae_fidelity.json"],
        lambda ds: _vae_fidelity(ds[0]),
    ),
)


def benchmark_rows(results: Path) -> list[str]:
    """One markdown table row per benchmark: figures from its committed JSON, or why there are none."""
    out = []
    for script, what, files, fmt in ROWS:
        paths = [results / f for f in files]
        if all(p.is_file() for p in paths):
            data = [json.loads(p.read_text()) for p in paths]
            cell = fmt(data) + _source(files, data)
        else:
            missing = ", ".join(f"`{p.name}`" for p in paths if not p.is_file())
            cell = (
                f"**no committed figures**: {missing} not yet in docs/results/ (`python {script} --json FILE`); "
                "the figures published before could not be traced to a committed artefact and were removed"
            )
        out.append(f"| `{script}` | {what} | {cell} |")
    return out


STATIC_ROWS = (
    "| `jobs/study.py` (docs/RESULTS.md) | LTAD vs its ablations, the `ltad_mb` variant and the kNN baseline, "
    '3 imbalance levels × 3 seeds, one command | see "Quality" above; one group\'s training took 485 s alone '
    "on the 2 cores (balanced, seed 1; the rows' `phase1_s`, `phase2_s`, `fit_s`, `bank_s` in "
    "`docs/results/study-rows.jsonl` hold each part's time, most of them measured with two 1-thread studies "
    "sharing the cores) |",
    "| `benchmarks/gpu.sh` | the GPU path's one check (<= 8 min): bf16 support and the precision picked (bf16, "
    "else fp16), NCCL, ZeRO-2 and ZeRO-3 phase-2 steps/s, peak memory and save/restore, the encode under that "
    "precision, phase 2's real samples/s vs the training stream's rate, the job on Ray Train; exits 1 naming "
    "missed targets | **not run yet**: no GPU machine was available (without CUDA it stops with one line); run "
    "it on a single-GPU machine and commit its JSON output under docs/results/ with the date and the GPU |",
)


def benchmark_table(results: Path) -> str:
    """The whole README table (a comment line inside a markdown table would end it)."""
    rows = benchmark_rows(results)
    return (
        "\n".join(
            [
                "| script | what it compares | measured |",
                "|---|---|---|",
                *rows[:6],
                STATIC_ROWS[0],
                *rows[6:],
                STATIC_ROWS[1],
            ]
        )
        + "\n"
    )
