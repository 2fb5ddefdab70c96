"""`manifest.json`: what a shard prefix holds, written last so it only ever describes complete shards.

Streams take their shard lists and per-shard sample counts from here (the count check is what
catches truncated shards), training takes the class order and counts, and `prepare` takes the
previous manifest's hashes to skip identical shards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ltad.errors import DataError
from ltad.io import storage

FORMAT = "ltad-shards/1"
NAME = "manifest.json"
SPLITS = ("train", "test")
VAL = "val"
"""Optional split of held-out normal training images (threshold calibration); manifests written
before it existed have none, and every reader treats a missing one as empty."""


@dataclass(frozen=True)
class ShardEntry:
    name: str  # relative to the prefix, e.g. "train/bottle-000000.tar"
    samples: int
    bytes: int
    sha256: str
    per_class: dict[str, int]


@dataclass(frozen=True)
class SplitProvenance:
    """Which split file the training shards were cut from."""

    sha256: str
    profile: str
    ratio: float
    seed: int | None
    class_order: tuple[str, ...]  # head first


@dataclass(frozen=True)
class Manifest:
    dataset: str
    classes: tuple[str, ...]  # ordered by class id
    split: SplitProvenance
    shards: dict[str, tuple[ShardEntry, ...]]  # "train" | "test" -> shards
    counts: dict[str, dict[str, int]]  # "train" | "test" -> class -> samples
    image_sizes: dict[str, list[list[int]]]  # class -> distinct [width, height], sorted
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance of derived shards (e.g. the feature cache's encoder fingerprint)."""
    sample_index: bool = False
    """Every shard has its per-sample index sidecar (sample_index.py), so training can read single
    samples by byte range; False (or absent) for shards prepared before, read sequentially."""

    def __post_init__(self) -> None:
        for split in SPLITS:
            if split not in self.shards or split not in self.counts:
                raise DataError(f"manifest has no '{split}' split")
        for split in self.present_splits:
            summed: dict[str, int] = {}
            for shard in self.shards[split]:
                for cls, n in shard.per_class.items():
                    summed[cls] = summed.get(cls, 0) + n
                if sum(shard.per_class.values()) != shard.samples:
                    raise DataError(
                        f"manifest shard '{shard.name}' per-class counts do not add up to {shard.samples}"
                    )
            unknown = sorted(set(summed) - set(self.classes))
            if unknown:
                raise DataError(
                    f"manifest {split} shards hold class '{unknown[0]}' missing from its class list"
                )
            declared = {c: n for c, n in self.counts[split].items() if n}
            if summed != declared:
                raise DataError(
                    f"manifest {split} shard counts {summed} disagree with its per-class counts {declared}"
                )

    @property
    def present_splits(self) -> tuple[str, ...]:
        """train, test and, when the data has held-out normals, val."""
        return SPLITS + ((VAL,) if VAL in self.shards else ())

    def val_shards(self) -> tuple[ShardEntry, ...]:
        """The held-out normal shards (empty for data prepared without a validation split)."""
        return self.shards.get(VAL, ())

    def samples(self, split: str) -> int:
        return sum(s.samples for s in self.shards.get(split, ()))

    def class_id(self, name: str) -> int:
        return self.classes.index(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["split"]["class_order"] = list(self.split.class_order)
        data["shards"] = {s: [asdict(e) for e in self.shards[s]] for s in self.present_splits}
        return {"format": data.pop("format"), **data}

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise DataError(f"{where} is not an ltad shard manifest (format {got!r}, expected {FORMAT!r})")
        try:
            split = dict(data["split"])
            split["class_order"] = tuple(split["class_order"])
            present = SPLITS + ((VAL,) if VAL in data["shards"] else ())
            return cls(
                dataset=data["dataset"],
                classes=tuple(data["classes"]),
                split=SplitProvenance(**split),
                shards={s: tuple(ShardEntry(**e) for e in data["shards"][s]) for s in present},
                counts={s: dict(data["counts"][s]) for s in present},
                image_sizes={c: [list(wh) for wh in v] for c, v in data["image_sizes"].items()},
                extra=dict(data.get("extra", {})),
                sample_index=bool(data.get("sample_index", False)),
            )
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where} is malformed: missing or wrong field {exc}") from None


def manifest_uri(prefix: str) -> str:
    return storage.join(prefix, NAME)


def read_manifest(prefix: str) -> Manifest:
    """The manifest at a shard prefix; a clear error when there is none."""
    uri = manifest_uri(prefix)
    if not storage.exists(uri):
        raise DataError(f"no {NAME} at {prefix}: run ltad prepare first")
    return Manifest.from_dict(storage.read_json(uri), where=uri)


def try_read_manifest(prefix: str) -> Manifest | None:
    """The previous manifest, or None when absent or unreadable (prepare then rebuilds everything)."""
    try:
        return read_manifest(prefix)
    except DataError:
        return None


def write_manifest(prefix: str, manifest: Manifest) -> str:
    uri = manifest_uri(prefix)
    storage.write_json(uri, manifest.to_dict())
    return uri
