"""What an evaluation produces from the workers' scores: typed results, metrics, scores.csv, overlays.

Pure: no torch.distributed, no Ray, no model. The evaluation stage (ltad/training/stages.py) scores
its share of the test set on every worker into a `ShareScores`, gathers them to rank 0 and calls
these functions; the image panels it draws are decoded by the caller and passed in.

Overlays in two rounds, so rank 0 never holds what it will not draw: each worker's `ShareScores`
carries only `CandidateRef`s (key and label) of its overlay candidates; rank 0 chooses among them
(`choose_overlays`), the chosen keys go back to the workers, and only the chosen candidates' maps
(`OverlayCandidate`) come to rank 0 (`chosen_candidates`), whatever the number of ranks.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from ltad.errors import DataError
from ltad.eval.aggregate import METRICS, aggregate
from ltad.eval.metrics import PixelMetricAccumulator, StreamingPixelAccumulator, f1_max_threshold
from ltad.eval.normalise import normalisation, normalise
from ltad.eval.validation import VAL_METRIC, validation_metrics
from ltad.eval.visualize import class_gallery, overlay_panel

SCORES_COLUMNS = (
    "key",
    "class",
    "gt_label",
    "pred_score",
    "pred_score_normalised",
    "pred_anomalous",
    "pred_class",
)
"""scores.csv of `ltad evaluate` and of `ltad predict` (key = the image path; class and gt_label empty)."""


class _Keyed(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def label(self) -> int: ...


C = TypeVar("C", bound=_Keyed)


@dataclass(frozen=True)
class ScoredSample:
    """One test sample's image-level result."""

    key: str
    class_id: int
    gt_label: int
    pred_score: float
    pred_class: int


@dataclass(frozen=True)
class OverlayCandidate:
    """A sample that may be drawn in its class's gallery: its map (fp16) and where its image is.

    `image` (H x W x 3 uint8 at evaluation resolution) and `gt_mask` (H x W bool) are captured at scoring
    time when the batch holds images, so rank 0 need not read the shard again; None with cached features.
    """

    key: str
    shard: str  # the shard URL it was read from (image or feature shard)
    label: int
    anomaly_map: np.ndarray
    image: np.ndarray | None = None
    gt_mask: np.ndarray | None = None


@dataclass(frozen=True)
class CandidateRef:
    """An overlay candidate without its pixels: what rank 0 chooses overlays by."""

    key: str
    label: int


def candidate_refs(
    candidates: dict[tuple[int, int], list[OverlayCandidate]],
) -> dict[tuple[int, int], list[CandidateRef]]:
    return {k: [CandidateRef(c.key, c.label) for c in v] for k, v in candidates.items()}


def chosen_candidates(
    chosen: dict[int, list[CandidateRef]], pieces: list[list[OverlayCandidate]]
) -> dict[int, list[OverlayCandidate]]:
    """The chosen overlays with their pixels, from the pieces the ranks sent back (in `chosen`'s order);
    a chosen key no rank sent is an error, never a silently missing panel."""
    by_key = {c.key: c for piece in pieces for c in piece}
    missing = sorted(r.key for refs in chosen.values() for r in refs if r.key not in by_key)
    if missing:
        raise DataError(f"overlay candidates {missing[:5]} were chosen but no rank sent their maps")
    return {cid: [by_key[r.key] for r in refs] for cid, refs in chosen.items()}


@dataclass
class ShareScores:
    """What one worker sends to rank 0: its samples, per-class pixel accumulators, its overlay
    candidates' keys (their maps stay on the worker until chosen), its held-out normal samples (threshold calibration, validation) and their synthetic
    pseudo-anomalous copies (validation: ltad/eval/validation.py)."""

    samples: list[ScoredSample]
    pixel: list[PixelMetricAccumulator] | list[StreamingPixelAccumulator]
    candidates: dict[tuple[int, int], list[CandidateRef]] = field(default_factory=dict)
    heldout: list[ScoredSample] = field(default_factory=list)
    pseudo: list[ScoredSample] = field(default_factory=list)


