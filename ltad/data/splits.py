"""Long-tailed training splits: profiles, the split file, and tolerant readers of published splits.

Only the training set is long-tailed; the test set stays whole. A split is a file that records the
profile, ratio, seed, class order (head first), counts and every relative path, so it can be shared
and re-read: `make_split` builds one from a dataset, `read_split` reads ours or a published one.

Validation: `val_fraction` of each class's long-tailed share of normal images is held out (`val` in
the file, rounded half up, always leaving at least one image for training), never trained on, and
used to calibrate the decision thresholds (ltad/eval/calibration.py). `counts` are the training
images that remain. Files without `val` (older ones, published splits) hold no validation images.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltad.data.records import Dataset, Record
from ltad.errors import ConfigError, DataError

SPLIT_FORMAT = "ltad-split/1"
PROFILES = ("exp", "step", "pareto", "full")
GROUPS = ("head", "medium", "tail")
DEFAULT_VAL_FRACTION = 0.1
"""Share of each class's normal images `ltad split` / `ltad prepare` hold out for calibration."""


def val_count(n: int, val_fraction: float) -> int:
    """Held-out images of a class with `n` images: round half up, at least one left for training."""
    return max(0, min(n - 1, math.floor(n * val_fraction + 0.5)))


def check_val_fraction(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not 0 <= value < 1:
        raise ConfigError(f"split val_fraction must be a number in [0, 1), got {value!r}")
    return float(value)


def check_ratio(profile: str, ratio: Any) -> float:
    """The imbalance ratio as a float > 1 (1.0 for 'full'), or a ConfigError naming it."""
    if profile not in PROFILES:
        raise ConfigError(f"split profile '{profile}' is unknown (expected one of {', '.join(PROFILES)})")
    if profile == "full":
        return 1.0
    ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio)
    if not ok or ratio <= 1:
        raise ConfigError(f"split ratio must be a number > 1 for profile '{profile}', got {ratio!r}")
    return float(ratio)


