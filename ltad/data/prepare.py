"""Dataset + split -> WebDataset shards + manifest at a prefix (`ltad prepare`).

Constant memory: records are encoded one at a time into one local shard, which is uploaded and
deleted before the next one is opened. The old manifest is deleted before any shard is replaced and
the new one is written last, so an interrupted run never leaves a manifest describing missing or
half-written shards. A shard whose object already holds the same bytes (sha256 in the object's
metadata or in the previous manifest) is not uploaded again.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ltad.data import storage
from ltad.data.datasets import read_dataset
from ltad.data.manifest import (
    VAL,
    Manifest,
    ShardEntry,
    SplitProvenance,
    manifest_uri,
    try_read_manifest,
    write_manifest,
)
from ltad.data.records import Record
from ltad.data.shards import ShardInfo, ShardWriter, encode_record, sample_key
from ltad.data.splits import read_split
from ltad.errors import ConfigError, DataError
from ltad.log import get_logger

_log = get_logger("prepare").info


def prepare(
    dataset_name: str,
    root: str | Path,
    split_path: str | Path,
    out_uri: str,
    shard_size_mb: float = 256,
    test_shard_samples: int = 64,
    log: Callable[[str], None] = _log,
) -> Manifest:
    """Write train shards grouped by class and test shards (the full test set), then the manifest."""
    if shard_size_mb <= 0:
        raise ConfigError(f"--shard-size-mb must be a positive number, got {shard_size_mb}")
    if test_shard_samples < 1:
        raise ConfigError(f"--test-shard-samples must be an int >= 1, got {test_shard_samples}")
    dataset = read_dataset(dataset_name, root)
    split = read_split(split_path, dataset)
    train = split.train_records(dataset)
    val = split.val_records(dataset)  # held-out normals for threshold calibration (may be empty)
    test = dataset.select("test")
    if not test:
        raise DataError(f"dataset '{dataset_name}' at '{root}' has no test images")
    _check_unique_keys(train + val + test)
    _check_images(train + val + test, root)

    previous = try_read_manifest(out_uri)  # also fails early on a bad bucket or credentials
    known = {} if previous is None else {e.name: e.sha256 for s in previous.shards.values() for e in s}
    storage.delete(manifest_uri(out_uri))

    entries: dict[str, list[ShardEntry]] = {"train": [], "test": [], VAL: []}
    sizes: dict[str, set[tuple[int, int]]] = {c: set() for c in dataset.classes}
    stats = {"uploaded": 0, "skipped": 0, "done": 0}
    total = len(train) + len(val) + len(test)
    started = time.monotonic()

    def on_done(path: Path, info: ShardInfo) -> None:
        uri = storage.join(out_uri, info.name)
        existing = storage.head(uri)
        same = (
            existing is not None
            and existing["size"] == info.bytes
            and info.sha256 in (existing["metadata"].get("sha256"), known.get(info.name))
        )
        if same:
            stats["skipped"] += 1
        else:
            storage.upload_file(path, uri, metadata={"sha256": info.sha256})
            stats["uploaded"] += 1
        path.unlink()
        entries[info.name.split("/", 1)[0]].append(
            ShardEntry(info.name, info.samples, info.bytes, info.sha256, info.per_class)
        )
        stats["done"] += info.samples
        rate = stats["done"] / max(1e-6, time.monotonic() - started)
        verb = "unchanged, skipped" if same else "uploaded"
        log(
            f"{info.name}: {info.samples} samples, {info.bytes / 1e6:.1f} MB {verb} ({stats['done']}/{total}, {rate:.0f}/s)"
        )

    max_bytes = int(shard_size_mb * (1 << 20))
    with tempfile.TemporaryDirectory(prefix="ltad-prepare-") as tmp:
        for cls in dataset.classes:
            records = [r for r in train if r.class_name == cls]
            if records:
                _write(ShardWriter(tmp, "train", cls, on_done, max_bytes), records, root, sizes)
        _write(ShardWriter(tmp, "test", "test", on_done, max_bytes, test_shard_samples), test, root, sizes)
        if val:
            _write(ShardWriter(tmp, VAL, VAL, on_done, max_bytes, test_shard_samples), val, root, sizes)

    _delete_stale(out_uri, {e.name for split_entries in entries.values() for e in split_entries})
    counts = {
        "train": {c: split.counts.get(c, 0) for c in dataset.classes},
        "test": {c: sum(r.class_name == c for r in test) for c in dataset.classes},
    }
    if val:
        counts[VAL] = {c: sum(r.class_name == c for r in val) for c in dataset.classes}
    else:
        del entries[VAL]
    manifest = Manifest(
        dataset=dataset.name,
        classes=dataset.classes,
        split=SplitProvenance(split.sha256, split.profile, split.ratio, split.seed, tuple(split.class_order)),
        shards={k: tuple(v) for k, v in entries.items()},
        counts=counts,
        image_sizes={c: [list(wh) for wh in sorted(v)] for c, v in sizes.items()},
    )
    uri = write_manifest(out_uri, manifest)
    log(f"wrote {uri}: {stats['uploaded']} shards uploaded, {stats['skipped']} unchanged")
    return manifest


def _write(writer: ShardWriter, records: list[Record], root: str | Path, sizes: dict) -> None:
    for record in records:
        key, files, size = encode_record(record, root)
        sizes[record.class_name].add(size)
        writer.write(key, files, record.class_name)
    writer.close()


def _check_images(records: list[Record], root: str | Path) -> None:
    """Every image and mask opens as an image and masks match their image's size: read from the
    headers only (~0.1 ms a file), so bad input fails before the first shard is uploaded."""
    for record in records:
        size = _image_size(root, record.path)
        if record.mask_path is not None:
            mask = _image_size(root, record.mask_path)
            if mask != size:
                raise DataError(
                    f"mask '{record.mask_path}' is {mask[0]}x{mask[1]} but image '{record.path}' is "
                    f"{size[0]}x{size[1]}: expected the same size"
                )


def _image_size(root: str | Path, rel: str) -> tuple[int, int]:
    try:
        with Image.open(Path(root, rel)) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read image '{rel}' under '{root}': {exc or type(exc).__name__} (expected a PNG, JPEG, "
            "BMP or TIFF image)"
        ) from None


def _check_unique_keys(records: list[Record]) -> None:
    seen: dict[str, str] = {}
    for r in records:
        key = sample_key(r)
        if key in seen and seen[key] != r.path:
            raise DataError(f"images '{seen[key]}' and '{r.path}' map to the same sample key '{key}'")
        seen[key] = r.path


def _delete_stale(out_uri: str, keep: set[str]) -> None:
    """Remove shards of an earlier run that this run did not write (e.g. a larger split)."""
    for split in ("train", "test", VAL):
        prefix = storage.join(out_uri, split)
        for uri in storage.list(prefix):
            name = f"{split}/{uri.rsplit('/', 1)[-1]}"
            if uri.endswith(".tar") and name not in keep:
                storage.delete(uri)
