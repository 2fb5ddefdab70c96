"""The offline synthetic dataset: layout, determinism, masks, visible defects, and `ltad synth`."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from ltad.cli import main
from ltad.data.datasets import read_dataset
from ltad.data.synth import DEFECT_FNS, MAX_CLASSES, SOURCES, _source, _view, class_name, synthesize
from ltad.errors import ConfigError, DataError

SMALL = {"classes": 6, "image_size": 48, "train_per_class": 3, "test_per_class": 8}


def tree_hash(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "default")


def test_default_layout(default_root):
    ds = read_dataset("synth", default_root)
    assert ds.classes == tuple(sorted(SOURCES[:8]))
    assert {c: len(rs) for c, rs in ds.train_normals().items()} == dict.fromkeys(ds.classes, 60)
    for cls in ds.classes:
        test = [r for r in ds.select("test") if r.class_name == cls]
        assert len(test) == 24 and sum(r.label for r in test) == 12
        assert {r.defect_type for r in test if r.label} == {"texture", "scratch", "cutpaste", "stain"}


def test_masks_nonempty_binary_and_inside_image(default_root):
    ds = read_dataset("synth", default_root)
    for r in ds.select("test", 1):
        image = Image.open(default_root / r.path)
        mask = np.asarray(Image.open(default_root / r.mask_path))
        assert image.size == (128, 128) and mask.shape == (128, 128), r.path
        assert set(np.unique(mask)) == {0, 255}, r.mask_path
        assert 0.001 < (mask > 0).mean() < 0.2, r.mask_path


def test_normal_views_vary(default_root):
    arrays = [
        np.asarray(Image.open(default_root / "camera" / "train" / "good" / f"{i:03d}.png"), float)
        for i in range(4)
    ]
    assert all(np.abs(arrays[0] - a).mean() > 2 for a in arrays[1:])


def test_deterministic_by_seed(tmp_path):
    a = tree_hash(synthesize(tmp_path / "a", seed=5, **SMALL))
    assert tree_hash(synthesize(tmp_path / "b", seed=5, **SMALL)) == a
    assert tree_hash(synthesize(tmp_path / "c", seed=6, **SMALL)) != a


@pytest.mark.parametrize("defect", sorted(DEFECT_FNS))
def test_defects_visible_inside_mask_only(defect):
    src, _ = _source(SOURCES.index("camera"), 74)
    other, _ = _source(SOURCES.index("brick"), 74)
    for i in range(5):
        rng = np.random.default_rng(i)
        clean = _view(src, rng, 64)
        img, mask = DEFECT_FNS[defect](clean.copy(), rng, 64, other)
        assert img.shape == clean.shape and mask.shape == (64, 64) and mask.any()
        assert np.array_equal(img[~mask], clean[~mask])
        assert np.abs(img[mask] - clean[mask]).mean() > 0.04, (defect, i)


def test_every_source_is_bundled_offline():
    assert len(SOURCES) >= 12
    for k, name in enumerate(SOURCES):
        img, _ = _source(k, 40)
        assert img.shape == (40, 40, 3) and img.std() > 0.02, name


def test_hundreds_of_distinct_classes_from_procedural_variants(tmp_path):
    """Classes beyond the bundled sources are variants: named apart, deterministic, visibly different."""
    names = [class_name(k) for k in range(300)]
    assert len(set(names)) == 300 and names[: len(SOURCES)] == list(SOURCES)
    assert names[len(SOURCES)] == f"{SOURCES[0]}-v01"
    base = _source(0, 32)[0]
    variants = [_source(k, 32)[0] for k in range(len(SOURCES), 6 * len(SOURCES), len(SOURCES))]
    for v in variants:  # every variant of source 0 differs from it and from the others
        assert np.abs(v - base).mean() > 0.03
    for i, a in enumerate(variants):
        for b in variants[i + 1 :]:
            assert np.abs(a - b).mean() > 0.03
    assert np.array_equal(_source(40, 32)[0], _source(40, 32)[0])
    root = synthesize(tmp_path / "many", classes=40, image_size=32, train_per_class=1, test_per_class=2)
    ds = read_dataset("synth", root)
    assert len(ds.classes) == 40 and f"{SOURCES[5]}-v02" in ds.classes


def test_reuse_and_refusals(tmp_path):
    root = synthesize(tmp_path / "s", **SMALL)
    marker = (root / "synth.json").stat().st_mtime_ns
    assert synthesize(tmp_path / "s", **SMALL) == root and (root / "synth.json").stat().st_mtime_ns == marker
    with pytest.raises(DataError, match=r"'.*/s' exists and is not empty"):
        synthesize(tmp_path / "s", seed=1, **SMALL)
    with pytest.raises(ConfigError, match="--classes"):
        synthesize(tmp_path / "t", classes=MAX_CLASSES + 1)
    assert not (tmp_path / "t").exists() and not list(tmp_path.glob(".t.tmp-*"))


def test_cli(tmp_path, capsys):
    args = ["synth", "--out", str(tmp_path / "d"), "--classes", "2", "--image-size", "32"]
    assert main([*args, "--train-per-class", "2", "--test-per-class", "2"]) == 0
    assert len(read_dataset("synth", tmp_path / "d").records) == 8
    capsys.readouterr()
    assert main([*args, "--test-per-class", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--test-per-class" in err
