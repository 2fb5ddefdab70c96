"""DAGM 2007: `ClassN/{Train,Test}/NNNN.PNG` with `Label/Labels.txt` and `Label/NNNN_label.PNG`.

DAGM's Train folders hold defective images too: they keep split 'train' with label 1, so they are
never counted as training normals. Labels.txt lines read `id flag image 0 mask-or-0`; when the file
is absent, a `Label/<stem>_label.*` image marks a defect.
"""

from __future__ import annotations

from pathlib import Path

from ltad.data.datasets.mvtec import Row, check_root, list_images
from ltad.data.records import Dataset, build_dataset, is_image
from ltad.data.tree import Tree
from ltad.errors import DataError

SPLITS = {"Train": "train", "Test": "test"}


def _labels(tree: Tree, label_dir: str) -> dict[str, str | None]:
    """Image name -> mask name (None for a normal image) from Labels.txt or the label images."""
    txt = tree.uri(f"{label_dir}/Labels.txt")
    if not tree.is_file(f"{label_dir}/Labels.txt"):
        return {n.replace("_label", ""): n for n in list_images(tree, label_dir)}
    out: dict[str, str | None] = {}
    try:
        lines = tree.read_text(f"{label_dir}/Labels.txt").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"DAGM label file '{txt}' cannot be read: {exc}") from None
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if len(tokens) < 3:
            continue
        if tokens[1] not in ("0", "1") or not is_image(tokens[2]):
            raise DataError(
                f"DAGM label file '{txt}' line {number} must read 'id flag image 0 mask', got {line!r}"
            )
        mask = next((t for t in tokens[3:] if is_image(t)), None) if tokens[1] == "1" else None
        if tokens[1] == "1" and mask is None:
            stem = tokens[2].rsplit(".", 1)[0]
            mask = next((n for n in list_images(tree, label_dir) if n.startswith(f"{stem}_label.")), None)
            if mask is None:
                raise DataError(
                    f"DAGM label file '{txt}' line {number}: defect image {tokens[2]} has no mask"
                )
        out[tokens[2]] = mask
    return out


def _read_class(tree: Tree, cls: str) -> list[Row]:
    rows: list[Row] = []
    for folder, split in SPLITS.items():
        directory = f"{cls}/{folder}"
        labels = _labels(tree, f"{directory}/Label")
        for name in list_images(tree, directory):
            mask = labels.get(name)
            if mask is not None and not tree.is_file(f"{directory}/Label/{mask}"):
                raise DataError(
                    f"defect image '{tree.uri(f'{directory}/{name}')}' has no mask "
                    f"(expected '{tree.uri(f'{directory}/Label/{mask}')}')"
                )
            label, mask_path = (1, f"{cls}/{folder}/Label/{mask}") if mask else (0, None)
            rows.append(
                (f"{cls}/{folder}/{name}", cls, split, label, mask_path, "defect" if label else "good")
            )
    if not any(r[2] == "train" and r[3] == 0 for r in rows):
        raise DataError(f"DAGM class folder '{tree.uri(f'{cls}/Train')}' holds no normal training images")
    return rows


def read_dagm(root: str | Path | Tree) -> Dataset:
    """Every `Class*` folder (any folder with Train/) of a DAGM 2007 root (local or s3://)."""
    tree = check_root(root)
    classes = [d for d in tree.dirs() if tree.is_dir(f"{d}/Train")]
    if not classes:
        raise DataError(
            f"dataset root '{tree.root}' has no DAGM class folders (expected 'Class1/Train/*.PNG')"
        )
    rows: list[Row] = []
    for cls in classes:
        rows += _read_class(tree, cls)
    return build_dataset("dagm", tree.root, rows)
