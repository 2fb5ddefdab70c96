"""Rank 0's evaluation outputs (ltad/eval/outputs.py): merging worker shares, overlay choice, scores.csv."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ltad.eval.metrics import PixelMetricAccumulator, pixel_auroc
from ltad.eval.normalise import calibrated_normalisation
from ltad.eval.outputs import (
    SCORES_COLUMNS,
    CandidateRef,
    OverlayCandidate,
    ScoredSample,
    ShareScores,
    candidate_refs,
    choose_overlays,
    chosen_candidates,
    evaluation_metrics,
    merge_candidates,
    merge_shares,
    write_scores,
)


def _share(rng, keys, class_id=0):
    maps = rng.random((len(keys), 8, 8)).astype(np.float32)
    masks = np.zeros_like(maps, dtype=bool)
    masks[:, 2:5, 2:5] = True
    maps[masks] += 0.5
    acc = PixelMetricAccumulator(200, 0.3, value_range=(0.0, 1.5))
    acc.update(maps, masks)
    samples = [
        ScoredSample(k, class_id, i % 2, float(i) + 0.5 * (i % 2), class_id) for i, k in enumerate(keys)
    ]
    return ShareScores(samples, [acc]), maps, masks


def test_merged_shares_give_the_metrics_of_all_samples_at_once():
    rng = np.random.default_rng(0)
    a, maps_a, masks_a = _share(rng, ["a0", "a1", "a2", "a3"])
    b, maps_b, masks_b = _share(rng, ["b0", "b1", "b2", "b3"])
    merged = merge_shares([a, b])
    assert [s.key for s in merged.samples] == ["a0", "a1", "a2", "a3", "b0", "b1", "b2", "b3"]
    exact = pixel_auroc(np.concatenate([maps_a, maps_b]), np.concatenate([masks_a, masks_b]))
    metrics = evaluation_metrics(merged, ["only"], {"only": 5})
    assert metrics["n_evaluated"] == 8 and metrics["class_prediction_accuracy"] == 1.0
    assert metrics["per_class"]["only"]["pixel_AUROC"] == pytest.approx(exact, abs=1e-2)
    assert metrics["threshold"]["rule"].startswith("F1-max")


def test_overlays_take_anomalous_samples_first_then_normal_ones():
    def cand(key, label):
        return OverlayCandidate(key, "s3://b/test/t-000000.tar", label, np.zeros((2, 2), np.float16))

    candidates = {(0, 1): [cand("d2", 1), cand("d1", 1), cand("d3", 1)], (0, 0): [cand("n1", 0)]}
    chosen = choose_overlays(candidates, num_classes=2, per_class=4)
    assert [c.key for c in chosen[0]] == ["d1", "d2", "d3", "n1"] and chosen[1] == []
    chosen = choose_overlays({(0, 1): [cand("d1", 1)], (0, 0): [cand("n2", 0), cand("n1", 0)]}, 1, 2)
    assert [c.key for c in chosen[0]] == ["d1", "n1"]


def test_scores_csv_is_sorted_with_the_decision_at_the_threshold(tmp_path):
    samples = [ScoredSample("b", 1, 1, 0.9, 1), ScoredSample("a", 0, 0, 0.2, 1)]
    write_scores(tmp_path / "scores.csv", samples, ["c0", "c1"], threshold=0.5)
    rows = list(csv.reader((tmp_path / "scores.csv").open()))
    assert tuple(rows[0]) == SCORES_COLUMNS
    # normalised: 0 and 1 at the lowest and highest score, 0.5 at the threshold (as export.json)
    assert rows[1] == ["a", "c0", "0", "0.2", "0", "0", "c1"] and rows[2] == [
        "b",
        "c1",
        "1",
        "0.9",
        "1",
        "1",
        "c1",
    ]


def test_overlays_draw_captured_images_and_read_only_the_others(tmp_path):
    import torch

    from ltad.eval.outputs import render_overlays

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), dtype=bool)
    mask[4:8, 4:8] = True
    amap = rng.random((16, 16)).astype(np.float16)
    captured = OverlayCandidate("d1", "s3://b/test/t-000000.tar", 1, amap, image=image, gt_mask=mask)
    read = OverlayCandidate("n1", "s3://b/features/x/test/t-000000.tar", 0, amap)
    decoded = {"n1": {"image": torch.rand(3, 16, 16), "gt_mask": torch.zeros(1, 16, 16)}}
    written = render_overlays({0: [captured, read]}, decoded, ["cls"], 0.5, tmp_path / "overlays")
    assert written == {"cls": "overlays/cls.png"} and (tmp_path / "overlays" / "cls.png").stat().st_size > 0
    with pytest.raises(KeyError):  # a candidate without a captured image needs its decoded one
        render_overlays({0: [read]}, {}, ["cls"], 0.5, tmp_path / "again")


def test_scores_csv_decides_by_the_predicted_class_threshold(tmp_path):
    """With calibrated thresholds, each row is decided at its predicted class's (as `ltad predict`)."""
    samples = [
        ScoredSample("a", 0, 0, 0.9, 0),
        ScoredSample("b", 0, 0, 0.9, 1),
        ScoredSample("c", 1, 1, 3.0, 1),
    ]
    norms = [calibrated_normalisation(0.5, 0.0), calibrated_normalisation(2.0, 0.0)]
    write_scores(tmp_path / "scores.csv", samples, ["c0", "c1"], 0.5, class_norms=norms)
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [r["pred_anomalous"] for r in rows] == ["1", "0", "1"]
    # normalised on the predicted class's scale, as export.json: 0.5 at its threshold
    assert [float(r["pred_score_normalised"]) for r in rows] == pytest.approx([0.9, 0.5 * 0.9 / 2.0, 0.75])


