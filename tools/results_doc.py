"""Regenerate the figures of docs/RESULTS.md and README.md from the committed rows under docs/results/.

    python -m tools.results_doc            # rewrite the generated blocks in place
    python -m tools.results_doc --check    # exit 1 naming each block that differs (CI, tests)

Prose stays hand-written; every table or claim computed from rows sits between
`<!-- generated: NAME -->` and `<!-- end generated: NAME -->` markers and is rewritten from
docs/results/study-rows.jsonl (+ study-weights.json, configs/study.yaml) or a benchmark JSON, so a
re-run of the study (or a benchmark) updates the documents with one command and a stale figure
fails the check. The renderer only replaces what is between markers; a marker it does not know is an
error, never silently left stale.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ltad.errors import UserError
from ltad.study.claims import class_size_lines, control_lines, goal_lines, target_lines
from ltad.study.paired import paired_rows
from ltad.study.report import markdown, read_rows, stats
from ltad.study.spec import load_spec
from tools.bench_table import benchmark_table

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/GUIDE.md", "docs/RESULTS.md")
COMMAND = "python -m tools.results_doc"
BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)(?P<close><!-- end generated: (?P=name) -->)",
    re.S,
)
OPENER = re.compile(r"<!-- generated: ([\w-]+)")


class ResultsDocError(UserError):
    """A generated block that is malformed or names no known renderer."""


class Inputs:
    """The committed artefacts the blocks are computed from, read once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        results = root / "docs" / "results"
        self.spec = load_spec(root / "configs" / "study.yaml")
        self.rows = read_rows(results / "study-rows.jsonl")
        self.weights = json.loads((results / "study-weights.json").read_text())
        self.results = results

    def bench(self, name: str) -> dict:
        path = self.results / f"bench-{name}.json"
        if not path.is_file():
            raise ResultsDocError(f"{path} is missing: run the benchmark with --json {path}")
        return json.loads(path.read_text())


def _pct(st: dict, level: str, method: str, figure: str) -> str:
    mean, std, n = st.get((level, method), {}).get(figure, (math.nan, 0.0, 0))
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def _headline(inp: Inputs, rows_spec: list[tuple[str, str, str]]) -> str:
    st = stats(inp.rows)
    levels = ("balanced", "exp100", "step100")
    out = ["| %, mean ± std over seeds | " + " | ".join(levels) + " |", "|---|---|---|---|"]
    for label, method, figure in rows_spec:
        if figure == "pixel":
            cells = [
                f"{_pct(st, lv, method, 'pixel_AUROC').split(' ')[0]} / {_pct(st, lv, method, 'pixel_AUPRO').split(' ')[0]}"
                for lv in levels
            ]
        else:
            cells = [_pct(st, lv, method, figure) for lv in levels]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def results_headline(inp: Inputs) -> str:
    return _headline(
        inp,
        [
            ("LTAD mean image AUROC", "ltad", "image_AUROC"),
            ("reconstruction only", "rec_only", "image_AUROC"),
            ("kNN (PatchCore-like)", "knn", "image_AUROC"),
            *_variant(inp, ("LTAD + class banks (variant beyond the paper)", "ltad_mb", "image_AUROC")),
            *_variant(
                inp, ("per-class kNN, class by nearest class mean (control)", "knn_class", "image_AUROC")
            ),
            *_variant(inp, ("per-class kNN, true class given (control)", "knn_class_oracle", "image_AUROC")),
            ("LTAD tail-class image AUROC", "ltad", "tail_image_AUROC"),
            ("reconstruction only, tail", "rec_only", "tail_image_AUROC"),
            ("kNN, tail", "knn", "tail_image_AUROC"),
            *_variant(inp, ("LTAD + class banks, tail", "ltad_mb", "tail_image_AUROC")),
            *_variant(inp, ("per-class kNN, tail (control)", "knn_class", "tail_image_AUROC")),
            ("LTAD pixel AUROC / AUPRO (means)", "ltad", "pixel"),
            ("kNN pixel AUROC / AUPRO (means)", "knn", "pixel"),
            *_variant(inp, ("LTAD + class banks pixel AUROC / AUPRO (means)", "ltad_mb", "pixel")),
            *_variant(inp, ("per-class kNN pixel AUROC / AUPRO (means)", "knn_class", "pixel")),
        ],
    )