@dataclass(frozen=True)
class Merged:
    """Every worker's scores together (rank 0)."""

    samples: list[ScoredSample]
    pixel: list[PixelMetricAccumulator] | list[StreamingPixelAccumulator]
    candidates: dict[tuple[int, int], list[CandidateRef]]
    heldout: list[ScoredSample] = field(default_factory=list)
    pseudo: list[ScoredSample] = field(default_factory=list)


def merge_shares(shares: list[ShareScores]) -> Merged:
    """Concatenate samples and candidates, add the accumulators (same bins and range on every rank)."""
    pixel = shares[0].pixel
    for share in shares[1:]:
        for a, b in zip(pixel, share.pixel):
            a.merge(b)  # type: ignore[attr-defined]  # same accumulator type on every rank
    candidates = merge_candidates(shares)
    heldout = [s for share in shares for s in share.heldout]
    pseudo = [s for share in shares for s in share.pseudo]
    return Merged([s for share in shares for s in share.samples], pixel, dict(candidates), heldout, pseudo)


def merge_candidates(shares: list[ShareScores]) -> dict[tuple[int, int], list[CandidateRef]]:
    """Every worker's candidate keys by (class id, label)."""
    candidates: dict[tuple[int, int], list[CandidateRef]] = defaultdict(list)
    for share in shares:
        for k, v in share.candidates.items():
            candidates[k].extend(v)
    return dict(candidates)


def check_exactly_once(samples: list[ScoredSample], expected: int, split: str = "test") -> None:
    """Every test sample of the manifest scored once: a shard read twice or not at all is an error."""
    keys = [s.key for s in samples]
    if len(keys) != expected or len(set(keys)) != expected:
        raise DataError(
            f"evaluation scored {len(keys)} samples ({len(set(keys))} distinct) but the manifest lists {expected} "
            f"{split} samples: a shard was read twice or not at all"
        )


def image_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """F1-max threshold of the image scores (the median when only one label is present)."""
    return f1_max_threshold(scores, labels) if labels.any() and not labels.all() else float(np.median(scores))


