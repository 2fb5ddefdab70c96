"""`ltad split`: write a long-tailed training split of a dataset to a JSON file."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from ltad.data.datasets import DATASETS, read_dataset
from ltad.data.splits import PROFILES, make_split
from ltad.errors import ConfigError

T = TypeVar("T", int, float)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("split", help="make a long-tailed training split (JSON)")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--profile", required=True, choices=PROFILES, help="imbalance profile")
    p.add_argument("--ratio", default=None, help="head/tail count ratio, a number > 1 (not for 'full')")
    p.add_argument("--n-max", default=None, help="head class count (default: the largest feasible)")
    p.add_argument("--seed", default="0", help="seed of the class ranking and image choice (int)")
    p.add_argument("--out", required=True, help="split file to write (JSON)")
    return p


def _number(flag: str, raw: str | None, kind: Callable[[str], T]) -> T | None:
    """Parse a numeric flag here, so a bad value is one ConfigError line naming the flag."""
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{flag} must be {'an int' if kind is int else 'a number'}, got {raw!r}") from None


def run(args: argparse.Namespace) -> int:
    ratio = _number("--ratio", args.ratio, float)
    seed = _number("--seed", args.seed, int)
    n_max = _number("--n-max", args.n_max, int)
    assert seed is not None, "--seed has a default"
    if args.profile != "full" and ratio is None:
        raise ConfigError(f"--ratio is required for profile '{args.profile}' (a number > 1)")
    dataset = read_dataset(args.dataset, args.root)
    split = make_split(dataset, args.profile, ratio, seed, n_max)
    path = split.save(args.out)
    counts = ", ".join(f"{c}={split.counts[c]}" for c in split.class_order)
    print(f"wrote {path}: {args.profile} ratio {split.ratio:g}, {len(split.class_order)} classes ({counts})")
    print(f"sha256 {split.sha256}")
    return 0
