"""A user's own product lines in MVTec layout: masks optional, test folders optional."""

from __future__ import annotations

from pathlib import Path

from ltad.data.datasets.mvtec import read_tree
from ltad.data.records import Dataset
from ltad.data.tree import Tree


def read_folder(root: str | Path | Tree) -> Dataset:
    """Like MVTec, but a defect image may lack a mask (mask_path None) and a class may lack test/."""
    return read_tree(root, "folder", require_masks=False, require_test=False)
