"""A dataset root as one listing of its files: a local directory or an `s3://` prefix.

The dataset readers (datasets/*.py) ask a `Tree` which folders and files exist instead of asking the
operating system, so the same layout parser reads a local tree and a bucket, and a whole root is
listed once (one recursive walk, or one paginated LIST) rather than folder by folder. Sizes come
with the listing: `prepare` plans shards from them without opening a file.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from pathlib import Path

from ltad.errors import DataError
from ltad.io import storage


class Tree:
    """Relative POSIX path -> size in bytes of every file under `root`, with folder queries."""

    def __init__(self, root: str, files: dict[str, int], folders: tuple[str, ...] = ()) -> None:
        self.root = root
        self.files = dict(files)
        self._children: dict[str, tuple[set[str], list[str]]] = {"": (set(), [])}
        for rel in folders:  # empty local folders (S3 has none): a class folder with an empty train/
            self._folder(_norm(rel))
        for rel in sorted(self.files):
            parent, name = posixpath.split(rel)
            self._folder(parent)[1].append(name)

    def _folder(self, rel: str) -> tuple[set[str], list[str]]:
        if rel not in self._children:
            self._children[rel] = (set(), [])
            parent, name = posixpath.split(rel)
            self._folder(parent)[0].add(name)
        return self._children[rel]

    def uri(self, rel: str) -> str:
        """The full location of a relative path (for reading, and for messages)."""
        return storage.join(self.root, rel) if rel else self.root

    def is_dir(self, rel: str) -> bool:
        return _norm(rel) in self._children

    def is_file(self, rel: str) -> bool:
        return _norm(rel) in self.files

    def dirs(self, rel: str = "") -> list[str]:
        """Sorted names of the folders directly inside `rel` (none if it does not exist)."""
        entry = self._children.get(_norm(rel))
        return sorted(entry[0]) if entry else []

    def names(self, rel: str = "") -> list[str]:
        """Sorted names of the files directly inside `rel` (none if it does not exist)."""
        entry = self._children.get(_norm(rel))
        return list(entry[1]) if entry else []

    def read_text(self, rel: str, encoding: str = "utf-8") -> str:
        """A small text file of the tree (labels, split CSVs); OSError/UnicodeDecodeError as open() would."""
        return storage.read_bytes(self.uri(_norm(rel))).decode(encoding, errors="strict")


def _norm(rel: str) -> str:
    rel = posixpath.normpath(str(rel).replace("\\", "/")).lstrip("/")
    return "" if rel == "." else rel


def scan(root: str | Path, on_file: Callable[[int], None] | None = None) -> Tree:
    """List every file under `root` once. A local root that is no directory, or an S3 prefix that
    lists nothing, is a DataError naming it; `on_file(n)` reports progress (n files more)."""
    root = str(root)
    files: dict[str, int] = {}
    folders: list[str] = []
    if storage.is_s3(root):
        base = root.rstrip("/") + "/"
        for uri, size in storage.list_sizes(root):
            rel = uri[len(base) :]
            if rel.endswith("/"):  # a "folder" marker object some consoles create
                folders.append(rel)
                continue
            files[rel] = size
            if on_file is not None:
                on_file(1)
        if not files:
            raise DataError(
                f"dataset root '{root}' lists no objects: check the bucket and prefix (expected e.g. "
                "'<class>/train/good/*.png' under it)"
            )
        return Tree(root, files, tuple(folders))
    if not Path(root).is_dir():
        raise DataError(f"dataset root '{root}' does not exist or is not a directory")
    for folder, _dirs, names in os.walk(root, followlinks=True):
        rel_folder = os.path.relpath(folder, root)
        folders.append(rel_folder.replace(os.sep, "/"))
        for name in names:
            path = os.path.join(folder, name)
            try:
                size = os.stat(path).st_size
            except OSError:  # a dangling link: not a file of the dataset
                continue
            rel = name if rel_folder == "." else f"{rel_folder}/{name}"
            files[rel.replace(os.sep, "/")] = size
            if on_file is not None:
                on_file(1)
    return Tree(root, files, tuple(folders))


def as_tree(root: str | Path | Tree) -> Tree:
    """`root` itself when it is already listed, else its listing."""
    return root if isinstance(root, Tree) else scan(root)
