"""VisA: `split_csv/1cls.csv` (object,split,label,image,mask; maybe a UTF-8 BOM) or an MVTec-like tree.

Masks are label maps (any value > 0 is a defect); consumers binarise them. The CSV names no defect
types, so anomalies get defect_type 'anomaly'.
"""

from __future__ import annotations

import csv
import io
import posixpath
from pathlib import Path

from ltad.data.datasets.mvtec import Row, check_root, read_tree
from ltad.data.records import Dataset, build_dataset
from ltad.data.tree import Tree
from ltad.errors import DataError

CSV = "split_csv/1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": 0, "anomaly": 1}


def _rows(tree: Tree) -> list[Row]:
    csv_path = tree.uri(CSV)
    try:
        table = list(csv.DictReader(io.StringIO(tree.read_text(CSV, encoding="utf-8-sig"), newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"VisA split file '{csv_path}' cannot be read: {exc}") from None
    if not table:
        raise DataError(f"VisA split file '{csv_path}' has no rows")
    missing = [c for c in COLUMNS if c not in table[0]]
    if missing:
        raise DataError(
            f"VisA split file '{csv_path}' lacks column '{missing[0]}' (expected {', '.join(COLUMNS)})"
        )
    rows: list[Row] = []
    for line, row in enumerate(table, start=2):
        where = f"VisA split file '{csv_path}' line {line}"
        split, label = (row["split"] or "").strip(), (row["label"] or "").strip()
        if split not in ("train", "test"):
            raise DataError(f"{where}: split must be 'train' or 'test', got {split!r}")
        if label not in LABELS:
            raise DataError(f"{where}: label must be 'normal' or 'anomaly', got {label!r}")
        image, mask = _rel(row["image"]), _rel(row["mask"]) or None
        cls = (row["object"] or "").strip()
        if not cls or not image:
            raise DataError(f"{where}: 'object' and 'image' must not be empty")
        if not tree.is_file(image):
            raise DataError(f"{where}: image '{tree.uri(image)}' does not exist")
        if LABELS[label] == 1:
            if mask is None or not tree.is_file(mask):
                raise DataError(f"{where}: anomalous image '{tree.uri(image)}' has no mask file ({mask!r})")
        else:
            mask = None
        defect = "anomaly" if LABELS[label] else "good"
        rows.append((image, cls, split, LABELS[label], mask, defect))
    return rows


def _rel(value: str | None) -> str:
    """A CSV path as the listing names it: POSIX, normalised, relative ('' stays '')."""
    text = (value or "").strip().replace("\\", "/")
    return posixpath.normpath(text).lstrip("/") if text else ""


def read_visa(root: str | Path | Tree) -> Dataset:
    """VisA from its 1cls.csv when present, otherwise as an MVTec-like tree (local or s3://)."""
    tree = check_root(root)
    if not tree.is_file(CSV):
        return read_tree(tree, "visa")
    rows = _rows(tree)
    for cls in sorted({r[1] for r in rows}):
        if not any(r[1] == cls and r[2] == "train" and r[3] == 0 for r in rows):
            raise DataError(
                f"VisA split file '{tree.uri(CSV)}' lists no normal training image for class '{cls}'"
            )
    return build_dataset("visa", tree.root, rows)
