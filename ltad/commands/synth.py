"""`ltad synth`: write the offline pseudo-industrial dataset (MVTec layout) to a directory."""

from __future__ import annotations

import argparse

from ltad.data.synth import synthesize


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("synth", help="generate the offline pseudo-industrial dataset")
    p.add_argument("--out", required=True, help="output directory (must not hold other files)")
    p.add_argument("--classes", type=int, default=8, help="number of classes (one source image each)")
    p.add_argument("--image-size", type=int, default=128, help="side of every image in pixels")
    p.add_argument("--train-per-class", type=int, default=60, help="normal training images per class")
    p.add_argument("--test-per-class", type=int, default=24, help="test images per class (half defective)")
    p.add_argument("--seed", type=int, default=0, help="seed: same arguments give byte-identical files")
    return p


def run(args: argparse.Namespace) -> int:
    out = synthesize(
        args.out, args.classes, args.image_size, args.train_per_class, args.test_per_class, args.seed
    )
    print(
        f"wrote {out}: {args.classes} classes, {args.train_per_class} train + {args.test_per_class} test each"
    )
    return 0