def knn_class_control(inp: Inputs) -> str:
    """The per-class kNN control against ltad_mb and the one-bank kNN, paired."""
    lines = control_lines(inp.rows, [lv.name for lv in inp.spec.level_specs])
    if not lines:
        return "**No rows**: the committed study rows hold no `knn_class` rows yet.\n"
    return (
        "Paired by seed (same split), 95 % t-interval over the seeds; per class cell, over the (level, "
        "seed, class) cells of each class-size bucket.\n\n" + "\n".join(lines) + "\n"
    )


def _variant(inp: Inputs, row: tuple[str, str, str]) -> list[tuple[str, str, str]]:
    """`row` if the committed rows hold its method (rows made before the variant existed do not)."""
    return [row] if any(r["method"] == row[1] for r in inp.rows) else []


def study_goal(inp: Inputs) -> str:
    """The quality goal's claims: above kNN at every level, tail classes above rec_only at ratio 100."""
    lines = goal_lines(inp.rows, [lv.name for lv in inp.spec.level_specs])
    if not any(r.get("class_group") for r in inp.rows):
        lines.append(
            "- The committed rows predate per-class groups (`class_group`), so the per-tail-class "
            "claims cannot be computed from them."
        )
    return "\n".join(lines) + "\n"


def readme_quality(inp: Inputs) -> str:
    return _headline(
        inp,
        [
            ("LTAD, mean over classes", "ltad", "image_AUROC"),
            ("LTAD without VAE synthesis", "no_vae", "image_AUROC"),
            ("reconstruction only", "rec_only", "image_AUROC"),
            ("kNN baseline", "knn", "image_AUROC"),
            *_variant(inp, ("LTAD + class banks (variant beyond the paper)", "ltad_mb", "image_AUROC")),
            ("LTAD, tail classes", "ltad", "tail_image_AUROC"),
            ("reconstruction only, tail classes", "rec_only", "tail_image_AUROC"),
        ],
    )


def study_targets(inp: Inputs) -> str:
    levels = [lv.name for lv in inp.spec.level_specs]
    lines = target_lines(inp.rows, levels)
    pixel = []
    for lv in (x for x in levels if x.endswith("100")):
        for fig, name in (("pixel_AUROC", "pixel AUROC"), ("pixel_AUPRO", "AUPRO")):
            p = paired_rows(inp.rows, lv, "ltad", "knn", fig)
            if p is not None:
                pixel.append(f"{lv} {name} {p.describe()}")
    if pixel:
        lines.append("- LTAD − kNN on pixel metrics: " + "; ".join(pixel) + ".")
    lines += [
        "",
        "Paired per class cell (same level, seed and class; the by-class-size table below), 95 % "
        "t-interval over the cells, which share a training run within a seed, so these intervals are "
        "narrower than a per-seed test would give:",
        "",
        *class_size_lines(inp.rows, list(inp.spec.methods)),
    ]
    return "\n".join(lines) + "\n"


def study_tables(inp: Inputs) -> str:
    return markdown(inp.spec, inp.rows, inp.weights)


