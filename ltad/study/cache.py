"""A study split's training features written as a feature cache on local disk.

The study's trainer reads its batches through the job's training stream (`training/data.py`), which
reads a feature cache. This writes one in the cache's format (`training/feature_cache.py`): one train
shard per class (`train/{class}-000000.tar`, as `ltad prepare` groups train shards), samples in the
FeatureSet's order, `key.feat.npy` (fp16), `key.glob.npy` (fp16), `key.cls`, `key.json` (and, when the
set carries them, a pseudo-anomalous copy `key.anom.npy` with its patch targets `key.anom_target.npy`), a sample
index beside every shard and the manifest last. A few MB per split, written in well under a second.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ltad.data.manifest import Manifest, ShardEntry, SplitProvenance, read_manifest, write_manifest
from ltad.data.sample_index import write_shard_index
from ltad.data.shards import ShardInfo, ShardWriter
from ltad.study.features import FeatureSet
from ltad.training.feature_cache import npy_bytes


@dataclass(frozen=True)
class TrainingCache:
    """A feature cache the trainer reads: its location (local directory or s3:// prefix) and manifest."""

    uri: str
    manifest: Manifest

    @classmethod
    def read(cls, uri: str) -> TrainingCache:
        return cls(uri, read_manifest(uri))

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    @property
    def class_counts(self) -> list[int]:
        """Training samples per class id (what the job's `Worker.class_counts` gives)."""
        return [self.manifest.counts["train"].get(c, 0) for c in self.manifest.classes]


def sample_key(path: str) -> str:
    """The shard key of a record path, as `ltad prepare` makes it (no extension, dots as '_')."""
    return str(Path(path).with_suffix("")).replace(".", "_")


def write_training_cache(train: FeatureSet, class_names: Sequence[str], out: Path) -> TrainingCache:
    """Write `train` (class ids index `class_names`) as a feature cache under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    finished: list[ShardInfo] = []

    def done(path: Path, info: ShardInfo) -> None:
        write_shard_index(path, str(path), info.sha256)
        finished.append(info)

    for c, name in enumerate(class_names):
        rows = (train.class_id == c).nonzero().flatten().tolist()
        if not rows:
            continue
        writer = ShardWriter(out, "train", name, done, max_bytes=1 << 62)
        for i in rows:
            meta = {"path": train.paths[i], "class_name": name, "class_id": c, "label": int(train.label[i])}
            files = {
                "feat.npy": npy_bytes(train.patches[i]),
                "glob.npy": npy_bytes(train.global_emb[i]),
                "cls": str(c).encode(),
                "json": json.dumps(meta, sort_keys=True).encode(),
            }
            if train.anom_patches is not None and train.anom_target is not None:
                files["anom.npy"] = npy_bytes(train.anom_patches[i])
                files["anom_target.npy"] = npy_bytes(train.anom_target[i])
            writer.write(sample_key(train.paths[i]), files, name)
        writer.close()
    counts = {n: int((train.class_id == c).sum()) for c, n in enumerate(class_names)}
    manifest = Manifest(
        dataset="study",
        classes=tuple(class_names),
        split=SplitProvenance(
            sha256="", profile="study", ratio=1.0, seed=None, class_order=tuple(class_names)
        ),
        shards={
            "train": tuple(ShardEntry(i.name, i.samples, i.bytes, i.sha256, i.per_class) for i in finished),
            "test": (),
        },
        counts={"train": counts, "test": {}},
        image_sizes={},
        extra={"kind": "features", "precision": "fp32"},
        sample_index=True,
    )
    write_manifest(str(out), manifest)
    return TrainingCache(str(out), manifest)
