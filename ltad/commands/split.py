"""`ltad split`: write a long-tailed training split of a dataset to a JSON file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from ltad.data.datasets import DATASETS
from ltad.data.splits import DEFAULT_VAL_FRACTION, PROFILES
from ltad.errors import ConfigError
from ltad.io.uri import resolve

T = TypeVar("T", int, float)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root directory")
    add_profile_arguments(p, required=True)
    p.add_argument("--out", required=True, help="split file to write (JSON)")


def add_profile_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    """--profile / --ratio / --n-max / --seed (shared with `ltad prepare`, where they are optional)."""
    p.add_argument("--profile", required=required, choices=PROFILES, help="imbalance profile")
    p.add_argument("--ratio", default=None, help="head/tail count ratio, a number > 1 (not for 'full')")
    p.add_argument("--n-max", default=None, help="head class count (default: the largest feasible)")
    p.add_argument("--seed", default="0", help="seed of the class ranking and image choice (int)")
    p.add_argument(
        "--val-fraction",
        default=None,
        help=f"share of each class's images held out to calibrate thresholds, in [0, 1) (default "
        f"{DEFAULT_VAL_FRACTION}; at least one image per class stays for training)",
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("split", help="make a long-tailed training split (JSON)", description=__doc__)
    add_arguments(p)
    return p


def parse_number(flag: str, raw: str | None, kind: Callable[[str], T]) -> T | None:
    """Parse a numeric flag here, so a bad value is one ConfigError line naming the flag."""
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{flag} must be {'an int' if kind is int else 'a number'}, got {raw!r}") from None


def make_split_from_args(args: argparse.Namespace, root: str):
    """The split that --profile/--ratio/--n-max/--seed describe for the dataset at `root`."""
    from ltad.data.datasets import read_dataset
    from ltad.data.splits import make_split

    ratio = parse_number("--ratio", args.ratio, float)
    seed = parse_number("--seed", args.seed, int)
    n_max = parse_number("--n-max", args.n_max, int)
    val_fraction = parse_number("--val-fraction", args.val_fraction, float)
    val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction must be a number in [0, 1), got {args.val_fraction!r}")
    assert seed is not None, "--seed has a default"
    if args.profile != "full" and ratio is None:
        raise ConfigError(f"--ratio is required for profile '{args.profile}' (a number > 1)")
    dataset = read_dataset(args.dataset, root)
    return make_split(dataset, args.profile, ratio, seed, n_max, val_fraction)


def describe(split) -> str:
    counts = ", ".join(f"{c}={split.counts[c]}" for c in split.class_order)
    held = sum(len(v) for v in split.val_paths.values())
    return (
        f"{split.profile} ratio {split.ratio:g}, {len(split.class_order)} classes ({counts}); "
        f"{held} normal images held out for threshold calibration (val_fraction {split.val_fraction:g})"
    )


def run(args: argparse.Namespace) -> int:
    root = resolve(args.root, "--root", local_only=True)
    out = resolve(args.out, "--out", local_only=True)
    split = make_split_from_args(args, root)
    path = split.save(out)
    print(f"wrote {path}: {describe(split)}")
    print(f"sha256 {split.sha256}")
    return 0