def profile_counts(profile: str, n_max: int, num_classes: int, ratio: float) -> list[int]:
    """Training images per rank c = 0..C-1 (head first); every count >= 1.

    exp: n_max * ratio^(-c/(C-1)); step: n_max for the first C//2, n_max/ratio after; pareto:
    n_max * (c+1)^(-a) with a = ln(ratio)/ln(C) so head/tail = ratio. A tiny epsilon keeps exact
    values (100 * 10^-1) from flooring one below because of float rounding.
    """
    ratio = check_ratio(profile, ratio)
    c_last = num_classes - 1
    if profile == "full" or c_last == 0:
        raw = [float(n_max)] * num_classes
    elif profile == "exp":
        raw = [n_max * ratio ** (-c / c_last) for c in range(num_classes)]
    elif profile == "step":
        raw = [n_max if c < num_classes // 2 else n_max / ratio for c in range(num_classes)]
    else:
        a = math.log(ratio) / math.log(num_classes)
        raw = [n_max * (c + 1) ** (-a) for c in range(num_classes)]
    return [max(1, math.floor(x + 1e-9)) for x in raw]


@dataclass(frozen=True)
class Split:
    """A long-tailed training split: which normal training images of each class are used."""

    dataset: str
    profile: str  # exp | step | pareto | full | published
    ratio: float  # head/tail count ratio (requested; observed for published splits; 1 for full)
    seed: int | None  # None for published splits
    class_order: tuple[str, ...]  # head first
    counts: dict[str, int]
    train_paths: dict[str, tuple[str, ...]]  # class -> relative POSIX paths, in split order
    val_paths: dict[str, tuple[str, ...]] = field(default_factory=dict)  # held-out normals per class
    val_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": SPLIT_FORMAT,
            "dataset": self.dataset,
            "profile": self.profile,
            "ratio": self.ratio,
            "seed": self.seed,
            "class_order": list(self.class_order),
            "counts": {c: self.counts[c] for c in self.class_order},
            "train": {c: list(self.train_paths[c]) for c in self.class_order},
        }
        if self.val_fraction or any(self.val_paths.values()):  # files without val keep their bytes
            out["val_fraction"] = self.val_fraction
            out["val"] = {c: list(self.val_paths.get(c, ())) for c in self.class_order}
        return out

    def to_json(self) -> str:
        """Canonical JSON: the exact bytes `save` writes and `sha256` hashes."""
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=True) + "\n"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write the split file atomically (a temp file renamed), so no half-written file looks complete."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="ascii")
        tmp.replace(path)
        return path

    def train_records(self, dataset: Dataset) -> list[Record]:
        """The dataset's records of this split, head class first, in split order."""
        return self._records(dataset, self.train_paths)

    def val_records(self, dataset: Dataset) -> list[Record]:
        """The held-out normal records (empty for splits without validation), head class first."""
        return self._records(dataset, self.val_paths)

    def _records(self, dataset: Dataset, paths: dict[str, tuple[str, ...]]) -> list[Record]:
        by_path = {r.path: r for r in dataset.select("train", 0)}
        out = []
        for cls in self.class_order:
            for p in paths.get(cls, ()):
                if p not in by_path:
                    raise DataError(
                        f"split path '{p}' is not a normal training image of the dataset at '{dataset.root}'"
                    )
                out.append(by_path[p])
        return out

    def group_of(self, class_name: str) -> str:
        """'head' | 'medium' | 'tail': thirds of the classes ranked by training count (ties: class order)."""
        if class_name not in self.counts:
            raise DataError(
                f"class '{class_name}' is not in the split (classes: {', '.join(self.class_order)})"
            )
        ranking = sorted(self.class_order, key=lambda c: -self.counts[c])
        return GROUPS[min(2, ranking.index(class_name) * 3 // len(ranking))]


def _rank_classes(available: dict[str, int], needs: list[int], seed: int, where: str) -> list[str]:
    """Seeded permutation of classes, then greedily the first class able to supply each rank's need.

    Needs are non-increasing, so if any assignment exists the greedy one does (exchange argument).
    """
    order = sorted(available)
    random.Random(f"ltad-split-order:{seed}").shuffle(order)
    ranked: list[str] = []
    for c, need in enumerate(needs):
        pick = next((k for k in order if available[k] >= need), None)
        if pick is None:
            best = max(order, key=lambda k: available[k])
            raise DataError(
                f"{where}: rank {c} needs {need} normal training images but the best remaining class "
                f"'{best}' has only {available[best]}"
            )
        order.remove(pick)
        ranked.append(pick)
    return ranked


def feasible_n_max(profile: str, available: list[int], ratio: float) -> int:
    """The largest head count <= the largest class whose profile every class can supply.

    It is the largest available count whenever that works (exp on MVTec/VisA); step needs C//2
    classes at n_max, so there it is the (C//2)-th largest count instead of a certain shortfall.
    """
    ranked = sorted(available, reverse=True)
    for n_max in range(ranked[0], 0, -1):
        if all(a >= n for a, n in zip(ranked, profile_counts(profile, n_max, len(ranked), ratio))):
            return n_max
    return 1


def make_split(
    dataset: Dataset,
    profile: str,
    ratio: float | None = None,
    seed: int = 0,
    n_max: int | None = None,
    val_fraction: float = 0.0,
) -> Split:
    """A long-tailed split of `dataset`'s normal training images (ratio ignored for 'full').

    `n_max` (the head count) defaults to `feasible_n_max`; an explicit one that some rank cannot
    supply is a DataError, never a silent shortfall. `val_fraction` of each class's share is held
    out as validation (see the module docstring).
    """
    ratio = check_ratio(profile, ratio)
    val_fraction = check_val_fraction(val_fraction)
    if n_max is not None and (not isinstance(n_max, int) or isinstance(n_max, bool) or n_max < 1):
        raise ConfigError(f"split n_max must be an int >= 1, got {n_max!r}")
    normals = dataset.train_normals()
    empty = [c for c, rs in normals.items() if not rs]
    if empty:
        raise DataError(
            f"class '{empty[0]}' of the dataset at '{dataset.root}' has no normal training images"
        )
    available = {c: len(rs) for c, rs in normals.items()}
    where = f"split {profile} ratio {ratio:g} of the dataset at '{dataset.root}'"
    if profile == "full":
        order = sorted(available)
        random.Random(f"ltad-split-order:{seed}").shuffle(order)
        ranked = sorted(order, key=lambda k: -available[k])
        counts = {k: available[k] for k in ranked}
    else:
        n_max = n_max or feasible_n_max(profile, list(available.values()), ratio)
        needs = profile_counts(profile, n_max, len(available), ratio)
        ranked = _rank_classes(available, needs, seed, where)
        counts = dict(zip(ranked, needs))
    train, val = {}, {}
    for cls in ranked:
        paths = sorted(r.path for r in normals[cls])
        random.Random(f"ltad-split-images:{seed}:{cls}").shuffle(paths)
        share = paths[: counts[cls]]
        n_val = val_count(len(share), val_fraction)
        train[cls] = tuple(share[: len(share) - n_val])
        val[cls] = tuple(share[len(share) - n_val :])
        counts[cls] = len(train[cls])
    val = {c: ps for c, ps in val.items() if ps}
    return Split(dataset.name, profile, ratio, seed, tuple(ranked), counts, train, val, val_fraction)


# --------------------------------------------------------------------------- reading split files


def _is_mapping_of_paths(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, list) and all(isinstance(p, str) for p in v) for v in value.values()
    )


def _parse(path: Path, text: str) -> tuple[dict[str, Any] | None, list[tuple[str, str | None]]]:
    """(our split document or None, [(relative path, class or None)]) for any accepted format."""
    unknown = DataError(
        f"split file '{path}' has an unknown format (expected an ltad split, UniAD JSON lines, "
        "a list of relative paths, or {class: [paths]})"
    )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "format" in doc:
        if doc["format"] != SPLIT_FORMAT:
            raise DataError(f"split file '{path}' has format {doc['format']!r}, expected '{SPLIT_FORMAT}'")
        if not _is_mapping_of_paths(doc.get("train")):
            raise DataError(f"split file '{path}' lacks the key 'train' (a mapping of class to path lists)")
        return doc, [(p, c) for c, ps in doc["train"].items() for p in ps]
    if isinstance(doc, dict) and "filename" not in doc:
        if not _is_mapping_of_paths(doc):
            raise unknown
        return None, [(p, str(c)) for c, ps in doc.items() for p in ps]
    if isinstance(doc, list):
        if not all(isinstance(p, str) for p in doc):
            raise unknown
        return None, [(p, None) for p in doc]
    if doc is not None and not isinstance(doc, dict):
        raise unknown
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"split file '{path}' is empty")
    if not lines[0].startswith("{"):
        if any(ln.startswith(("{", "[")) for ln in lines):
            raise unknown
        return None, [(ln, None) for ln in lines]
    items = []
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"split file '{path}' line {number} is not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("filename"), str):
            raise DataError(f"split file '{path}' line {number} lacks the key 'filename'")
        items.append((row["filename"], row.get("clsname")))
    return None, items


