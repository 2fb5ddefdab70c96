"""The study's targets at ratio 100, judged on paired per-seed differences with a 95 % interval.

report.targets() compares means over seeds; a difference that is small against the seed spread
(e.g. +1.9 points with a per-seed std of 3) is not a result. Here each target is the paired
difference (same split and training seed, both methods) with a t-interval over the seeds, and the
verdict says "met" only when the whole interval clears the target (ltad.study.paired).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ltad.study.paired import Paired, paired_class_cells, paired_interval, paired_rows
from ltad.study.sizes import BUCKET_LABELS, SIZE_PAIRS, by_class_size

TAIL_MARGIN = 0.03
"""LTAD's tail-class image AUROC must exceed reconstruction-only's by this much (the quality issue)."""

METHOD_LABELS = {
    "ltad": "LTAD",
    "rec_only": "rec_only",
    "knn": "kNN",
    "ltad_mb": "LTAD + class banks",
    "knn_class": "per-class kNN",
    "knn_class_oracle": "per-class kNN (true class)",
}
TAIL_CELLS = "tail_cells"
"""Figure name of a claim paired per tail class (same level, seed and class), not per seed."""
FIGURE_WORDS = {
    "tail_image_AUROC": "tail image AUROC",
    "image_AUROC": "mean image AUROC",
    TAIL_CELLS: "per-class image AUROC of the tail classes",
}


@dataclass(frozen=True)
class Claim:
    """One target at one level: `first - second` on `figure`, the bar it must clear, and the verdict."""

    level: str
    first: str
    second: str
    figure: str
    target: float
    strict: bool
    paired: Paired

    @property
    def verdict(self) -> str:
        return self.paired.verdict(self.target, strict=self.strict)

    def sentence(self) -> str:
        what = FIGURE_WORDS.get(self.figure, self.figure)
        bar = f"{'>' if self.strict else '≥'} {100 * self.target:+.0f}".replace("+0", "0")
        per = "per tail class" if self.figure == TAIL_CELLS else "per seed"
        diffs = ", ".join(f"{100 * d:+.1f}" for d in self.paired.diffs)
        return (
            f"{METHOD_LABELS.get(self.first, self.first)} {what} − "
            f"{METHOD_LABELS.get(self.second, self.second)} = {self.paired.describe()}, "
            f"{per} {diffs} (target {bar}: **{self.verdict}**)"
        )


TARGETS = (
    ("ltad", "knn", "image_AUROC", 0.0, True),
    ("ltad", "rec_only", "tail_image_AUROC", TAIL_MARGIN, False),
)


def target_claims(rows: Sequence[dict], levels: Sequence[str]) -> list[Claim]:
    """The two targets at every ratio-100 level that has rows of both methods."""
    out = []
    for lv in levels:
        if not lv.endswith("100"):
            continue
        for first, second, figure, target, strict in TARGETS:
            p = paired_rows(rows, lv, first, second, figure)
            if p is not None:
                out.append(Claim(lv, first, second, figure, target, strict, p))
    return out


def goal_claims(
    rows: Sequence[dict], levels: Sequence[str], methods: Sequence[str] = ("ltad", "ltad_mb")
) -> list[Claim]:
    """The quality goal: each of `methods` above kNN on mean image AUROC at every level (paired by
    seed), and at ratio 100 its tail classes >= TAIL_MARGIN above rec_only, paired per tail class."""
    out = []
    for first in methods:
        for lv in levels:
            p = paired_rows(rows, lv, first, "knn", "image_AUROC")
            if p is not None:
                out.append(Claim(lv, first, "knn", "image_AUROC", 0.0, True, p))
        for lv in (x for x in levels if x.endswith("100")):
            p = paired_class_cells(rows, lv, first, "rec_only")
            if p is not None:
                out.append(Claim(lv, first, "rec_only", TAIL_CELLS, TAIL_MARGIN, False, p))
    return out


def goal_lines(rows: Sequence[dict], levels: Sequence[str]) -> list[str]:
    """Markdown bullets of goal_claims()."""
    return [f"- {c.level}: {c.sentence()}." for c in goal_claims(rows, levels)]


def target_lines(rows: Sequence[dict], levels: Sequence[str]) -> list[str]:
    """Markdown bullets, one per (level, target), and how to read them."""
    claims = target_claims(rows, levels)
    if not claims:
        return []
    return [
        "Paired by seed (the same split and training seed for both methods), 95 % t-interval over the "
        "seeds: **met** only if the whole interval clears the target, **not met** only if it lies "
        "below it, **not shown** when the seeds cannot tell.",
        "",
        *(f"- {c.level}: {c.sentence()}." for c in claims),
    ]


def class_size_lines(rows: Sequence[dict], methods: Sequence[str]) -> list[str]:
    """Markdown bullets: each paired `a - b` of the by-class-size table with a 95 % t-interval over its
    (level, seed, class) cells. Cells of one seed share a training run, so the interval is optimistic;
    it is the sharper test for the tail all the same, since each pair shares split, class and seed."""

    data = by_class_size(list(rows), list(methods))
    out = []
    for first, second in SIZE_PAIRS:
        key = f"{first} - {second}"
        parts = []
        for b in BUCKET_LABELS:
            diffs = data.get(b, {}).get(key, []) if b in data else []
            if len(diffs) >= 2:
                p = paired_interval(diffs, [0.0] * len(diffs))
                parts.append(f"{b} images {p.describe()}")
        if parts:
            out.append(f"- {key}: " + "; ".join(parts) + ".")
    return out


CONTROL_PAIRS = (
    ("ltad_mb", "knn_class"),
    ("knn_class", "knn"),
    ("ltad_mb", "knn"),
    ("knn_class_oracle", "knn_class"),
    ("ltad", "knn_class"),
)
"""The per-class kNN control's comparisons: is `ltad_mb`'s edge LTAD or per-class banks? (banks vs one
bank; what predicting the class costs the banks; LTAD without banks against banks alone)."""


def control_lines(rows: Sequence[dict], levels: Sequence[str]) -> list[str]:
    """Markdown bullets: each CONTROL_PAIRS difference on mean image AUROC paired by seed at every
    level, knn_class's class accuracy, and the pairs per class cell by class size (long-tailed levels)."""
    out = []
    for lv in levels:
        parts = []
        for first, second in CONTROL_PAIRS:
            p = paired_rows(rows, lv, first, second, "image_AUROC")
            if p is not None:
                label = f"{METHOD_LABELS.get(first, first)} − {METHOD_LABELS.get(second, second)}"
                parts.append(f"{label} {p.describe()}")
        acc = [r["class_accuracy"] for r in rows if r["level"] == lv and r["method"] == "knn_class"]
        if parts:
            tail = f" (its class prediction: {100 * sum(acc) / len(acc):.1f} % correct)" if acc else ""
            out.append(f"- {lv}, mean image AUROC{tail}: " + "; ".join(parts) + ".")
    data = by_class_size(list(rows), sorted({r["method"] for r in rows}), CONTROL_PAIRS)
    for first, second in CONTROL_PAIRS[:2]:
        key = f"{first} - {second}"
        cells = []
        for b in BUCKET_LABELS:
            diffs = data.get(b, {}).get(key, []) if b in data else []
            if len(diffs) >= 2:
                cells.append(f"{b} images {paired_interval(diffs, [0.0] * len(diffs)).describe()}")
        if cells:
            out.append(f"- per class cell (exp100 and step100 pooled), {key}: " + "; ".join(cells) + ".")
    return out
