"""`ltad synth`: write the offline pseudo-industrial dataset (MVTec layout) to a directory."""

from __future__ import annotations

import argparse

from ltad.io.uri import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (must not hold other files)")
    add_synth_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed: same arguments give byte-identical files")


def add_synth_arguments(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The generator's size flags (`ltad prepare` takes them as --synth-*)."""
    p.add_argument(
        f"--{prefix}classes",
        type=int,
        default=8,
        help="number of classes (17 bundled sources, then procedural variants; up to 1000)",
    )
    p.add_argument(f"--{prefix}image-size", type=int, default=128, help="side of every image in pixels")
    p.add_argument(
        f"--{prefix}train-per-class", type=int, default=60, help="normal training images per class"
    )
    p.add_argument(f"--{prefix}test-per-class", type=int, default=24,
                   help="test images per class (half defective)")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "synth", help="generate the offline pseudo-industrial dataset", description=__doc__
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ltad.data.synth import synthesize

    out = synthesize(
        resolve(args.out, "--out", local_only=True),
        args.classes,
        args.image_size,
        args.train_per_class,
        args.test_per_class,
        args.seed,
    )
    print(
        f"wrote {out}: {args.classes} classes, {args.train_per_class} train + {args.test_per_class} test each"
    )
    return 0
