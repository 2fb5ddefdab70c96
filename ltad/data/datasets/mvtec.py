"""MVTec AD layout: `<class>/{train/good,test/good,test/<defect>}/NNN.png` + `ground_truth/<defect>/NNN_mask.png`.

The same walker serves `folder` (a user's own product lines, masks optional) and the synthetic dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

from ltad.data.records import Dataset, build_dataset, is_image
from ltad.errors import DataError

Row = tuple[str, str, str, int, str | None, str]


def check_root(root: str | Path) -> Path:
    """The dataset root as a Path, or a DataError naming it."""
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"dataset root '{root}' does not exist or is not a directory")
    return path


def list_images(directory: Path) -> list[str]:
    """Sorted image file names directly inside `directory` (none if it does not exist)."""
    if not directory.is_dir():
        return []
    return sorted(e.name for e in os.scandir(directory) if e.is_file() and is_image(e.name))


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _mask_index(directory: Path) -> dict[str, str]:
    """Image stem -> mask file name in a ground_truth/<defect> folder (`NNN_mask.png` or `NNN.png`)."""
    index: dict[str, str] = {}
    for name in list_images(directory):
        stem = _stem(name)
        index.setdefault(stem.removesuffix("_mask"), name)
    return index


def class_dirs(root: Path) -> list[str]:
    """Class folders: every sub-folder holding a `train` or `test` folder (so an empty class is caught)."""
    return sorted(
        e.name
        for e in os.scandir(root)
        if e.is_dir() and any((Path(e.path) / sub).is_dir() for sub in ("train", "test"))
    )


def read_class(root: Path, cls: str, require_masks: bool, require_test: bool) -> list[Row]:
    """Rows of one class folder; an empty train/good or a defect without its mask is a DataError."""
    base = root / cls
    train = list_images(base / "train" / "good")
    if not train:
        raise DataError(f"class folder '{base / 'train' / 'good'}' holds no images (expected .png/.jpg/...)")
    rows: list[Row] = [(f"{cls}/train/good/{n}", cls, "train", 0, None, "good") for n in train]
    test_dir = base / "test"
    if not test_dir.is_dir():
        if require_test:
            raise DataError(f"class folder '{base}' has no test folder (expected '{test_dir}')")
        return rows
    for defect in sorted(e.name for e in os.scandir(test_dir) if e.is_dir()):
        names = list_images(test_dir / defect)
        if defect == "good":
            rows += [(f"{cls}/test/good/{n}", cls, "test", 0, None, "good") for n in names]
            continue
        masks = _mask_index(base / "ground_truth" / defect)
        for n in names:
            mask = masks.get(_stem(n))
            if mask is None and require_masks:
                expected = base / "ground_truth" / defect / f"{_stem(n)}_mask.png"
                raise DataError(f"defect image '{test_dir / defect / n}' has no mask (expected '{expected}')")
            mask_path = f"{cls}/ground_truth/{defect}/{mask}" if mask else None
            rows.append((f"{cls}/test/{defect}/{n}", cls, "test", 1, mask_path, defect))
    return rows


def read_tree(root: str | Path, name: str, require_masks: bool = True, require_test: bool = True) -> Dataset:
    """Read every class folder of an MVTec-layout tree."""
    path = check_root(root)
    classes = class_dirs(path)
    if not classes:
        raise DataError(f"dataset root '{root}' has no class folders (expected '<class>/train/good/*.png')")
    rows: list[Row] = []
    for cls in classes:
        rows += read_class(path, cls, require_masks, require_test)
    return build_dataset(name, str(root), rows)


def read_mvtec(root: str | Path) -> Dataset:
    """MVTec AD: every defect image must have its mask."""
    return read_tree(root, "mvtec")
