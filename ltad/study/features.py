"""Frozen-encoder features of a whole dataset, computed once and reused by every study run.

The encoder is frozen in both phases, so a study over levels x methods x seeds only needs each image
encoded once: every long-tailed split is a subset of the full training set, and the test set is the
same for all. The file is a plain tensor dict (loaded with `weights_only=True`) keyed by the dataset's
synth stamp and the encoder config, so a stale file is never reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ltad.config import EncoderConfig
from ltad.data.pseudo_defects import GENERATORS, pseudo_key
from ltad.data.records import Record
from ltad.errors import DataError
from ltad.models.encoder import Encoder

FORMAT = "ltad-study-features/1"


@dataclass
class FeatureSet:
    """Features of a list of records, row i = record i."""

    patches: torch.Tensor  # N x D x g x g, fp16
    global_emb: torch.Tensor  # N x E, fp32
    class_id: torch.Tensor  # N, int64
    label: torch.Tensor  # N, int64 (1 = anomalous)
    masks: torch.Tensor | None  # N x H x W uint8 (test sets only)
    paths: list[str]
    anom_patches: torch.Tensor | None = None
    """N x D x g x g fp16: a pseudo-anomalous copy of each image (`phase2.pseudo_anomaly: cached`)."""
    anom_target: torch.Tensor | None = None
    """N x g x g fp16: the share of each patch the copy's defect covers."""

    def subset(self, index: torch.Tensor) -> FeatureSet:
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return FeatureSet(
            self.patches[index],
            self.global_emb[index],
            self.class_id[index],
            self.label[index],
            pick(self.masks),
            [self.paths[i] for i in index.tolist()],
            pick(self.anom_patches),
            pick(self.anom_target),
        )

    def __len__(self) -> int:
        return self.class_id.shape[0]


def load_image(root: Path, rec: Record, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image 3 x size x size in [0, 1] and its mask size x size in {0, 1} (zeros for normal images)."""
    try:
        with Image.open(root / rec.path) as im:
            image = (
                np.asarray(
                    im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32
                )
                / 255
            )
        mask = np.zeros((size, size), dtype=np.uint8)
        if rec.mask_path:
            with Image.open(root / rec.mask_path) as m:
                mask = (
                    np.asarray(m.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127
                ).astype(np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read image '{root / rec.path}' of the study dataset: {exc}") from None
    return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)


@torch.no_grad()
def encode_records(
    encoder: Encoder, root: Path, records: list[Record], *, with_masks: bool, batch: int = 32
) -> FeatureSet:
    """Encode `records` (images under `root`) into a FeatureSet."""
    size = encoder.cfg.image_size
    patches: list[torch.Tensor] = []
    globs: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for i in range(0, len(records), batch):
        images, part_masks = zip(*(load_image(root, r, size) for r in records[i : i + batch]))
        enc = encoder.encode_images(torch.stack(images))
        patches.append(enc.patches.half())
        globs.append(enc.global_emb.float())
        masks.extend(part_masks)
    return FeatureSet(
        torch.cat(patches),
        torch.cat(globs),
        torch.tensor([r.class_id for r in records], dtype=torch.long),
        torch.tensor([r.label for r in records], dtype=torch.long),
        torch.stack(masks) if with_masks else None,
        [r.path for r in records],
    )


def pseudo_records(
    encoder: Encoder, root: Path, records: list[Record], kind: str, batch: int = 32
) -> FeatureSet:
    """The normal `records`, then a pseudo-defect copy of each (generator `kind`, keyed by the record's
    path, label 1, the generator's mask): a test set whose anomalies share nothing with the dataset's."""
    normals = [r for r in records if r.label == 0]
    make = GENERATORS[kind]
    size = encoder.cfg.image_size
    patches: list[torch.Tensor] = []
    globs: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for pseudo in (False, True):
        for i in range(0, len(normals), batch):
            images, part_masks = [], []
            for r in normals[i : i + batch]:
                image, mask = load_image(root, r, size)
                if pseudo:
                    hwc, m = make(image.permute(1, 2, 0).numpy(), r.path)
                    image = torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1)))
                    mask = torch.from_numpy(m.astype(np.uint8))
                images.append(image)
                part_masks.append(mask)
            enc = encoder.encode_images(torch.stack(images))
            patches.append(enc.patches.half())
            globs.append(enc.global_emb.float())
            masks.extend(part_masks)
    n = len(normals)
    return FeatureSet(
        torch.cat(patches),
        torch.cat(globs),
        torch.tensor([r.class_id for r in normals] * 2, dtype=torch.long),
        torch.tensor([0] * n + [1] * n, dtype=torch.long),
        torch.stack(masks),
        [r.path for r in normals] + [pseudo_key(r.path) for r in normals],
    )


TRAIN_PSEUDO = "blend"
"""Generator of the cached training pseudo-anomalies: a Perlin region blended with a turned copy of the
image (no CutPaste, a test defect type; not `lobe`, which lobe validation rounds test with)."""
TRAIN_PSEUDO_SEED = 27
"""Not `PSEUDO_SEED`: the training copies are drawn apart from any validation copy."""


@torch.no_grad()
def pseudo_anomalies(
    encoder: Encoder, root: Path, records: list[Record], batch: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features N x D x g x g fp16, patch targets N x g x g fp16) of a Perlin-region pseudo-anomalous
    copy of each record's image, for `phase2.pseudo_anomaly: cached`."""
    make, size, grid = GENERATORS[TRAIN_PSEUDO], encoder.cfg.image_size, encoder.cfg.grid
    feats: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for i in range(0, len(records), batch):
        images, masks = [], []
        for r in records[i : i + batch]:
            image, _ = load_image(root, r, size)
            hwc, mask = make(image.permute(1, 2, 0).numpy(), r.path, TRAIN_PSEUDO_SEED)
            images.append(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))))
            masks.append(torch.from_numpy(mask.astype(np.float32)))
        feats.append(encoder.encode_images(torch.stack(images)).patches.half())
        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.stack(masks).unsqueeze(1), grid)
        targets.append(pooled.squeeze(1).half())
    return torch.cat(feats), torch.cat(targets)


def cache_key(dataset_stamp: str, cfg: EncoderConfig, test_defects: str = "synth") -> str:
    """What the cached features depend on: the dataset, the encoder config and the test defects."""
    what = {"format": FORMAT, "dataset": dataset_stamp, "encoder": asdict(cfg)}
    if test_defects != "synth":  # keys of existing caches unchanged
        what["test_defects"] = test_defects
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _to_dict(fs: FeatureSet) -> dict:
    out = {k: getattr(fs, k) for k in ("patches", "global_emb", "class_id", "label")}
    if fs.masks is not None:
        out["masks"] = fs.masks
    return out


def save_features(path: Path, key: str, train: FeatureSet, test: FeatureSet) -> None:
    """Write both sets atomically (temp file, then rename) so a killed study never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "key": key,
            "train": _to_dict(train),
            "test": _to_dict(test),
            "train_paths": train.paths,
            "test_paths": test.paths,
        },
        tmp,
    )
    tmp.replace(path)


def load_features(path: Path, key: str) -> tuple[FeatureSet, FeatureSet] | None:
    """The cached sets if `path` holds features for `key`, else None."""
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("key") != key:
        return None

    def build(name: str) -> FeatureSet:
        d = blob[name]
        return FeatureSet(
            d["patches"], d["global_emb"], d["class_id"], d["label"], d.get("masks"), blob[f"{name}_paths"]
        )

    return build("train"), build("test")
