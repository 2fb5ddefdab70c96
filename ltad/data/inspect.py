"""Stream every sample of a shard prefix and compare what is there with its manifest (`ltad inspect`)."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image

from ltad.data.manifest import VAL, read_manifest
from ltad.data.shards import IMAGE_MEMBERS, iterate_shard
from ltad.errors import UserError
from ltad.io import storage


def _check_sample(sample: dict[str, Any]) -> tuple[str, str]:
    """(class_name, split) of a raw sample after fully decoding its image and mask."""
    meta = json.loads(sample["json"])
    if not any(ext in sample for ext in IMAGE_MEMBERS):  # e.g. a tar cut inside the image's header
        raise ValueError(f"no image member ({', '.join('key.' + e for e in IMAGE_MEMBERS)})")
    for ext in (*IMAGE_MEMBERS, "mask.png"):
        if ext in sample:
            with Image.open(io.BytesIO(sample[ext])) as im:
                im.load()
    if meta.get("mask") and "mask.png" not in sample:
        raise ValueError("key.json says it has a mask but there is no key.mask.png member")
    if int(sample["cls"]) != meta["class_id"]:
        raise ValueError(f"class id {sample['cls']!r} disagrees with its JSON ({meta['class_id']})")
    return meta["class_name"], meta["split"]


def inspect(uri: str) -> dict[str, Any]:
    """{'uri', 'matches_manifest', 'splits': {split: {samples, per_class, matches_manifest, errors}}}."""
    manifest = read_manifest(uri)
    report: dict[str, Any] = {"uri": uri, "dataset": manifest.dataset, "splits": {}}
    for split in manifest.present_splits:
        origin = "train" if split == VAL else split  # held-out normals are training images
        per_class = {c: 0 for c in manifest.classes}
        errors: list[str] = []
        keys: set[str] = set()
        for entry in manifest.shards[split]:
            url = storage.join(uri, entry.name)
            try:
                for key, (cls, sample_split) in iterate_shard(
                    url, entry.samples, lambda s: (s["__key__"], _check_sample(s))
                ):
                    per_class[cls] = per_class.get(cls, 0) + 1
                    if sample_split != origin:
                        errors.append(f"{url}: sample '{key}' belongs to split '{sample_split}'")
                    if key in keys:
                        errors.append(f"{url}: sample '{key}' appears twice in {split}")
                    keys.add(key)
            except UserError as exc:
                errors.append(str(exc))
        expected = {c: manifest.counts[split].get(c, 0) for c in per_class}
        if per_class != expected and not errors:
            errors.append(f"{split} per-class counts {per_class} differ from the manifest's {expected}")
        report["splits"][split] = {
            "samples": sum(per_class.values()),
            "per_class": per_class,
            "matches_manifest": not errors,
            "errors": errors,
        }
    report["matches_manifest"] = all(s["matches_manifest"] for s in report["splits"].values())
    return report