def evaluation_metrics(
    merged: Merged, classes: list[str], train_counts: dict[str, int], training: dict[str, Any] | None = None
) -> dict[str, Any]:
    """metrics.json without provenance: the aggregate, class accuracy, error bounds, counts, threshold,
    and the validation AUROC (`val_image_AUROC`, with details under `validation`; NaN without
    held-out images)."""
    rows = merged.samples
    scores = np.array([r.pred_score for r in rows], dtype=np.float64)
    labels = np.array([r.gt_label for r in rows], dtype=np.int64)
    ids = np.array([r.class_id for r in rows], dtype=np.int64)
    pixel = {classes[c]: merged.pixel[c].compute() for c in range(len(classes))}
    metrics = aggregate(scores, labels, ids, classes, train_counts, pixel)
    metrics["class_prediction_accuracy"] = float(np.mean([r.pred_class == r.class_id for r in rows]))
    metrics["pixel_error_bounds"] = {classes[c]: merged.pixel[c].error_bounds() for c in range(len(classes))}
    metrics["n_evaluated"] = len(rows)
    # chooses settings without test labels: held-out normals vs their pseudo-anomalies
    metrics["validation"] = validation_metrics(
        [s.pred_score for s in merged.heldout],
        [s.class_id for s in merged.heldout],
        [s.pred_score for s in merged.pseudo],
        [s.class_id for s in merged.pseudo],
        classes,
    )
    metrics[VAL_METRIC] = metrics["validation"]["image_AUROC"]
    # corrupt training samples skipped per phase (None: that phase was not run by this pipeline call)
    metrics["training"] = dict(training or {})
    threshold = image_threshold(scores, labels)
    metrics["threshold"] = {
        "image_score": threshold,
        "rule": "F1-max over all test images (a diagnostic: fitted on test labels; the export decides by "
        "the calibrated per-class thresholds under 'calibration' when the data has held-out normals)",
    }
    return metrics


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The four headline (test) metrics of a metrics.json and its validation AUROC when it has one
    (what stages report and sweeps forward to Tune)."""
    out = {k: metrics[k] for k in METRICS}
    if VAL_METRIC in metrics:
        out[VAL_METRIC] = metrics[VAL_METRIC]
    return out


def write_scores(
    path: Path,
    samples: list[ScoredSample],
    classes: list[str],
    threshold: float,
    class_norms: list[dict[str, float]] | None = None,
) -> None:
    """scores.csv: one row per test sample, sorted by key. With `class_norms` (per class id, from the
    calibration: ltad/eval/normalise.py) each sample is decided and normalised on its predicted
    class's scale, exactly as the export (`ltad predict`) does; without, at the global `threshold`
    with 0 and 1 at the lowest and highest test score."""
    scores = np.array([r.pred_score for r in samples], dtype=np.float64)
    default = normalisation(scores, threshold) if len(scores) else None

    def norm(r: ScoredSample) -> dict[str, float]:
        found = default if class_norms is None else class_norms[r.pred_class]
        assert found is not None
        return found

    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(SCORES_COLUMNS)
        for r in sorted(samples, key=lambda r: r.key):
            out.writerow(
                [
                    r.key,
                    classes[r.class_id],
                    r.gt_label,
                    f"{r.pred_score:.6g}",
                    f"{float(normalise(np.float64(r.pred_score), norm(r))):.6g}",
                    int(r.pred_score >= norm(r)["threshold"]),
                    classes[r.pred_class],
                ]
            )


def choose_overlays(
    candidates: dict[tuple[int, int], list[C]], num_classes: int, per_class: int
) -> dict[int, list[C]]:
    """Per class: anomalous samples first (about half), then normal ones, each by key (candidates or
    their refs: only key and label are looked at)."""
    chosen: dict[int, list[C]] = {}
    for cid in range(num_classes):
        bad = sorted(candidates.get((cid, 1), []), key=lambda c: c.key)
        good = sorted(candidates.get((cid, 0), []), key=lambda c: c.key)
        take = bad[: max(per_class - per_class // 2, per_class - len(good))]
        chosen[cid] = take + good[: per_class - len(take)]
    return chosen


def render_overlays(
    chosen: dict[int, list[OverlayCandidate]],
    images: dict[str, dict[str, Any]],
    classes: list[str],
    threshold: float | dict[int, float],
    out: Path,
) -> dict[str, str]:
    """One gallery PNG per class under `out`; `images` maps keys to decoded `image` / `gt_mask` tensors
    for the candidates that did not capture theirs at scoring time.

    Returns {class: path relative to out's parent} for the report. One colour scale for all classes;
    `threshold` is one value or one per class id (each gallery drawn at its class's threshold).
    """
    all_maps = [c.anomaly_map.astype(np.float32) for cs in chosen.values() for c in cs]
    value_range = (
        (min(float(m.min()) for m in all_maps), max(float(m.max()) for m in all_maps)) if all_maps else None
    )
    written = {}
    for cid, cs in chosen.items():
        if not cs:
            continue
        panels = []
        for c in cs:
            image, mask = _panel_inputs(c, images)
            panels.append(
                overlay_panel(
                    image,
                    c.anomaly_map.astype(np.float32),
                    mask,
                    threshold[cid] if isinstance(threshold, dict) else threshold,
                    value_range=value_range,
                    title=f"{c.key} (label {c.label})",
                )
            )
        path = class_gallery(panels, out / f"{classes[cid]}.png", title=classes[cid])
        written[classes[cid]] = str(path.relative_to(out.parent))
    return written


def _panel_inputs(c: OverlayCandidate, images: dict[str, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 float image in [0, 1], H x W mask) of a candidate: captured, or from `images`."""
    if c.image is not None and c.gt_mask is not None:
        return c.image.astype(np.float32) / 255.0, c.gt_mask.astype(np.float32)
    return images[c.key]["image"].permute(1, 2, 0).numpy(), images[c.key]["gt_mask"][0].numpy()
