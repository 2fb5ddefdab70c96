"""Tiny dataset trees of each supported layout, written with PIL into a test's tmp_path.

Every image gets distinct pixel values, so byte-level checks (hashes, shards) can tell files apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

_counter = itertools.count()


def write_image(path: Path, size: int = 16, mode: str = "RGB", fmt: str | None = None) -> Path:
    """A small image with a unique gradient pattern (grayscale when mode is 'L')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    k = next(_counter)
    grid = (np.add.outer(np.arange(size), np.arange(size)) * 7 + k * 13) % 256
    arr = (
        grid.astype(np.uint8)
        if mode == "L"
        else np.stack([grid, (grid + k) % 256, 255 - grid], -1).astype(np.uint8)
    )
    Image.fromarray(arr, mode).save(path, format=fmt)
    return path


def write_mask(path: Path, size: int = 16, value: int = 255) -> Path:
    """A mask with a square of `value` in the middle (VisA label maps use small values like 1, 2)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size, size), np.uint8)
    arr[size // 4 : size // 2, size // 4 : size // 2] = value
    Image.fromarray(arr).save(path)
    return path


def make_mvtec(
    root: Path,
    classes: Sequence[str] = ("bottle", "cable", "wood"),
    train: Sequence[int] = (6, 4, 2),
    test_good: int = 2,
    defects: Sequence[str] = ("crack", "hole"),
    per_defect: int = 1,
    masks: bool = True,
    size: int = 16,
) -> Path:
    """`<class>/{train/good,test/good,test/<defect>}/NNN.png` + `ground_truth/<defect>/NNN_mask.png`."""
    for cls, n_train in zip(classes, train):
        for i in range(n_train):
            write_image(root / cls / "train" / "good" / f"{i:03d}.png", size)
        for i in range(test_good):
            write_image(root / cls / "test" / "good" / f"{i:03d}.png", size)
        for defect in defects:
            for i in range(per_defect):
                write_image(root / cls / "test" / defect / f"{i:03d}.png", size)
                if masks:
                    write_mask(root / cls / "ground_truth" / defect / f"{i:03d}_mask.png", size)
    return root


def make_visa(
    root: Path,
    classes: Sequence[str] = ("candle", "pcb1"),
    train: Sequence[int] = (5, 3),
    test_normal: int = 2,
    test_anomaly: int = 2,
    bom: bool = True,
    size: int = 16,
) -> Path:
    """VisA: `<class>/Data/Images/{Normal,Anomaly}/NNNN.JPG`, label-map masks, `split_csv/1cls.csv`."""
    lines = ["object,split,label,image,mask"]
    for cls, n_train in zip(classes, train):
        for i in range(n_train + test_normal):
            rel = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, size, fmt="JPEG")
            lines.append(f"{cls},{'train' if i < n_train else 'test'},normal,{rel},")
        for i in range(test_anomaly):
            rel, mask = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG", f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / rel, size, fmt="JPEG")
            write_mask(root / mask, size, value=1 + i)
            lines.append(f"{cls},test,anomaly,{rel},{mask}")
    csv = root / "split_csv" / "1cls.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return root


def make_dagm(
    root: Path,
    classes: Sequence[str] = ("Class1", "Class2"),
    normal: Sequence[int] = (4, 3),
    defective: int = 1,
    labels_txt: bool = True,
    size: int = 16,
) -> Path:
    """DAGM 2007: `ClassN/{Train,Test}/NNNN.PNG`, `Label/Labels.txt` and `Label/NNNN_label.PNG`.

    Each split of each class gets `normal` images followed by `defective` ones (Train included).
    """
    for cls, n_normal in zip(classes, normal):
        for folder in ("Train", "Test"):
            base = root / cls / folder
            lines = ["1"]
            for i in range(1, n_normal + defective + 1):
                name = f"{i:04d}.PNG"
                write_image(base / name, size, mode="L", fmt="PNG")
                if i > n_normal:
                    write_mask(base / "Label" / f"{i:04d}_label.PNG", size)
                    lines.append(f"{i}\t1\t{name}\t0\t{i:04d}_label.PNG")
                else:
                    lines.append(f"{i}\t0\t{name}\t0\t0")
            (base / "Label").mkdir(parents=True, exist_ok=True)
            if labels_txt:
                (base / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return root
