"""Tables, plots and target checks of a study's rows: mean ± std over seeds per level and method."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ltad.study.claims import TAIL_MARGIN, target_claims, target_lines
from ltad.study.sizes import BUCKET_LABELS, SIZE_PAIRS, by_class_size
from ltad.study.spec import StudySpec

FIGURES = (
    "image_AUROC",
    "pixel_AUROC",
    "pixel_AUPRO",
    "head_image_AUROC",
    "medium_image_AUROC",
    "tail_image_AUROC",
    "gap_image_AUROC",
)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stats(rows: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(level, method) -> figure -> (mean, std over seeds, n seeds); NaN seeds are left out."""
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        grouped[(r["level"], r["method"])].append(r)
    out: dict[tuple[str, str], dict[str, tuple[float, float, int]]] = {}
    for key, rs in grouped.items():
        out[key] = {}
        for f in FIGURES:
            vals = np.array([r[f] for r in rs if r.get(f) is not None and not math.isnan(r[f])], dtype=float)
            out[key][f] = (
                float(vals.mean()) if vals.size else math.nan,
                float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                int(vals.size),
            )
    return out


def _pct(v: tuple[float, float, int]) -> str:
    mean, std, n = v
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def targets(st: dict, levels: list[str]) -> list[dict]:
    """The issue's targets at ratio 100: tail gain over rec_only >= 3 points; mean above knn."""
    out = []
    for lv in levels:
        if not lv.endswith("100"):
            continue

        def get(m: str, f: str, lv: str = lv) -> float:
            return st.get((lv, m), {}).get(f, (math.nan, 0, 0))[0]

        tail_gain = get("ltad", "tail_image_AUROC") - get("rec_only", "tail_image_AUROC")
        knn_gain = get("ltad", "image_AUROC") - get("knn", "image_AUROC")
        out.append(
            {
                "level": lv,
                "tail_gain_vs_rec_only": tail_gain,
                "tail_target_met": tail_gain >= TAIL_MARGIN,
                "mean_gain_vs_knn": knn_gain,
                "knn_target_met": knn_gain > 0,
            }
        )
    return out


def _class_size_table(rows: list[dict], methods: list[str]) -> list[str]:
    """Markdown: mean per-class image AUROC by training-set size (mean ± standard error, cells)."""
    data = by_class_size(rows, methods)
    buckets = [b for b in BUCKET_LABELS if b in data]
    if not buckets:
        return []

    def cellfmt(v: list[float], signed: bool) -> str:
        if not v:
            return "n/a"
        a = np.array(v)
        se = a.std(ddof=1) / math.sqrt(a.size) if a.size > 1 else 0.0
        return f"{100 * a.mean():{'+' if signed else ''}.1f} ± {100 * se:.1f} ({a.size})"

    lines = [
        "### Image AUROC by class size (long-tailed levels pooled)",
        "",
        "Per-class image AUROC of every (level, seed, class) cell, grouped by the class's training images in",
        "that split: mean ± standard error (cells). The `a - b` rows pair the same cell: LTAD against",
        "reconstruction-only (the tail target), what VAE synthesis adds, what the fused semantic score adds.",
        "",
        "| method | " + " | ".join(f"{b} images" for b in buckets) + " |",
        "|---|" + "---|" * len(buckets),
    ]
    pairs = [f"{first} - {second}" for first, second in SIZE_PAIRS]
    for m in [*methods, *pairs]:
        if any(data[b].get(m) for b in buckets):
            signed = m in pairs
            lines.append(
                f"| {m} | " + " | ".join(cellfmt(data[b].get(m, []), signed) for b in buckets) + " |"
            )
    return [*lines, ""]


def _across_levels(title: str, figure: str, st: dict, levels: list[str], methods: list[str]) -> list[str]:
    """One table: a row per method, a column per level, `figure` as mean ± std."""
    missing = (math.nan, 0, 0)
    rows = [
        f"| {m} | " + " | ".join(_pct(st.get((lv, m), {}).get(figure, missing)) for lv in levels) + " |"
        for m in methods
    ]
    return [
        f"### {title} across levels",
        "",
        "| method | " + " | ".join(levels) + " |",
        "|---|" + "---|" * len(levels),
        *rows,
        "",
    ]


