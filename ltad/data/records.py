"""One image of a dataset (`Record`) and a whole dataset (`Dataset`): the readers' common output.

Every reader returns these, so shards, splits and evaluation never look at a dataset's layout.
Paths are POSIX and relative to the root, so a dataset can move between machines.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def is_image(name: str) -> bool:
    """Image files by extension, case-insensitive (DAGM ships `.PNG`, VisA `.JPG`)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Record:
    path: str  # POSIX path relative to the dataset root
    class_name: str
    class_id: int  # index of class_name in sorted(class names): deterministic
    split: str  # "train" | "test"
    label: int  # 0 normal, 1 anomalous
    mask_path: str | None  # relative to the root; None for normal images
    defect_type: str  # "good" for normal images


@dataclass(frozen=True)
class Dataset:
    name: str  # mvtec | visa | dagm | folder | synth
    root: str
    classes: tuple[str, ...]  # sorted; class_id = index
    records: tuple[Record, ...]

    def select(self, split: str | None = None, label: int | None = None) -> list[Record]:
        """Records of one split and/or label, in dataset order."""
        return [
            r
            for r in self.records
            if (split is None or r.split == split) and (label is None or r.label == label)
        ]

    def train_normals(self) -> dict[str, list[Record]]:
        """Normal training images per class (every class present, possibly empty)."""
        out: dict[str, list[Record]] = {c: [] for c in self.classes}
        for r in self.select("train", 0):
            out[r.class_name].append(r)
        return out


def build_dataset(
    name: str, root: str, rows: Iterable[tuple[str, str, str, int, str | None, str]]
) -> Dataset:
    """Assign sorted class ids to rows (path, class, split, label, mask, defect) and sort by path."""
    rows = list(rows)
    classes = tuple(sorted({row[1] for row in rows}))
    index = {c: i for i, c in enumerate(classes)}
    records = tuple(
        sorted(
            (Record(p, c, index[c], s, lab, m, d) for p, c, s, lab, m, d in rows),
            key=lambda r: (r.class_id, r.split, r.path),
        )
    )
    return Dataset(name=name, root=root, classes=classes, records=records)
