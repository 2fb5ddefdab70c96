"""Dataset readers on tiny generated trees of each layout, and the messages bad trees produce."""

from __future__ import annotations

import pytest

from ltad.data.datasets import DATASETS, read_dataset
from ltad.errors import ConfigError, DataError
from tests.helpers.trees import make_dagm, make_mvtec, make_visa, write_image, write_mask


def test_mvtec_records(tmp_path):
    ds = read_dataset("mvtec", make_mvtec(tmp_path))
    assert ds.name == "mvtec" and ds.classes == ("bottle", "cable", "wood")
    assert len(ds.records) == 12 + 3 * (2 + 2)
    assert {c: len(rs) for c, rs in ds.train_normals().items()} == {"bottle": 6, "cable": 4, "wood": 2}
    hole = next(r for r in ds.records if r.path == "cable/test/hole/000.png")
    assert (hole.class_name, hole.class_id, hole.split, hole.label) == ("cable", 1, "test", 1)
    assert (hole.mask_path, hole.defect_type) == ("cable/ground_truth/hole/000_mask.png", "hole")
    good = next(r for r in ds.records if r.path == "wood/test/good/001.png")
    assert (good.class_id, good.label, good.mask_path, good.defect_type) == (2, 0, None, "good")
    assert all(not r.path.startswith("/") and "\\" not in r.path for r in ds.records)
    assert all((tmp_path / r.path).is_file() for r in ds.records)


def test_image_extensions_are_case_insensitive(tmp_path):
    make_mvtec(tmp_path, classes=("a",), train=(1,))
    for name in ("x.PNG", "y.Jpg", "z.JPEG", "w.bmp", "v.TIF"):
        fmt = {"PNG": "PNG", "JPG": "JPEG", "JPEG": "JPEG", "BMP": "BMP", "TIF": "TIFF"}[
            name.split(".")[1].upper()
        ]
        write_image(tmp_path / "a" / "train" / "good" / name, fmt=fmt)
    (tmp_path / "a" / "train" / "good" / "notes.txt").write_text("not an image")
    assert len(read_dataset("mvtec", tmp_path).train_normals()["a"]) == 6


def test_mvtec_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        read_dataset("mvtec", tmp_path / "nowhere")
    with pytest.raises(DataError, match="no class folders"):
        read_dataset("mvtec", tmp_path)
    make_mvtec(tmp_path / "a", classes=("bottle", "cable"), train=(2, 0))
    with pytest.raises(DataError, match=r"cable/train/good' holds no images"):
        read_dataset("mvtec", tmp_path / "a")
    root = make_mvtec(tmp_path / "b", classes=("bottle",), train=(2,))
    (root / "bottle" / "ground_truth" / "hole" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"bottle/test/hole/000.png' has no mask"):
        read_dataset("mvtec", root)
    with pytest.raises(ConfigError, match="'imagenet'"):
        read_dataset("imagenet", root)
    assert set(DATASETS) >= {"mvtec", "visa", "dagm", "folder"}


def test_folder_allows_missing_masks_and_test(tmp_path):
    root = make_mvtec(tmp_path, classes=("line_a", "line_b"), train=(3, 2), masks=False)
    ds = read_dataset("folder", root)
    defects = ds.select("test", 1)
    assert len(defects) == 4 and all(r.mask_path is None for r in defects)
    write_image(tmp_path / "line_c" / "train" / "good" / "000.png")
    ds = read_dataset("folder", root)
    assert ds.classes == ("line_a", "line_b", "line_c") and not [
        r for r in ds.records if r.class_name == "line_c" and r.split == "test"
    ]


@pytest.mark.parametrize("bom", [True, False])
def test_visa_csv(tmp_path, bom):
    ds = read_dataset("visa", make_visa(tmp_path, bom=bom))
    assert ds.classes == ("candle", "pcb1")
    assert {c: len(rs) for c, rs in ds.train_normals().items()} == {"candle": 5, "pcb1": 3}
    bad = ds.select("test", 1)
    assert len(bad) == 4 and all(r.mask_path and (tmp_path / r.mask_path).is_file() for r in bad)
    assert all(r.defect_type == "anomaly" for r in bad)
    assert len(ds.select("test", 0)) == 4 and all(r.mask_path is None for r in ds.select(label=0))


def test_visa_errors(tmp_path):
    root = make_visa(tmp_path / "a")
    csv = root / "split_csv" / "1cls.csv"
    csv.write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(DataError, match=r"1cls.csv' cannot be read"):
        read_dataset("visa", root)
    csv.write_text("object,split,image,mask\ncandle,train,a.JPG,\n")
    with pytest.raises(DataError, match="lacks column 'label'"):
        read_dataset("visa", root)
    root = make_visa(tmp_path / "b")
    csv = root / "split_csv" / "1cls.csv"
    lines = csv.read_text(encoding="utf-8-sig").splitlines()
    anomaly = next(i for i, ln in enumerate(lines) if ",anomaly," in ln)
    lines[anomaly] = lines[anomaly].rsplit(",", 1)[0] + ","
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line \d+: anomalous image .*Anomaly/000.JPG' has no mask"):
        read_dataset("visa", root)


def test_visa_mvtec_like_tree(tmp_path):
    ds = read_dataset("visa", make_mvtec(tmp_path, classes=("pcb1", "pcb2"), train=(2, 2)))
    assert ds.name == "visa" and ds.classes == ("pcb1", "pcb2") and len(ds.select("test", 1)) == 4


@pytest.mark.parametrize("labels_txt", [True, False])
def test_dagm(tmp_path, labels_txt):
    ds = read_dataset("dagm", make_dagm(tmp_path, labels_txt=labels_txt))
    assert ds.classes == ("Class1", "Class2")
    assert {c: len(rs) for c, rs in ds.train_normals().items()} == {"Class1": 4, "Class2": 3}
    train_bad = [r for r in ds.records if r.split == "train" and r.label == 1]
    assert [r.path for r in train_bad] == ["Class1/Train/0005.PNG", "Class2/Train/0004.PNG"]
    assert train_bad[0].mask_path == "Class1/Train/Label/0005_label.PNG"
    assert len(ds.select("test", 1)) == 2 and len(ds.select("test", 0)) == 7


def test_dagm_errors(tmp_path):
    root = make_dagm(tmp_path / "a")
    (root / "Class2" / "Test" / "Label" / "0004_label.PNG").unlink()
    with pytest.raises(DataError, match=r"Class2/Test/0004.PNG' has no mask"):
        read_dataset("dagm", root)
    root = make_dagm(tmp_path / "b", classes=("Class1",), normal=(0,))
    with pytest.raises(DataError, match=r"Class1/Train' holds no normal training images"):
        read_dataset("dagm", root)
    root = make_dagm(tmp_path / "c", classes=("Class1",))
    (root / "Class1" / "Train" / "Label" / "Labels.txt").write_text("1\n1\tmaybe\t0001.PNG\t0\t0\n")
    with pytest.raises(DataError, match=r"Labels.txt' line 2"):
        read_dataset("dagm", root)
    write_mask(tmp_path / "d" / "x.png")
    with pytest.raises(DataError, match="no DAGM class folders"):
        read_dataset("dagm", tmp_path / "d")
