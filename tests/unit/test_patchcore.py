"""PatchCore baseline: coreset selection, kNN scoring conventions, persistence, and a real synth run."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ltad.baselines import PatchCore, greedy_coreset, knn_distance
from ltad.errors import ConfigError, DataError, StorageError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_greedy(points: np.ndarray, n: int, start: int) -> list[int]:
    """Textbook farthest-point selection over the full float64 distance matrix."""
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    chosen = [start]
    while len(chosen) < n:
        chosen.append(int(dist[:, chosen].min(axis=1).argmax()))
    return chosen


def _radius(points: np.ndarray, centres) -> float:
    return float(np.linalg.norm(points[:, None] - points[list(centres)][None], axis=-1).min(axis=1).max())


# ---------------------------------------------------------------------------- coreset


def test_coreset_picks_one_point_per_cluster_after_projection():
    centres = torch.randn(6, 256, generator=_gen(1)) * 10
    points = (centres.repeat_interleave(80, 0) + 0.05 * torch.randn(480, 256, generator=_gen(2)))[
        torch.randperm(480, generator=_gen(3))
    ]
    cluster = torch.cdist(points, centres).argmin(dim=1)
    for seed in range(3):
        idx = greedy_coreset(points, 6, proj_dim=32, seed=seed)
        assert sorted(cluster[idx].tolist()) == list(range(6))


def test_greedy_coreset_matches_brute_force_reference_and_two_approximation():
    points = torch.rand(12, 3, generator=_gen(4), dtype=torch.float64).float()
    pts = points.double().numpy()
    for n in (1, 3, 5):
        idx = greedy_coreset(points, n, proj_dim=None, seed=n).tolist()
        assert idx == _reference_greedy(pts, n, idx[0])
        optimum = min(_radius(pts, c) for c in itertools.combinations(range(12), n))
        assert optimum <= _radius(pts, idx) <= 2 * optimum + 1e-6


def test_coreset_stops_at_the_distinct_points_and_is_seeded():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(10, 1) + 1000.0  # far from 0
    idx = greedy_coreset(points, 10, proj_dim=None)
    assert len(idx) == 3 and {tuple(points[i].tolist()) for i in idx} == {
        (1000, 1000),
        (1001, 1000),
        (1000, 1001),
    }
    many = torch.randn(300, 16, generator=_gen(5))
    assert torch.equal(greedy_coreset(many, 20, 8, seed=7), greedy_coreset(many, 20, 8, seed=7))
    assert not torch.equal(greedy_coreset(many, 20, 8, seed=7), greedy_coreset(many, 20, 8, seed=8))


# ---------------------------------------------------------------------------- scoring


def test_knn_distance_is_exact_and_independent_of_chunking():
    bank, queries = torch.randn(50, 8, generator=_gen(6)), torch.randn(37, 8, generator=_gen(7))
    ref = torch.cdist(queries.double(), bank.double()).topk(3, dim=1, largest=False).values.mean(dim=1)
    for max_elems in (1, 100, 1 << 20):
        got = knn_distance(queries, bank, k=3, max_elems=max_elems)
        assert torch.allclose(got.double(), ref, atol=1e-5)
    assert torch.equal(knn_distance(bank[:5] * 1, bank, k=1), torch.zeros(5))


def test_score_shapes_and_image_score_convention():
    model = PatchCore(coreset_ratio=0.5, seed=0).fit(
        torch.randn(2, 16, 5, 5, generator=_gen(8)) for _ in range(3)
    )
    assert 0 < model.bank_size <= 0.5 * 3 * 2 * 25 + 1
    patches = torch.randn(3, 16, 5, 5, generator=_gen(9))
    maps, scores = model.score(patches, (40, 30))
    assert maps.shape == (3, 40, 30) and scores.shape == (3,)
    expected = torch.nn.functional.avg_pool2d(maps.unsqueeze(1), 16, stride=1).flatten(1).amax(dim=1)
    assert torch.allclose(scores, expected)
    assert model.score(patches, 20)[0].shape == (3, 20, 20)  # pool shrinks to the map
    assert model.patch_scores(patches).shape == (3, 5, 5)
    capped = PatchCore(coreset_ratio=1.0, max_bank=7).fit([patches])
    assert capped.bank_size == 7 == capped.bank_size_for(75)


@pytest.mark.parametrize("aggregate", [True, False])
def test_patch_identical_to_bank_entry_scores_zero_before_blur(aggregate):
    train = torch.randn(4, 32, 6, 6, generator=_gen(10))
    model = PatchCore(coreset_ratio=1.0, aggregate=aggregate, blur_sigma=0).fit([train[:2], train[2:]])
    assert model.bank_size == 4 * 36
    assert torch.equal(model.patch_scores(train), torch.zeros(4, 6, 6))
    odd = train[:1].clone()
    odd[0, :, 2, 3] += 5.0
    raw = model.patch_scores(odd)
    assert raw[0, 2, 3] == raw.max() > 1.0
    # with a coreset, the kept entries still score 0 (bank rows are exact copies of training patches)
    small = PatchCore(coreset_ratio=0.2, aggregate=False).fit([train])
    bank = small.banks[-1]
    assert torch.equal(knn_distance(bank, bank), torch.zeros(len(bank)))
    maps, _ = model.score(odd, (60, 60))
    assert maps[0].argmax() // 60 in range(18, 36) and maps[0].argmax() % 60 in range(24, 42)


def test_per_class_banks_need_class_ids_and_use_their_own_class():
    a = torch.randn(3, 8, 4, 4, generator=_gen(11))
    b = torch.randn(3, 8, 4, 4, generator=_gen(12)) + 6.0
    model = PatchCore(coreset_ratio=1.0, per_class=True).fit(
        [(torch.cat([a, b]), torch.tensor([0] * 3 + [1] * 3))]
    )
    assert sorted(model.banks) == [0, 1]
    own = model.patch_scores(torch.cat([a[:1], b[:1]]), torch.tensor([0, 1]))
    crossed = model.patch_scores(torch.cat([a[:1], b[:1]]), torch.tensor([1, 0]))
    assert torch.equal(own, torch.zeros_like(own)) and crossed.min() > 5.0
    with pytest.raises(ValueError, match="class_id"):
        model.score(a, 16)
    with pytest.raises(ValueError, match="no bank for class id 5"):
        model.patch_scores(a[:1], torch.tensor([5]))
    with pytest.raises(ValueError, match="class_ids"):
        PatchCore(per_class=True).fit([a])


def test_bad_settings_and_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="patchcore.coreset_ratio"):
        PatchCore(coreset_ratio=0)
    with pytest.raises(ConfigError, match="patchcore.k"):
        PatchCore(k=0)
    with pytest.raises(RuntimeError, match="fit"):
        PatchCore().score(torch.zeros(1, 4, 2, 2), 8)
    model = PatchCore().fit([torch.zeros(1, 4, 2, 2)])
    with pytest.raises(ValueError, match="3 channels"):
        model.score(torch.zeros(1, 3, 2, 2), 8)
    with pytest.raises(ValueError, match="no training patches"):
        PatchCore().fit([])
    with pytest.raises(ValueError, match="feature dimension: 4 and 3"):
        PatchCore().fit([torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 2, 2)])


def test_save_load_round_trip_with_weights_only(tmp_path):
    train = [(torch.randn(2, 8, 4, 4, generator=_gen(i)), torch.tensor([i % 2, 1 - i % 2])) for i in range(4)]
    for per_class in (False, True):
        model = PatchCore(coreset_ratio=0.3, k=2, per_class=per_class, blur_sigma=2.0).fit(train)
        path = model.save(tmp_path / f"bank-{per_class}.pt")
        assert not list(tmp_path.glob(".*tmp*"))
        torch.load(path, weights_only=True)  # plain tensors and values only
        loaded = PatchCore.load(path)
        assert loaded._params() == model._params()
        probe, cls = torch.randn(2, 8, 4, 4, generator=_gen(99)), torch.tensor([0, 1])
        for got, want in zip(loaded.score(probe, 32, cls), model.score(probe, 32, cls)):
            assert torch.equal(got, want)
    with pytest.raises(StorageError, match="does not exist"):
        PatchCore.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a tensor file")
    with pytest.raises(DataError, match="junk.pt"):
        PatchCore.load(tmp_path / "junk.pt")


# ---------------------------------------------------------------------------- real features


def _images(root, records, size):
    out = []
    for r in records:
        with Image.open(root / r.path) as im:
            out.append(
                np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
            )
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def test_bundled_encoder_features_separate_synthetic_defects(tmp_path):
    from ltad.config import EncoderConfig
    from ltad.data.datasets import read_dataset
    from ltad.data.synth import synthesize
    from ltad.eval.metrics import image_auroc
    from ltad.models.encoder import Encoder

    root = synthesize(
        tmp_path / "synth", classes=4, image_size=96, train_per_class=10, test_per_class=12, seed=0
    )
    ds = read_dataset("synth", root)
    encoder = Encoder(EncoderConfig(image_size=160, grid=10))
    train = encoder.encode_images(_images(root, ds.select("train", 0), 160)).patches
    model = PatchCore(coreset_ratio=0.25, seed=0).fit(train.split(8))
    test = ds.select("test")
    _, scores = model.score(encoder.encode_images(_images(root, test, 160)).patches, 160)
    ids, labels = np.array([r.class_id for r in test]), np.array([r.label for r in test])
    aurocs = [image_auroc(scores[ids == c], labels[ids == c]) for c in range(4)]
    assert np.mean(aurocs) > 0.75, aurocs  # measured 0.882 (seed 0)
