"""Phase 2's validation (ltad/training/validation.py) keeps the held-out features on local disk, not in
rank 0's memory, and gives the value the in-memory scoring gave."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ltad.eval.validation import VAL_METRIC, validation_metrics
from ltad.models.state import trained_state
from ltad.training import validation as validation_module
from ltad.training.scoring import pseudo_batch
from tests.integration.conftest import TINY_MODEL

SIZE = 64


def _model():
    from ltad.config import LTADConfig
    from ltad.models.state import build_model

    cfg = LTADConfig.from_dict({"model": TINY_MODEL})
    model = build_model(cfg, 2).eval()
    model.cache_text()
    return cfg, model


def _heldout(batches: int, batch: int):
    gen = torch.Generator().manual_seed(2)
    out = []
    for b in range(batches):
        images = torch.rand(batch, 3, SIZE, SIZE, generator=gen)
        keys = [f"c{i % 2}/{b}-{i}" for i in range(batch)]
        out.append((keys, [i % 2 for i in range(batch)], (images, pseudo_batch(images, keys))))
    return out


def test_validation_streams_the_held_out_features_from_disk_and_scores_as_before(monkeypatch):
    cfg, model = _model()
    held = _heldout(batches=3, batch=4)
    monkeypatch.setattr(validation_module, "heldout_batches", lambda w, rank, world: iter(held))
    stats_images = torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stats = [(model.encoder.encode_images(stats_images).patches, torch.tensor([0, 0, 0, 1, 1, 1]))]
    w = SimpleNamespace(cfg=cfg, manifest=SimpleNamespace(classes=("c0", "c1")), device=torch.device("cpu"))
    check = validation_module.Phase2Validation(w, model, stats, ("reconstruction.", "semantic."))  # type: ignore[arg-type]
    assert check.n_images == 12 and len(check.batches) == 6 and all(p.exists() for p in check.batches)
    held_tensors = [v for v in vars(check).values() if isinstance(v, torch.Tensor)]
    assert held_tensors == []  # nothing per held-out image stays in memory but the files' paths
    state = trained_state(model)
    with torch.no_grad():
        got = check(state)
        # the scoring it replaces: every held-out batch encoded and scored from memory
        model.fit_standardisation(iter(stats))
        scores: dict[int, list[float]] = {0: [], 1: []}
        classes: dict[int, list[int]] = {0: [], 1: []}
        for _, cids, images in held:
            for label, batch in enumerate(images):
                enc = model.encoder.encode_images(batch)
                out = model.score(enc.patches.float(), enc.global_emb.float(), (SIZE, SIZE))
                scores[label] += [float(v) for v in out.pred_score]
                classes[label] += cids
    expected = validation_metrics(scores[0], classes[0], scores[1], classes[1], ["c0", "c1"])["image_AUROC"]
    assert got == {VAL_METRIC: expected}
    folder = check.batches[0].parent
    del check
    assert not folder.exists()  # the temporary folder goes with the validation
