"""The feature cache's bytes per image at ViT-B/16, measured with the real encode and cache writer; prints JSON.

The cache's size does not depend on the encoder's weights, only on its architecture and the layers
and grid it taps, so the open_clip ViT-B-16 tower is built with random weights (nothing is
downloaded). A small MVTec-layout tree (2 classes) of ~1-megapixel JPEGs (ltad synth at 1024 px saved as JPEG
q90, as in benchmarks/prepare_parallel.py) is prepared, then `encode_shards` (the stage's own shard
writer: fp16 `feat.npy` + `glob.npy`, tar members, sample index) writes the feature shards for each
encoder setting: the one configs/mvtec.yaml uses (layers 5, 8, 11 at grid 14) and what a user can
lower (one layer; grid 7). Reported per image: feature shard bytes, the patch features' share, and
the ratio to the JPEG source bytes and to the image shard bytes.

No target: the figures describe a format. Usage:
  .venv/bin/python benchmarks/feature_cache_size.py [--json docs/results/feature-cache-size.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from record import add_json_flag, emit  # noqa: E402  (benchmarks/record.py, beside this script)

SETTINGS = {  # name -> (layers, grid)
    "mvtec_config_layers_5_8_11_grid_14": ((5, 8, 11), 14),
    "one_layer_11_grid_14": ((11,), 14),
    "layers_5_8_11_grid_7": ((5, 8, 11), 7),
}


def jpeg_tree(work: Path, train: int, test: int) -> Path:
    """An MVTec-layout tree of 1024 px JPEG images (q90) with PNG masks, from ltad synth."""
    from PIL import Image

    from ltad.data.synth import synthesize

    src = synthesize(work / "src", classes=2, image_size=1024, train_per_class=train, test_per_class=test)
    root = work / "jpeg"
    for path in sorted(src.rglob("*.png")):
        rel = path.relative_to(src)
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if "ground_truth" in rel.parts:
            dest.write_bytes(path.read_bytes())
            continue
        with Image.open(path) as im:
            im.convert("RGB").save(dest.with_suffix(".jpg"), quality=90)
    return root


def main(argv: list[str] | None = None) -> int:
    import torch

    from ltad.config import EncoderConfig
    from ltad.data.datasets import read_dataset
    from ltad.data.manifest import read_manifest
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.models.encoder import Encoder
    from ltad.training.feature_cache import encode_shards

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=3, help="train images per class (2 classes)")
    parser.add_argument("--test", type=int, default=2, help="test images per class (normal and defective)")
    add_json_flag(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.monotonic()
    settings = {}
    with tempfile.TemporaryDirectory(prefix="ltad-cache-size-") as tmp:
        work = Path(tmp)
        root = jpeg_tree(work, args.train, args.test)
        jpegs = sorted(root.rglob("*.jpg"))
        jpeg_bytes = sum(p.stat().st_size for p in jpegs)
        split = make_split(read_dataset("mvtec", root), "full", None, 0).save(work / "split.json")
        shards = str(work / "shards")
        manifest = prepare("mvtec", root, split, shards, log=lambda _m: None)
        images = sum(manifest.samples(s) for s in ("train", "test"))
        assert images == len(jpegs), (images, len(jpegs))
        image_shard_bytes = sum(e.bytes for s in ("train", "test") for e in manifest.shards[s])
        for name, (layers, grid) in SETTINGS.items():
            cfg = EncoderConfig(name="ViT-B-16", pretrained="none", layers=layers, grid=grid, image_size=224)
            encoder = Encoder(cfg)
            out = str(work / f"features-{name}")
            written = encode_shards(
                encoder, shards, read_manifest(shards), out, cache_id=name, batch_size=4, log=lambda _m: None
            )
            samples = sum(e.samples for _, e in written)
            shard_bytes = sum(e.bytes for _, e in written)
            feat = [p.stat().st_size for p in Path(out).rglob("*.tar")]
            assert sum(feat) == shard_bytes and samples == images, (sum(feat), shard_bytes, samples)
            per_image = shard_bytes / samples
            patch_bytes = encoder.feature_dim * grid * grid * 2  # fp16 D x g x g, without the .npy header
            settings[name] = {
                "layers": list(layers),
                "grid": grid,
                "feature_dim": encoder.feature_dim,
                "feature_shard_bytes_per_image": round(per_image),
                "patch_features_fp16_bytes": patch_bytes,
                "ratio_to_jpeg_source": round(per_image / (jpeg_bytes / images), 2),
                "ratio_to_image_shard": round(per_image / (image_shard_bytes / images), 2),
            }
            del encoder
    result = {
        "encoder": "open_clip ViT-B-16 (random weights: sizes do not depend on them), image_size 224, fp16 cache",
        "images": images,
        "source": f"{len(jpegs)} JPEG images 1024x1024 (q90, ltad synth) + PNG masks, MVTec layout",
        "jpeg_source_bytes_per_image": round(jpeg_bytes / images),
        "image_shard_bytes_per_image": round(image_shard_bytes / images),
        "settings": settings,
        "seconds": round(time.monotonic() - started, 1),
    }
    emit(result, args.json, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
