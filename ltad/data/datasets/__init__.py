"""Dataset readers: a name and a root in, a `Dataset` of relative-path `Record`s out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ltad.data.datasets.dagm import read_dagm
from ltad.data.datasets.folder import read_folder
from ltad.data.datasets.mvtec import read_mvtec, read_tree
from ltad.data.datasets.visa import read_visa
from ltad.data.records import Dataset
from ltad.data.tree import Tree
from ltad.errors import ConfigError


def read_synth(root: str | Path | Tree) -> Dataset:
    """The output of `ltad synth`: MVTec layout with every mask present."""
    return read_tree(root, "synth")


DATASETS: dict[str, Callable[[str | Path | Tree], Dataset]] = {
    "mvtec": read_mvtec,
    "visa": read_visa,
    "dagm": read_dagm,
    "folder": read_folder,
    "synth": read_synth,
}


def read_dataset(name: str, root: str | Path | Tree) -> Dataset:
    """Read the dataset `name` ({mvtec, visa, dagm, folder, synth}) at `root`."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}' (expected one of {', '.join(DATASETS)})")
    return DATASETS[name](root)
