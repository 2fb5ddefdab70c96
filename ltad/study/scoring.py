"""Score a test FeatureSet with a trained LTAD (any ablation of its score) or the kNN baseline."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ltad.eval.aggregate import METRICS, aggregate
from ltad.eval.metrics import pixel_aupro, pixel_auroc
from ltad.models.ltad import LTAD
from ltad.study.features import FeatureSet


def ltad_terms(model: LTAD, test: FeatureSet, oracle: bool, batch: int = 64):
    """Per-patch z(S_rec), z(S_sem) (N x g x g each), the class used per image (N) and the
    class-prediction accuracy."""
    rec, sem, used, correct = [], [], [], 0
    model.eval()
    for i in range(0, len(test), batch):
        sl = slice(i, i + batch)
        cid = test.class_id[sl] if oracle else None
        z_rec, z_sem, cls, _ = model.standardised_scores(test.patches[sl].float(), test.global_emb[sl], cid)
        rec.append(z_rec)
        sem.append(z_sem)
        used.append(cls.cpu())
        correct += int((cls.cpu() == test.class_id[sl]).sum())
    return torch.cat(rec), torch.cat(sem), torch.cat(used), correct / max(len(test), 1)


def maps_from(
    model: LTAD, fused: torch.Tensor, size: int, batch: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused patch scores -> anomaly maps and image scores exactly as LTAD.score makes them."""
    maps, scores = [], []
    for i in range(0, fused.shape[0], batch):
        m, s = model.to_maps(fused[i : i + batch], (size, size))
        maps.append(m)
        scores.append(s)
    return torch.cat(maps), torch.cat(scores)


def metrics(
    maps: torch.Tensor,
    scores: torch.Tensor,
    test: FeatureSet,
    class_names: Sequence[str],
    train_counts: dict[str, int],
    class_order: Sequence[str],
) -> dict:
    """The evaluation report (image/pixel AUROC, AUPRO, F1-max; head/medium/tail) of one scoring."""
    assert test.masks is not None, "pixel metrics need a FeatureSet encoded with masks"
    maps_np, masks_np = maps.float().numpy(), test.masks.numpy()
    pixel = {}
    for c, name in enumerate(class_names):
        sel = (test.class_id == c).numpy()
        if sel.any():
            pixel[name] = {
                "pixel_AUROC": pixel_auroc(maps_np[sel], masks_np[sel]),
                "pixel_AUPRO": pixel_aupro(maps_np[sel], masks_np[sel]),
            }
    return aggregate(scores, test.label, test.class_id, class_names, train_counts, pixel, class_order)


def summarise(report: dict) -> dict:
    """The figures a study row keeps from a report."""
    out = {k: report[k] for k in METRICS}
    for g, v in report["groups"].items():
        out[f"{g}_image_AUROC"] = v["image_AUROC"]
    out["gap_image_AUROC"] = report["gap"]["image_AUROC"]
    out["per_class_image_AUROC"] = {c: v["image_AUROC"] for c, v in report["per_class"].items()}
    return out
