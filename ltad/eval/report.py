"""The Markdown report of an evaluation and the plain-text metrics table printed by jobs and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ltad.eval.aggregate import GROUPS, METRICS

SHORT = {
    "image_AUROC": "img AUROC",
    "pixel_AUROC": "px AUROC",
    "pixel_AUPRO": "AUPRO",
    "image_F1max": "img F1max",
}


def _fmt(v: Any) -> str:
    return "n/a" if v is None or v != v else f"{100 * float(v):.1f}"


def table_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows (header first): every class (head first), then the groups, the gap and the mean; values in %."""
    header = ["class", "group", "train", *[SHORT[m] for m in METRICS]]
    per_class = metrics["per_class"]
    order = [c for g in GROUPS for c in metrics["groups"][g]["classes"]]
    rows = [header]
    for c in order:
        r = per_class[c]
        rows.append([c, r["group"], str(r["train_count"]), *[_fmt(r[m]) for m in METRICS]])
    for g in GROUPS:
        rows.append([f"[{g}]", "", "", *[_fmt(metrics["groups"][g][m]) for m in METRICS]])
    rows.append(["[head - tail]", "", "", *[_fmt(metrics["gap"][m]) for m in METRICS]])
    rows.append(["[mean]", "", "", *[_fmt(metrics[m]) for m in METRICS]])
    return rows


def text_table(metrics: dict[str, Any]) -> str:
    rows = table_rows(metrics)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(metrics: dict[str, Any]) -> str:
    rows = table_rows(metrics)
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def write_report(path: Path, metrics: dict[str, Any], overlays: dict[str, str]) -> Path:
    """report.md: the table, provenance (weights said plainly), threshold and overlay links."""
    prov = metrics["provenance"]
    weights = prov["weights"]
    split = prov["split"]
    lines = [
        "# LTAD evaluation report",
        "",
        f"Dataset `{prov['dataset']}`, split {split['profile']} ratio {split['ratio']} seed {split['seed']} "
        f"(sha256 `{prov['split_sha256'][:12]}`), {metrics['n_evaluated']} test images, seed {prov['seed']}, "
        f"commit `{prov['git_commit']}`.",
        "",
        f"**Weights:** image tower: {weights.get('image')}; text tower: {weights.get('text')}.",
    ]
    if not weights.get("real_clip", False):
        lines.append(
            "No real CLIP weights were used: the text tower is random, so the figures below are not "
            "comparable with the paper's."
        )
    lines += [
        "",
        "Values in %: class means (unweighted); groups are head / medium / tail thirds by training count.",
        "",
        markdown_table(metrics),
        "",
        f"Class prediction accuracy (test, predicted class mode): {_fmt(metrics['class_prediction_accuracy'])} %. "
        f"Image threshold ({metrics['threshold']['rule']}): {metrics['threshold']['image_score']:.4g}.",
        "",
        *_calibration_lines(metrics.get("calibration")),
        *validation_lines(metrics.get("validation")),
    ]
    undefined = {m: u["classes"] for m, u in metrics.get("undefined", {}).items() if u["classes"]}
    if undefined:
        lines += [
            "Undefined (left out of means): "
            + "; ".join(f"{m}: {', '.join(c)}" for m, c in undefined.items()),
            "",
        ]
    if overlays:
        lines += ["## Overlays", "", "image | anomaly map | ground truth | prediction (map >= threshold)", ""]
        lines += [f"![{c}]({p})" for c, p in overlays.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def validation_lines(val: dict | None) -> list[str]:
    """The validation AUROC (what chooses settings; no test label) and its per-class values."""
    if not val:
        return []
    if val["n_normal"] == 0 or val["n_pseudo"] == 0:
        return ["Validation image AUROC: n/a (no held-out normal images: split with --val-fraction > 0).", ""]
    per_class = ", ".join(f"{c} {_fmt(v)}" for c, v in val["per_class"].items())
    return [
        f"Validation image AUROC ({val['rule']}; {val['n_normal']} held-out normals, {val['n_pseudo']} "
        f"pseudo-anomalies): {_fmt(val['image_AUROC'])} %"
        + (f"; per class: {per_class}." if per_class else "."),
        "",
    ]


def _rule_row(r: dict) -> str:
    """source, n and (records since the bounds) the false-positive bound and coverage of one class."""
    out = f"{r['source']}, n={r['n_heldout']}"
    if "fpr_bound" in r:
        out += f", FPR <= {100 * r['fpr_bound']:.3g} % at 90 %" + ("" if r["covered"] else ", uncovered")
    return out


def _calibration_lines(cal: dict | None) -> list[str]:
    """The decision rule of the exported model and its rates on the test set (none for old metrics)."""
    if not cal:
        return []
    test = cal["test"]
    rates = f"on the test set: false-positive rate {_fmt(test['fpr'])} %, true-positive rate {_fmt(test['tpr'])} %."
    if not cal["calibrated"]:
        return [f"Decision threshold: uncalibrated ({cal['reason']}); {rates}", ""]
    rows = ", ".join(f"{c} {r['threshold']:.4g} ({_rule_row(r)})" for c, r in cal["per_class"].items())
    return [
        f"Decision thresholds ({cal['rule']}, target_fpr {cal['target_fpr']:g}; fewer than "
        f"{cal['min_heldout_per_class']} held-out images: {cal['fallback']}): {rows}. Decisions {rates}",
        "",
    ]
