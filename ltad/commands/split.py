"""`ltad split`: write a long-tailed training split of a dataset to a JSON file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from ltad.data.datasets import DATASETS
from ltad.data.splits import PROFILES
from ltad.data.uri import resolve
from ltad.errors import ConfigError

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
    assert seed is not None, "--seed has a default"
    if args.profile != "full" and ratio is None:
        raise ConfigError(f"--ratio is required for profile '{args.profile}' (a number > 1)")
    dataset = read_dataset(args.dataset, root)
    return make_split(dataset, args.profile, ratio, seed, n_max)


def describe(split) -> str:
    counts = ", ".join(f"{c}={split.counts[c]}" for c in split.class_order)
    return f"{split.profile} ratio {split.ratio:g}, {len(split.class_order)} classes ({counts})"


def run(args: argparse.Namespace) -> int:
    root = resolve(args.root, "--root", local_only=True)
    out = resolve(args.out, "--out", local_only=True)
    split = make_split_from_args(args, root)
    path = split.save(out)
    print(f"wrote {path}: {describe(split)}")
    print(f"sha256 {split.sha256}")
    return 0