def markdown(spec: StudySpec, rows: list[dict], weights: dict) -> str:
    st = stats(rows)
    levels = [lv.name for lv in spec.level_specs]
    methods = list(spec.methods)
    expected = {(lv, s) for lv in levels for s in spec.seeds}
    have = {(r["level"], r["seed"]) for r in rows}
    missing = sorted(expected - have)
    d = spec.dataset
    lines = [
        f"Data: `ltad synth` {d.classes} classes at {d.image_size} px, {d.train_per_class} train / "
        f"{d.test_per_class} test images per class, dataset seed {d.seed} (synthetic). "
        f"Weights: image {weights.get('image', '?')}; text {weights.get('text', '?')}. "
        f"Seeds {list(spec.seeds)} (split and training); figures are mean ± std over seeds, in %. "
        f"Model config `{spec.config}` with overrides {list(spec.overrides) or 'none'}.",
        "",
    ]
    if missing:
        lines += [
            f"**INCOMPLETE: {len(missing)} of {len(expected)} (level, seed) groups missing: "
            + ", ".join(f"{lv}/s{s}" for lv, s in missing)
            + ".**",
            "",
        ]
    for title, figure in (
        ("Mean image AUROC", "image_AUROC"),
        ("Tail-class image AUROC", "tail_image_AUROC"),
    ):
        lines += _across_levels(title, figure, st, levels, methods)
    for lv in levels:
        lines += [
            "",
            f"### {lv}",
            "",
            "| method | image AUROC | pixel AUROC | AUPRO | head | medium | tail | head − tail |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in methods:
            s = st.get((lv, m))
            if s:
                lines.append(f"| {m} | " + " | ".join(_pct(s[f]) for f in FIGURES) + " |")
    lines += ["", *_class_size_table(rows, methods)]
    if claims := target_lines(rows, levels):
        lines += ["### Targets (ratio 100)", "", *claims]
    return "\n".join(lines) + "\n"


def plots(spec: StudySpec, rows: list[dict], out: Path) -> list[Path]:
    """auroc_vs_ratio.png (per profile, per method) and tail_auroc.png (grouped bars per level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = stats(rows)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(spec.methods)
    profiles = sorted({lv.profile for lv in spec.level_specs if lv.profile != "full"})
    balanced = [lv for lv in spec.level_specs if lv.profile == "full"]
    fig, axes = plt.subplots(1, max(1, len(profiles)), figsize=(5 * max(1, len(profiles)), 4), squeeze=False)
    for ax, prof in zip(axes[0], profiles or ["full"]):
        lvls = sorted(
            balanced + [lv for lv in spec.level_specs if lv.profile == prof], key=lambda lv: lv.ratio
        )
        for m in methods:
            pts = [(lv.ratio, st[(lv.name, m)]["image_AUROC"]) for lv in lvls if (lv.name, m) in st]
            if pts:
                x = [p[0] for p in pts]
                y = np.array([100 * p[1][0] for p in pts])
                e = np.array([100 * p[1][1] for p in pts])
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m)
        ax.set_xscale("log")
        ax.set_xlabel("imbalance ratio (1 = balanced)")
        ax.set_ylabel("mean image AUROC (%)")
        ax.set_title(f"profile {prof}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("synthetic data; EfficientNet-Lite0 ImageNet trunk, random text tower", fontsize=9)
    fig.tight_layout()
    p1 = out / "auroc_vs_ratio.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    levels = [lv.name for lv in spec.level_specs]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(levels)), 4))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        vals = [st.get((lv, m), {}).get("tail_image_AUROC", (math.nan, 0, 0)) for lv in levels]
        ax.bar(
            np.arange(len(levels)) + i * width,
            [100 * v[0] for v in vals],
            width,
            yerr=[100 * v[1] for v in vals],
            capsize=2,
            label=m,
        )
    ax.set_xticks(np.arange(len(levels)) + 0.4 - width / 2, levels)
    ax.set_ylabel("tail-class image AUROC (%)")
    ax.set_ylim(40, 100)
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("tail classes (last third by training count); synthetic data, no CLIP weights", fontsize=9)
    fig.tight_layout()
    p2 = out / "tail_auroc.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def write_report(spec: StudySpec, out: Path) -> Path:
    """report.md, summary.json and plots/ in `out` from its rows."""
    rows = read_rows(out / "rows.jsonl") if (out / "rows.jsonl").is_file() else []
    weights_path = out / "weights.json"
    weights = json.loads(weights_path.read_text()) if weights_path.is_file() else {}
    md = markdown(spec, rows, weights)
    plots(spec, rows, out / "plots")
    st = stats(rows)
    summary = {
        "stats": {f"{lv}/{m}": {f: list(v) for f, v in s.items()} for (lv, m), s in st.items()},
        "targets": targets(st, [lv.name for lv in spec.level_specs]),
        "by_class_size": {
            b: {m: [float(np.mean(v)), len(v)] for m, v in by_m.items() if v}
            for b, by_m in by_class_size(rows, list(spec.methods)).items()
        },
        "paired_targets": [
            {
                "level": c.level,
                "a": c.first,
                "b": c.second,
                "figure": c.figure,
                "target": c.target,
                "mean": c.paired.mean,
                "ci95": [c.paired.low, c.paired.high],
                "n": c.paired.n,
                "verdict": c.verdict,
            }
            for c in target_claims(rows, [lv.name for lv in spec.level_specs])
        ],  # fmt: skip
        "rows": len(rows),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n")
    path = out / "report.md"
    path.write_text(md)
    return path
