"""Print JSON: the PatchCore baseline's image/pixel AUROC on the synthetic long-tailed benchmark.

Synthesizes the default dataset (or reuses --root), draws a long-tailed split, encodes the split's
training images and the full test set with LTAD's frozen encoder (bundled EfficientNet-Lite0 trunk,
random text tower: no CLIP weights), fits one unified bank and scores the test set.
Usage: python benchmarks/patchcore_smoke.py [--root DIR] [--profile exp --ratio 100] [--classes 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

from ltad.baselines import PatchCore  # noqa: E402
from ltad.config import EncoderConfig  # noqa: E402
from ltad.data.datasets import read_dataset  # noqa: E402
from ltad.data.records import Record  # noqa: E402
from ltad.data.splits import make_split  # noqa: E402
from ltad.data.synth import synthesize  # noqa: E402
from ltad.eval.aggregate import aggregate, to_json  # noqa: E402
from ltad.eval.metrics import pixel_aupro, pixel_auroc  # noqa: E402
from ltad.models.encoder import Encoder  # noqa: E402


def load(root: str, rec: Record, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image 3 x size x size in [0, 1] and mask size x size in {0, 1} (zeros for normal images)."""
    with Image.open(Path(root) / rec.path) as im:
        image = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    mask = np.zeros((size, size), dtype=np.float32)
    if rec.mask_path:
        with Image.open(Path(root) / rec.mask_path) as m:
            mask = (np.asarray(m.convert("L").resize((size, size), Image.NEAREST)) > 127).astype(np.float32)
    return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)


def encode(encoder: Encoder, root: str, records: list[Record], size: int, batch: int = 32):
    """Yield (patches, class_ids, masks, labels) per batch of records."""
    for i in range(0, len(records), batch):
        part = records[i : i + batch]
        images, masks = zip(*(load(root, r, size) for r in part))
        patches = encoder.encode_images(torch.stack(images)).patches
        yield patches, torch.tensor([r.class_id for r in part]), torch.stack(masks), [r.label for r in part]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="an existing synth dataset (default: generate into a temp dir)")
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--profile", default="exp", choices=["exp", "step", "full"])
    ap.add_argument("--ratio", type=float, default=100.0)
    ap.add_argument("--coreset-ratio", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    add_json_flag(ap)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or str(synthesize(Path(tmp) / "synth", classes=args.classes, seed=args.seed))
        ds = read_dataset("synth", root)
        split = make_split(ds, args.profile, None if args.profile == "full" else args.ratio, seed=args.seed)
        cfg = EncoderConfig()
        encoder, size = Encoder(cfg), cfg.image_size
        t0 = time.perf_counter()
        train = [p for p, *_ in encode(encoder, root, split.train_records(ds), size)]
        t1 = time.perf_counter()
        model = PatchCore(coreset_ratio=args.coreset_ratio, seed=args.seed).fit(train)
        t2 = time.perf_counter()
        scores, labels, ids = [], [], []
        maps, masks = defaultdict(list), defaultdict(list)
        score_s = 0.0
        for patches, cids, gt, y in encode(encoder, root, ds.select("test"), size):
            s0 = time.perf_counter()
            amap, score = model.score(patches, size)
            score_s += time.perf_counter() - s0
            scores.append(score), labels.extend(y), ids.append(cids)
            for m, g, c in zip(amap.numpy(), gt.numpy(), cids.tolist()):
                maps[c].append(m), masks[c].append(g)
        pixel = {
            ds.classes[c]: {
                "pixel_AUROC": pixel_auroc(np.stack(maps[c]), np.stack(masks[c])),
                "pixel_AUPRO": pixel_aupro(np.stack(maps[c]), np.stack(masks[c])),
            }
            for c in maps
        }
        report = aggregate(
            torch.cat(scores), labels, torch.cat(ids), ds.classes, split.counts, pixel, split.class_order
        )
    out = {
        "method": "patchcore",
        "data": f"synth {args.classes} classes, split {args.profile} ratio {split.ratio:g} seed {args.seed}",
        "weights": encoder.weights_provenance(),
        "train_images": sum(split.counts.values()),
        "bank_size": model.bank_size,
        **{m: report[m] for m in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1max")},
        "groups": {g: v["image_AUROC"] for g, v in report["groups"].items()},
        "per_class_image_AUROC": {c: v["image_AUROC"] for c, v in report["per_class"].items()},
        "encode_train_s": round(t1 - t0, 2),
        "fit_s": round(t2 - t1, 2),
        "score_s": round(score_s, 2),
    }
    emit(json.loads(to_json(out)), args.json, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