def test_calibration_metrics_rates_on_test_and_the_uncalibrated_fallback():
    from ltad.eval.calibration import calibrate, calibration_metrics

    cal = calibrate(np.arange(60.0), np.zeros(60, dtype=int), ["c0"], 0.05)  # 60 normals: the maximum
    scores, labels, pred = np.array([10.0, 59.0, 70.0, 5.0]), np.array([0, 0, 1, 1]), np.zeros(4, dtype=int)
    got = calibration_metrics(cal, scores, labels, pred, ["c0"], fallback_threshold=0.0)
    assert got["calibrated"] and got["per_class"]["c0"]["threshold"] == 59.0
    assert got["test"] == {"fpr": 0.5, "tpr": 0.5, "n_normal": 2, "n_anomalous": 2}
    none = calibration_metrics(None, scores, labels, pred, ["c0"], fallback_threshold=7.0)
    assert not none["calibrated"] and "re-run `ltad prepare`" in none["reason"]
    assert none["test"]["fpr"] == 1.0 and none["test"]["tpr"] == 0.5


def _ranks_candidates(classes: int, ranks: int, per_kind: int, side: int = 32):
    """What `score_share` keeps on each rank: per_kind candidates per (class, label), with maps."""
    rng = np.random.default_rng(1)
    out = []
    for r in range(ranks):
        kept = [
            OverlayCandidate(
                f"c{cid}/r{r}-{label}-{i}",
                "s3://b/test/t.tar",
                label,
                rng.random((side, side)).astype(np.float16),
            )
            for cid in range(classes)
            for label in (0, 1)
            for i in range(per_kind)
        ]
        out.append(kept)
    return out


def _by_kind(kept: list[OverlayCandidate]) -> dict[tuple[int, int], list[OverlayCandidate]]:
    d: dict[tuple[int, int], list[OverlayCandidate]] = {}
    for c in kept:
        d.setdefault((int(c.key.split("/")[0][1:]), c.label), []).append(c)
    return d


@pytest.mark.parametrize("classes", [10, 300])
def test_rank0_gets_only_the_chosen_maps_and_the_same_overlays(classes):
    import pickle

    ranks, per_class = 4, 2
    kept = _ranks_candidates(classes, ranks, per_kind=per_class)
    # before: every rank's candidates with their maps went to rank 0, which chose among them
    full = merge_candidates([ShareScores([], [], _by_kind(k)) for k in kept])  # type: ignore[arg-type]
    before = choose_overlays(full, classes, per_class)
    shares = [ShareScores([], [], candidate_refs(_by_kind(k))) for k in kept]
    chosen_refs = choose_overlays(merge_candidates(shares), classes, per_class)
    wanted = {r.key for refs in chosen_refs.values() for r in refs}
    pieces = [[c for c in k if c.key in wanted] for k in kept]  # what each rank sends back
    chosen = chosen_candidates(chosen_refs, pieces)
    assert {cid: [c.key for c in cs] for cid, cs in chosen.items()} == {
        cid: [c.key for c in cs] for cid, cs in before.items()
    }
    map_bytes = sum(c.anomaly_map.nbytes for piece in pieces for c in piece)
    assert map_bytes == classes * per_class * 32 * 32 * 2  # the chosen maps, whatever the ranks
    all_maps = sum(c.anomaly_map.nbytes for k in kept for c in k)
    assert all_maps == 2 * ranks * map_bytes  # what rank 0 received before: 8x at 4 ranks
    refs_bytes = len(pickle.dumps(shares))
    assert refs_bytes < map_bytes / 4  # the keys the first round sends are small beside the maps


def test_a_chosen_overlay_no_rank_sent_is_an_error():
    from ltad.errors import DataError

    refs = {0: [CandidateRef("k1", 1)]}
    with pytest.raises(DataError, match="k1"):
        chosen_candidates(refs, [[], []])


def test_send_chosen_in_one_process_returns_the_chosen_with_pixels():
    from types import SimpleNamespace

    from ltad.training.scoring import send_chosen

    kept = _ranks_candidates(2, 1, per_kind=1)[0]
    chosen = choose_overlays(candidate_refs(_by_kind(kept)), 2, 1)
    got = send_chosen(SimpleNamespace(rank=0, world_size=1), chosen, kept)  # type: ignore[arg-type]
    assert (
        got is not None
        and [c.key for c in got[0]] == ["c0/r0-1-0"]
        and got[0][0].anomaly_map.shape == (32, 32)
    )