def _normalise(p: str) -> str:
    p = p.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    return p


def read_split(path: str | Path, dataset: Dataset) -> Split:
    """Read an ltad split or a published one, validated against `dataset` (every path a train normal)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"split file '{path}' cannot be read: {exc}") from None
    doc, items = _parse(path, text)
    normals = {r.path: r for r in dataset.select("train", 0)}
    train: dict[str, list[str]] = {}
    seen: set[str] = set()
    for raw, cls in items:
        rel = _normalise(raw)
        record = normals.get(rel)
        if record is None:
            why = (
                "is not a normal training image" if (Path(dataset.root) / rel).is_file() else "does not exist"
            )
            raise DataError(f"split file '{path}': '{rel}' {why} in the dataset at '{dataset.root}'")
        if cls is not None and str(cls) != record.class_name:
            raise DataError(
                f"split file '{path}': '{rel}' is listed as class '{cls}', the dataset says '{record.class_name}'"
            )
        if rel in seen:
            raise DataError(f"split file '{path}': '{rel}' is listed twice")
        seen.add(rel)
        train.setdefault(record.class_name, []).append(rel)
    missing = [c for c in dataset.classes if c not in train]
    if missing:
        raise DataError(f"split file '{path}' lists no training image for class '{missing[0]}'")
    counts = {c: len(ps) for c, ps in train.items()}
    paths = {c: tuple(ps) for c, ps in train.items()}
    if doc is not None:
        order = tuple(doc.get("class_order") or sorted(train, key=lambda c: (-counts[c], c)))
        if sorted(order) != sorted(train):
            raise DataError(f"split file '{path}': 'class_order' does not list the classes of 'train'")
        if doc.get("counts") not in (None, counts):
            raise DataError(f"split file '{path}': 'counts' does not match the number of paths in 'train'")
        profile = str(doc.get("profile"))
        if profile == "published":
            ratio = counts[order[0]] / counts[order[-1]]
        else:
            try:
                ratio = check_ratio(profile, doc.get("ratio"))
            except ConfigError as exc:
                raise DataError(f"split file '{path}': {exc}") from None
        dataset_name = str(doc.get("dataset", dataset.name))
        val = _read_val(path, doc, normals, seen)
        try:
            val_fraction = check_val_fraction(doc.get("val_fraction", 0.0))
        except ConfigError as exc:
            raise DataError(f"split file '{path}': {exc}") from None
        return Split(dataset_name, profile, ratio, doc.get("seed"), order, counts, paths, val, val_fraction)
    order = tuple(sorted(train, key=lambda c: (-counts[c], c)))
    ratio = counts[order[0]] / counts[order[-1]]
    return Split(dataset.name, "published", ratio, None, order, counts, paths)


def _read_val(
    path: Path, doc: dict[str, Any], normals: dict[str, Record], train: set[str]
) -> dict[str, tuple[str, ...]]:
    """The held-out paths of an ltad split file, each a normal training image of its class used once."""
    raw = doc.get("val", {})
    if not _is_mapping_of_paths(raw):
        raise DataError(f"split file '{path}': 'val' must be a mapping of class to path lists")
    val: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for cls, ps in raw.items():
        rels = tuple(_normalise(p) for p in ps)
        for rel in rels:
            record = normals.get(rel)
            if record is None or record.class_name != cls:
                raise DataError(
                    f"split file '{path}': held-out '{rel}' is not a normal training image of class '{cls}'"
                )
            if rel in train or rel in seen:
                raise DataError(f"split file '{path}': held-out '{rel}' is also listed for training or twice")
            seen.add(rel)
        if rels:
            val[cls] = rels
    return val
