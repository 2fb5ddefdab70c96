"""MVTec AD layout: `<class>/{train/good,test/good,test/<defect>}/NNN.png` + `ground_truth/<defect>/NNN_mask.png`.

The same walker serves `folder` (a user's own product lines, masks optional) and the synthetic dataset.
Folders are looked up in the root's listing (`ltad.data.tree`), so a local tree and an s3:// prefix
read the same way.
"""

from __future__ import annotations

from pathlib import Path

from ltad.data.records import Dataset, build_dataset, is_image
from ltad.data.tree import Tree, as_tree
from ltad.errors import DataError

Row = tuple[str, str, str, int, str | None, str]


def check_root(root: str | Path | Tree) -> Tree:
    """The dataset root's listing, or a DataError naming it (no directory, or an empty S3 prefix)."""
    return as_tree(root)


def list_images(tree: Tree, folder: str) -> list[str]:
    """Sorted image file names directly inside `folder` (none if it does not exist)."""
    return [n for n in tree.names(folder) if is_image(n)]


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _mask_index(tree: Tree, folder: str) -> dict[str, str]:
    """Image stem -> mask file name in a ground_truth/<defect> folder (`NNN_mask.png` or `NNN.png`)."""
    index: dict[str, str] = {}
    for name in list_images(tree, folder):
        stem = _stem(name)
        index.setdefault(stem.removesuffix("_mask"), name)
    return index


def class_dirs(tree: Tree) -> list[str]:
    """Class folders: every sub-folder holding a `train` or `test` folder (so an empty class is caught)."""
    return [d for d in tree.dirs() if any(tree.is_dir(f"{d}/{sub}") for sub in ("train", "test"))]


def read_class(tree: Tree, cls: str, require_masks: bool, require_test: bool) -> list[Row]:
    """Rows of one class folder; an empty train/good or a defect without its mask is a DataError."""
    train = list_images(tree, f"{cls}/train/good")
    if not train:
        raise DataError(
            f"class folder '{tree.uri(f'{cls}/train/good')}' holds no images (expected .png/.jpg/...)"
        )
    rows: list[Row] = [(f"{cls}/train/good/{n}", cls, "train", 0, None, "good") for n in train]
    test_dir = f"{cls}/test"
    if not tree.is_dir(test_dir):
        if require_test:
            raise DataError(
                f"class folder '{tree.uri(cls)}' has no test folder (expected '{tree.uri(test_dir)}')"
            )
        return rows
    for defect in tree.dirs(test_dir):
        names = list_images(tree, f"{test_dir}/{defect}")
        if defect == "good":
            rows += [(f"{cls}/test/good/{n}", cls, "test", 0, None, "good") for n in names]
            continue
        masks = _mask_index(tree, f"{cls}/ground_truth/{defect}")
        for n in names:
            mask = masks.get(_stem(n))
            if mask is None and require_masks:
                expected = tree.uri(f"{cls}/ground_truth/{defect}/{_stem(n)}_mask.png")
                raise DataError(
                    f"defect image '{tree.uri(f'{test_dir}/{defect}/{n}')}' has no mask (expected '{expected}')"
                )
            mask_path = f"{cls}/ground_truth/{defect}/{mask}" if mask else None
            rows.append((f"{cls}/test/{defect}/{n}", cls, "test", 1, mask_path, defect))
    return rows


def read_tree(
    root: str | Path | Tree, name: str, require_masks: bool = True, require_test: bool = True
) -> Dataset:
    """Read every class folder of an MVTec-layout tree (a local directory or an s3:// prefix)."""
    tree = check_root(root)
    classes = class_dirs(tree)
    if not classes:
        raise DataError(
            f"dataset root '{tree.root}' has no class folders (expected '<class>/train/good/*.png')"
        )
    rows: list[Row] = []
    for cls in classes:
        rows += read_class(tree, cls, require_masks, require_test)
    return build_dataset(name, tree.root, rows)


def read_mvtec(root: str | Path | Tree) -> Dataset:
    """MVTec AD: every defect image must have its mask."""
    return read_tree(root, "mvtec")
