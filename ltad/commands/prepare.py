"""`ltad prepare`: dataset + split -> WebDataset shards and manifest.json at a local dir or s3:// prefix.

The split is a file from `ltad split` (--split) or is made here from --profile/--ratio (the same flags
as `ltad split`). With `--dataset synth` a root without the generated dataset is generated first
(--synth-* flags). The split file is stored beside the shards as `{out}/split.json`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from ltad.commands.split import add_profile_arguments
from ltad.commands.synth import add_synth_arguments
from ltad.data.datasets import DATASETS
from ltad.data.uri import resolve
from ltad.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--out", required=True, help="output prefix: s3://bucket/prefix or a local directory")
    p.add_argument("--split", help="split file from `ltad split` (or a published split); else give --profile")
    add_profile_arguments(p, required=False)
    p.add_argument("--shard-size-mb", default="256", help="roll over to a new shard at this size (MB)")
    p.add_argument("--test-shard-samples", default="64", help="samples per test shard (spreads evaluation)")
    add_synth_arguments(p, prefix="synth-")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare",
        help="write train/test shards and a manifest to s3:// or a directory",
        description=__doc__.splitlines()[0],
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ltad.commands.split import describe, make_split_from_args, parse_number
    from ltad.data import storage
    from ltad.data.prepare import prepare
    from ltad.log import get_logger

    log = get_logger("prepare").info
    try:
        size, per_test = float(args.shard_size_mb), int(args.test_shard_samples)
    except ValueError:
        raise ConfigError(
            f"--shard-size-mb must be a number and --test-shard-samples an int, got "
            f"{args.shard_size_mb!r} and {args.test_shard_samples!r}"
        ) from None
    root = resolve(args.root, "--root", local_only=True)
    out = resolve(args.out, "--out")
    split_file = resolve(args.split, "--split", local_only=True) if args.split else None
    if split_file is None and args.profile is None:
        raise ConfigError("give --split FILE (from `ltad split`) or --profile (and --ratio) to make one")
    if split_file is not None and args.profile is not None:
        raise ConfigError("give either --split or --profile, not both")
    if args.dataset == "synth" and not Path(root, "synth.json").is_file():
        from ltad.data.synth import synthesize

        log(f"generating the synthetic dataset at {root}")
        seed = parse_number("--seed", args.seed, int)
        synthesize(
            root,
            args.synth_classes,
            args.synth_image_size,
            args.synth_train_per_class,
            args.synth_test_per_class,
            seed or 0,
        )
    if not Path(root).is_dir():
        raise ConfigError(f"--root '{args.root}' is not a directory")
    with tempfile.TemporaryDirectory(prefix="ltad-split-") as tmp:
        if split_file is None:
            split = make_split_from_args(args, root)
            split_file = str(split.save(Path(tmp) / "split.json"))
            log(f"split {describe(split)}")
        manifest = prepare(args.dataset, root, split_file, out, size, per_test)
        storage.upload_file(split_file, storage.join(out, "split.json"))
    summary = {
        s: {"shards": len(manifest.shards[s]), "samples": manifest.samples(s)}
        for s in manifest.present_splits
    }
    print(json.dumps({"out": out, **summary}), flush=True)
    return 0
