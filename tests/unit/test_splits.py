"""Long-tailed split profiles, the split file, published-split readers and `ltad split`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from ltad.cli import main
from ltad.data.datasets import read_dataset
from ltad.data.records import build_dataset
from ltad.data.splits import make_split, profile_counts, read_split, val_count
from ltad.errors import ConfigError, DataError
from tests.helpers.trees import make_mvtec

CLASSES = ("a", "b", "c", "d", "e", "f")
AVAILABLE = (20, 15, 12, 9, 6, 6)
MVTEC = {
    "bottle": 209, "cable": 224, "capsule": 219, "carpet": 280, "grid": 264, "hazelnut": 391, "leather": 245,
    "metal_nut": 220, "pill": 267, "screw": 320, "tile": 230, "toothbrush": 60, "transistor": 213,
    "wood": 247, "zipper": 240,
}  # fmt: skip


@pytest.fixture
def dataset(tmp_path):
    return read_dataset(
        "mvtec", make_mvtec(tmp_path / "ds", classes=CLASSES, train=AVAILABLE, test_good=1, per_defect=1)
    )


@pytest.mark.parametrize(
    ("profile", "n_max", "classes", "ratio", "expected"),
    [
        ("exp", 100, 5, 10, [100, 56, 31, 17, 10]),  # 100 * 10^(-c/4): 56.2, 31.6, 17.8, 10
        ("step", 100, 5, 10, [100, 100, 10, 10, 10]),  # C//2 = 2 head classes
        ("pareto", 100, 5, 10, [100, 37, 20, 13, 10]),  # a = ln10/ln5 = 1.4307: 2^-a = .372, 3^-a = .208
        ("exp", 10, 3, 100, [10, 1, 1]),  # 10 * 100^-0.5 = 1; 0.1 is raised to 1
        ("step", 391, 4, 200, [391, 391, 1, 1]),  # 391 / 200 = 1.955
        ("full", 7, 3, None, [7, 7, 7]),
        ("exp", 9, 1, 100, [9]),
    ],
)
def test_profile_counts(profile, n_max, classes, ratio, expected):
    assert profile_counts(profile, n_max, classes, ratio) == expected


def test_make_split_counts_and_availability(dataset):
    split = make_split(dataset, "exp", 4, seed=3)
    # n_max = 20, C = 6: 20 * 4^(-c/5) = 20, 15.2, 11.5, 8.7, 6.6, 5
    assert [split.counts[c] for c in split.class_order] == [20, 15, 11, 8, 6, 5]
    available = dict(zip(CLASSES, AVAILABLE))
    assert split.class_order[0] == "a" and all(split.counts[c] <= available[c] for c in CLASSES)
    for cls in CLASSES:
        paths = split.train_paths[cls]
        assert len(paths) == len(set(paths)) == split.counts[cls]
        assert all(p.startswith(f"{cls}/train/good/") for p in paths)
    records = split.train_records(dataset)
    assert len(records) == sum(split.counts.values()) and records[0].class_name == "a"
    assert all(r.split == "train" and r.label == 0 for r in records)


def test_seeded_determinism(dataset):
    a, b = make_split(dataset, "pareto", 5, seed=1), make_split(dataset, "pareto", 5, seed=1)
    assert a.to_json() == b.to_json() and a.sha256 == b.sha256
    others = [make_split(dataset, "pareto", 5, seed=s) for s in range(2, 6)]
    assert any(o.train_paths != a.train_paths for o in others)
    assert len({o.class_order for o in others + [a]}) > 1


def test_availability_error(tmp_path):
    ds = read_dataset("mvtec", make_mvtec(tmp_path, classes=("x", "y", "z"), train=(20, 4, 4)))
    with pytest.raises(DataError, match="rank 1 needs 14 normal training images.*has only 4"):
        make_split(ds, "exp", 2, n_max=20)  # 20 * 2^-0.5 = 14.1
    with pytest.raises(DataError, match="rank 0 needs 21 .*'x' has only 20"):
        make_split(ds, "exp", 2, n_max=21)
    with pytest.raises(ConfigError, match="n_max must be an int >= 1, got 0"):
        make_split(ds, "exp", 2, n_max=0)
    # by default the head count drops to the largest every rank can supply: 7, 7 * 2^-0.5 = 4.9, 3.5
    assert [make_split(ds, "exp", 2).counts[c] for c in ("x", "y", "z")] == [7, 4, 3]


def _in_memory(counts):
    rows = [
        (f"{c}/train/good/{i:03d}.png", c, "train", 0, None, "good")
        for c, n in counts.items()
        for i in range(n)
    ]
    return build_dataset("mvtec", "/nowhere", rows)


def test_mvtec_benchmark_counts():
    ds = _in_memory(MVTEC)
    exp = make_split(ds, "exp", 100)
    assert [exp.counts[c] for c in exp.class_order] == [
        391,
        281,
        202,
        145,
        104,
        75,
        54,
        39,
        28,
        20,
        14,
        10,
        7,
        5,
        3,
    ]
    assert exp.class_order[:2] == ("hazelnut", "screw")  # the only classes holding 391 and >= 281
    step = make_split(ds, "step", 100)  # 7 head classes need the same count: the 7th largest, 245
    assert [step.counts[c] for c in step.class_order] == [245] * 7 + [2] * 8
    assert make_split(ds, "pareto", 200).counts[exp.class_order[0]] == 391
    for ratio in (10, 50, 100, 200):
        for profile in ("exp", "step", "pareto"):
            split = make_split(ds, profile, ratio, seed=ratio)
            assert all(split.counts[c] <= MVTEC[c] for c in MVTEC) and min(split.counts.values()) >= 1


@pytest.mark.parametrize("ratio", [1, 0.5, -3, float("nan"), "10", None, True])
def test_ratio_must_exceed_one(dataset, ratio):
    with pytest.raises(ConfigError, match="split ratio must be a number > 1"):
        make_split(dataset, "exp", ratio)


def test_full_and_unknown_profile(dataset):
    full = make_split(dataset, "full", None)
    assert full.ratio == 1.0 and full.counts == dict(zip(CLASSES, AVAILABLE)) and full.class_order[0] == "a"
    with pytest.raises(ConfigError, match="'zipf'"):
        make_split(dataset, "zipf", 10)


def test_group_of_thirds(dataset):
    split = make_split(dataset, "exp", 4)
    groups = [split.group_of(c) for c in split.class_order]
    assert groups == ["head", "head", "medium", "medium", "tail", "tail"]
    with pytest.raises(DataError, match="'nope'"):
        split.group_of("nope")


def test_save_and_read_back(dataset, tmp_path):
    split = make_split(dataset, "pareto", 4, seed=7)
    path = split.save(tmp_path / "out" / "split.json")
    assert [split.counts[c] for c in split.class_order] == [20, 11, 8, 6, 5, 5]  # a = ln4/ln6
    assert hashlib.sha256(path.read_bytes()).hexdigest() == split.sha256
    doc = json.loads(path.read_text())
    assert doc["format"] == "ltad-split/1" and doc["class_order"] == list(split.class_order)
    assert read_split(path, dataset) == split


def _normal_paths(dataset, n=2):
    return {c: [r.path for r in rs[:n]] for c, rs in dataset.train_normals().items()}


def test_published_formats(dataset, tmp_path):
    paths = _normal_paths(dataset)
    flat = [p for ps in paths.values() for p in ps]
    uniad = tmp_path / "train.json"
    uniad.write_text(
        "".join(json.dumps({"filename": p, "label": 0, "clsname": p.split("/")[0]}) + "\n" for p in flat)
    )
    (tmp_path / "list.txt").write_text("\n".join("./" + p for p in flat) + "\n")
    (tmp_path / "list.json").write_text(json.dumps(flat))
    (tmp_path / "map.json").write_text(json.dumps(paths))
    for name in ("train.json", "list.txt", "list.json", "map.json"):
        split = read_split(tmp_path / name, dataset)
        assert split.profile == "published" and split.seed is None and split.ratio == 1.0, name
        assert {c: list(ps) for c, ps in split.train_paths.items()} == paths, name
        assert split.counts == dict.fromkeys(CLASSES, 2), name


def test_published_validation_errors(dataset, tmp_path):
    flat = [p for ps in _normal_paths(dataset).values() for p in ps]
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(flat + ["a/train/good/999.png"]))
    with pytest.raises(DataError, match=r"bad.txt': 'a/train/good/999.png' does not exist"):
        read_split(bad, dataset)
    bad.write_text("\n".join(["a/test/crack/000.png"] + flat))
    with pytest.raises(DataError, match=r"'a/test/crack/000.png' is not a normal training image"):
        read_split(bad, dataset)
    bad.write_text("\n".join(flat[2:]))
    with pytest.raises(DataError, match="no training image for class 'a'"):
        read_split(bad, dataset)
    bad.write_text(json.dumps({"filename": flat[0], "clsname": "b"}) + "\n")
    with pytest.raises(DataError, match="listed as class 'b'"):
        read_split(bad, dataset)
    for content in ("42", json.dumps({"a": "not a list"}), json.dumps([1, 2])):
        bad.write_text(content)
        with pytest.raises(DataError, match=r"bad.txt' has an unknown format"):
            read_split(bad, dataset)
    bad.write_text(json.dumps({"format": "other/9", "train": {}}))
    with pytest.raises(DataError, match="format 'other/9'"):
        read_split(bad, dataset)
    with pytest.raises(DataError, match=r"missing.json' cannot be read"):
        read_split(tmp_path / "missing.json", dataset)


def test_cli_split(dataset, tmp_path, capsys):
    out = tmp_path / "s.json"
    args = ["split", "--dataset", "mvtec", "--root", dataset.root, "--profile", "exp", "--out", str(out)]
    assert main([*args, "--ratio", "4", "--seed", "2"]) == 0
    assert read_split(out, dataset) == make_split(dataset, "exp", 4, seed=2, val_fraction=0.1)
    capsys.readouterr()
    for extra, key in (
        (["--ratio", "1"], "ratio"),
        (["--ratio", "ten"], "--ratio"),
        ([], "--ratio"),
        (["--ratio", "4", "--n-max", "99"], "needs 99"),
    ):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and key in err and "Traceback" not in err


def test_cli_exit_code_in_a_process(tmp_path):
    cmd = [sys.executable, "-m", "ltad.cli", "split", "--dataset", "dagm", "--root", str(tmp_path / "none")]
    proc = subprocess.run(
        [*cmd, "--profile", "full", "--out", str(tmp_path / "s.json")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and str(tmp_path / "none") in proc.stderr


def test_val_reserves_held_out_normals_and_keeps_one_for_training(dataset, tmp_path):
    """Each class's share loses round-half-up val_fraction to validation, never its last image."""
    plain = make_split(dataset, "exp", 4, seed=3)
    split = make_split(dataset, "exp", 4, seed=3, val_fraction=0.3)
    for cls in split.class_order:
        share = plain.train_paths[cls]
        val = split.val_paths.get(cls, ())
        assert len(val) == val_count(len(share), 0.3) and split.counts[cls] == len(share) - len(val) >= 1
        assert set(split.train_paths[cls]) | set(val) == set(share)
        assert not set(val) & set(split.train_paths[cls])
    assert sum(len(v) for v in split.val_paths.values()) > 0
    assert (
        val_count(1, 0.9) == 0
        and val_count(2, 0.5) == 1
        and val_count(10, 0.1) == 1
        and val_count(4, 0.1) == 0
    )
    # recorded in the file and read back; the held-out records are normal training images of their class
    path = split.save(tmp_path / "split.json")
    doc = json.loads(path.read_text())
    assert doc["val_fraction"] == 0.3 and {c: len(v) for c, v in doc["val"].items() if v} == {
        c: len(v) for c, v in split.val_paths.items()
    }
    back = read_split(path, dataset)
    assert back == split and back.sha256 == split.sha256
    assert all(r.label == 0 for r in back.val_records(dataset))
    # a file without val reads as no validation (older files keep their bytes and hash)
    assert (
        "val" not in plain.to_dict() and read_split(plain.save(tmp_path / "p.json"), dataset).val_paths == {}
    )
    with pytest.raises(ConfigError, match="val_fraction"):
        make_split(dataset, "exp", 4, val_fraction=1.0)


def test_val_path_listed_for_training_too_is_an_error(dataset, tmp_path):
    split = make_split(dataset, "exp", 4, seed=3, val_fraction=0.3)
    doc = split.to_dict()
    cls = next(iter(split.val_paths))
    doc["val"][cls].append(doc["train"][cls][0])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="also listed for training"):
        read_split(path, dataset)
