"""ltad_mb in the model: the banks as buffers score like PatchCore, change the fused score by exactly
weight x z, travel through weights.pt, `ltad predict` and the ONNX graph, and older states load."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ltad.baselines.class_banks import fit_class_bank
from ltad.baselines.patchcore import PatchCore
from ltad.errors import DataError
from ltad.models.memory_banks import ClassBank, MemoryBanks
from tests.integration.conftest import TINY_MODEL

SIZE = 64
TINY = {**TINY_MODEL, "vae": {"latent": 8, "hidden": 32}}


def test_z_scores_are_patchcore_distances_standardised_per_predicted_class():
    gen = torch.Generator().manual_seed(0)
    train = [torch.randn(6, 8, 4, 4, generator=gen) + c for c in (0.0, 3.0)]
    banks = {c: fit_class_bank(train[c], coreset_ratio=0.5, seed=0) for c in (0, 1)}
    module = MemoryBanks(3, 8).set_banks(banks)  # class 2 has no bank
    assert module.classes == [0, 1] and module.bank.shape[:2] == (
        2,
        max(b.rows.shape[0] for b in banks.values()),
    )
    test = torch.randn(5, 8, 4, 4, generator=gen)
    cls = torch.tensor([0, 1, 1, 0, 2])
    z = module.z_scores(test, cls)
    for i, c in enumerate(cls.tolist()):
        if c == 2:
            assert torch.equal(z[i], torch.zeros(4, 4))
            continue
        ref = PatchCore(coreset_ratio=0.5, seed=0).fit(train[c].split(64)).patch_scores(test[i : i + 1])[0]
        assert torch.allclose(z[i], (ref - banks[c].mean) / banks[c].std, atol=1e-4)


def test_set_banks_refuses_a_wrong_class_or_width():
    module = MemoryBanks(2, 8)
    with pytest.raises(ValueError, match="class id 5"):
        module.set_banks({5: ClassBank(torch.zeros(3, 8), 0.0, 1.0)})
    with pytest.raises(ValueError, match="M x 8"):
        module.set_banks({0: ClassBank(torch.zeros(3, 4), 0.0, 1.0)})
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_class_bank(torch.zeros(1, 8, 4, 4))


def _fitted_model(weight: float):
    from ltad.config import LTADConfig
    from ltad.models.state import build_model

    cfg = LTADConfig.from_dict(
        {"model": {**TINY, "score": {"memory_bank": {"weight": weight, "min_images": 2}}}}
    )
    model = build_model(cfg, 2).eval()
    model.cache_text()
    images = torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    enc = model.encoder.encode_images(images)
    cid = torch.tensor([0, 0, 0, 1, 1, 1])
    model.fit_standardisation([(enc.patches, cid)])
    return cfg, model, enc, cid


def test_the_fused_score_adds_weight_times_z_and_weight_zero_is_the_paper():
    cfg, model, enc, cid = _fitted_model(2.0)
    z_rec, z_sem, cls, _ = model.standardised_scores(enc.patches, enc.global_emb)
    paper = model.fuse(z_rec, z_sem)
    assert torch.equal(model.fuse_scores(z_rec, z_sem, enc.patches, cls), paper)  # no banks yet
    model.memory_banks.set_banks({0: fit_class_bank(enc.patches[:3], 0.5)})
    with_banks = model.fuse_scores(z_rec, z_sem, enc.patches, cls)
    expected = paper + 2.0 * model.memory_banks.z_scores(enc.patches, cls)
    assert torch.allclose(with_banks, expected) and not torch.allclose(with_banks, paper)
    score = model.cfg.score
    model.cfg = replace(model.cfg, score=replace(score, memory_bank=replace(score.memory_bank, weight=0.0)))
    assert torch.equal(model.fuse_scores(z_rec, z_sem, enc.patches, cls), paper)


def test_banks_round_trip_through_state_and_older_states_load_without_them():
    from ltad.models.state import build_model, load_trained, trained_state

    cfg, model, enc, _ = _fitted_model(2.0)
    model.memory_banks.set_banks({1: fit_class_bank(enc.patches[3:], 0.5)})
    state = trained_state(model)
    fresh = build_model(cfg, 2)
    load_trained(fresh, state)
    assert fresh.memory_banks.classes == [1] and torch.equal(fresh.memory_banks.bank, model.memory_banks.bank)
    fresh.eval()
    a = model.score(enc.patches, enc.global_emb, (SIZE, SIZE)).pred_score
    b = fresh.score(enc.patches, enc.global_emb, (SIZE, SIZE)).pred_score
    assert torch.allclose(a, b)
    older = {k: v for k, v in state.items() if not k.startswith("memory_banks.")}
    plain = build_model(cfg, 2)
    load_trained(plain, older)
    assert not plain.memory_banks.fitted
    partial = {k: v for k, v in state.items() if k != "memory_banks.bank_slot"}  # never silently bank-less
    with pytest.raises(DataError, match="bank_slot"):
        load_trained(build_model(cfg, 2), partial)


def test_export_predict_and_onnx_score_with_the_banks(tmp_path):
    from ltad import Predictor
    from ltad.inference.export import export_model, write_export

    cfg, model, enc, _ = _fitted_model(2.0)
    model.memory_banks.set_banks({0: fit_class_bank(enc.patches[:3], 0.5)})
    scores = model.score(enc.patches, enc.global_emb, (SIZE, SIZE)).pred_score.numpy()
    out = write_export(tmp_path / "model", model, cfg, ["a", "b"], scores, float(np.median(scores)), {})
    meta = json.loads((out / "export.json").read_text())
    assert meta["memory_banks"] == {"weight": 2.0, "classes": ["a"]}
    images = [np.random.default_rng(i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for i in range(3)]
    x = torch.from_numpy(np.stack(images).astype(np.float32) / 255).permute(0, 3, 1, 2)
    e = model.encoder.encode_images(x)
    expected = model.score(e.patches, e.global_emb, (SIZE, SIZE)).pred_score.numpy()
    got = Predictor.load(out).predict(images)
    assert np.allclose(got.scores, expected, rtol=1e-5, atol=1e-5)
    pytest.importorskip("onnxruntime")
    onnx = export_model(out, "onnx", tmp_path / "onnx")
    assert json.loads((onnx / "export.json").read_text())["onnx"]["check"]["max_abs_map_diff"] <= 1e-4
    assert np.abs(Predictor.load(onnx).predict(images).scores - expected).max() <= 1e-4
    meta["memory_banks"]["classes"] = ["a", "b"]  # export.json and weights.pt disagree: refused
    (out / "export.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="inconsistent"):
        Predictor.load(out)