def _bench_cell(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def vae_fidelity(inp: Inputs) -> str:
    if not (inp.results / "bench-vae_fidelity.json").is_file():
        return (
            "**No committed figures**: `bench-vae_fidelity.json` is not in docs/results/ yet (`python "
            "benchmarks/vae_fidelity.py --json FILE`); the table published "
            "here before had no committed artefact and was removed.\n"
        )
    b = inp.bench("vae_fidelity")
    head = (
        "| group | synthetic → nearest real training map of its class | held-out real normal → nearest "
        "training map of its class | synthetic maps nearest their own class | spread of synthetic maps "
        "| spread of held-out real normals |"
    )
    out = [head, "|---|---|---|---|---|---|"]
    for g in ("head", "medium", "tail"):
        d = b["groups"].get(g)
        if d:
            out.append(
                f"| {g} | {_bench_cell(d['syn_to_class'])} | {_bench_cell(d['real_to_class'])} | "
                f"{100 * d['syn_class_acc']:.0f} % | {_bench_cell(d['syn_spread'])} | "
                f"{_bench_cell(d['real_spread'])} |"
            )
    p1 = b["phase1"]
    prov = b.get("provenance", {})
    out += [
        "",
        f"Phase-1 VAE: reconstruction MSE {p1.get('vae_mse', math.nan):.2f} of unit variance, KL "
        f"{b['kl_nats_per_latent']:.2f} nats per latent dimension. Measured {prov.get('date', '?')[:10]} "
        f"at commit {prov.get('git_commit', '?')[:10]} with `{prov.get('command', '?')}` "
        f"(`docs/results/bench-vae_fidelity.json`).",
    ]
    return "\n".join(out) + "\n"


DEMO_METRICS = "demo-2026-12-07-metrics.json"


def readme_demo(inp: Inputs) -> str:
    """What `make demo` printed (scripts/demo), from the run's committed metrics.json."""
    from ltad.eval.report import text_table

    m = json.loads((inp.results / DEMO_METRICS).read_text())
    return (
        "```\n"
        + text_table(m)
        + f"\n\nclass prediction accuracy {100 * m['class_prediction_accuracy']:.1f} %, "
        f"{m['n_evaluated']} test images; weights: {m['provenance']['weights']['text']}\n```\n"
    )


RENDERERS: dict[str, Callable[[Inputs], str]] = {
    "results-headline": results_headline,
    "study-targets": study_targets,
    "study-goal": study_goal,
    "knn-class-control": knn_class_control,
    "study-tables": study_tables,
    "readme-quality": readme_quality,
    "readme-demo": readme_demo,
    "vae-fidelity": vae_fidelity,
    "readme-benchmarks": lambda inp: benchmark_table(inp.results),
}


def render(text: str, inp: Inputs, where: str = "document") -> str:
    """`text` with every generated block's body recomputed; unknown or unclosed blocks are errors."""
    opened = OPENER.findall(text)
    matched = [m.group("name") for m in BLOCK.finditer(text)]
    if sorted(opened) != sorted(matched):
        unclosed = sorted(set(opened) - set(matched)) or opened
        raise ResultsDocError(
            f"{where}: generated block {unclosed[0]!r} has no matching '<!-- end generated: {unclosed[0]} -->'"
        )
    for name in matched:
        if name not in RENDERERS:
            raise ResultsDocError(
                f"{where}: generated block {name!r} is not one of {', '.join(sorted(RENDERERS))}"
            )

    def sub(m: re.Match) -> str:
        return m.group("open") + RENDERERS[m.group("name")](inp) + m.group("close")

    return BLOCK.sub(sub, text)


def stale(root: Path = ROOT) -> dict[str, str]:
    """document -> its regenerated text, for each document whose generated blocks are out of date."""
    inp = Inputs(root)
    out = {}
    for rel in DOCUMENTS:
        path = root / rel
        text = path.read_text()
        new = render(text, inp, rel)
        if new != text:
            out[rel] = new
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report documents whose blocks are stale")
    args = ap.parse_args(argv)
    try:
        changed = stale()
    except (UserError, OSError) as e:
        print(f"results_doc: {e}", file=sys.stderr)
        return 2
    for rel, text in changed.items():
        if args.check:
            print(f"results_doc: {rel} is stale: run `{COMMAND}`", file=sys.stderr)
        else:
            (ROOT / rel).write_text(text)
            print(f"results_doc: rewrote {rel}")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
