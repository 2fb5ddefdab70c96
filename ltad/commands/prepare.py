"""`ltad prepare`: dataset + split -> WebDataset shards and manifest.json at a local dir or s3:// prefix.

The dataset root is a local directory or an s3:// prefix. The split is a file from `ltad split`
(--split) or is made here from --profile/--ratio (the same flags as `ltad split`). With
`--dataset synth` a local root without the generated dataset is generated first (--synth-* flags).
The split file is stored beside the shards as `{out}/split.json`. Work is split by (class, chunk) over
--workers local processes, or over Ray tasks with --ray (jobs/prepare.py submitted to a cluster
uses Ray unless --workers is given).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from ltad.commands.split import add_profile_arguments
from ltad.commands.synth import add_synth_arguments
from ltad.data.datasets import DATASETS
from ltad.errors import ConfigError
from ltad.io.uri import resolve


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset layout")
    p.add_argument("--root", required=True, help="dataset root: a local directory or an s3:// prefix")
    p.add_argument("--out", required=True, help="output prefix: s3://bucket/prefix or a local directory")
    p.add_argument("--split", help="split file from `ltad split` (or a published split); else give --profile")
    add_profile_arguments(p, required=False)
    p.add_argument("--shard-size-mb", default="256", help="roll over to a new shard at this size (MB)")
    p.add_argument("--test-shard-samples", default="64", help="samples per test shard (spreads evaluation)")
    p.add_argument(
        "--max-size",
        default=None,
        metavar="PX",
        help="resize images whose longer side exceeds PX (re-encoded in their own format); default: keep "
        "the source bytes as they are",
    )
    p.add_argument("--workers", default="1", help="local processes that check and write shards")
    p.add_argument(
        "--ray",
        action="store_true",
        help="run the work as Ray tasks on the cluster in RAY_ADDRESS (else a local Ray); on several "
        "nodes --root and --out must be s3://",
    )
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
    from ltad.data.prepare import prepare
    from ltad.io import storage
    from ltad.log import get_logger

    log = get_logger("prepare").info
    try:
        size, per_test = float(args.shard_size_mb), int(args.test_shard_samples)
    except ValueError:
        raise ConfigError(
            f"--shard-size-mb must be a number and --test-shard-samples an int, got "
            f"{args.shard_size_mb!r} and {args.test_shard_samples!r}"
        ) from None
    max_size = None if args.max_size is None else parse_number("--max-size", args.max_size, int)
    if max_size is not None and max_size < 1:
        raise ConfigError(f"--max-size must be an int >= 1 (pixels), got {args.max_size!r}")
    workers = parse_number("--workers", args.workers, int)
    if workers is None or workers < 1:
        raise ConfigError(f"--workers must be an int >= 1, got {args.workers!r}")
    if args.ray and workers != 1:
        raise ConfigError("give either --ray (Ray tasks) or --workers N (local processes), not both")
    root = resolve(args.root, "--root")
    out = resolve(args.out, "--out")
    split_file = resolve(args.split, "--split", local_only=True) if args.split else None
    if split_file is None and args.profile is None:
        raise ConfigError("give --split FILE (from `ltad split`) or --profile (and --ratio) to make one")
    if split_file is not None and args.profile is not None:
        raise ConfigError("give either --split or --profile, not both")
    local_root = not storage.is_s3(root)
    if args.dataset == "synth" and local_root and not Path(root, "synth.json").is_file():
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
    if local_root and not Path(root).is_dir():
        raise ConfigError(f"--root '{args.root}' is not a directory")
    with tempfile.TemporaryDirectory(prefix="ltad-split-") as tmp:
        if split_file is None:
            split = make_split_from_args(args, root)
            split_file = str(split.save(Path(tmp) / "split.json"))
            log(f"split {describe(split)}")
        if args.ray:
            manifest = _prepare_on_ray(args.dataset, root, split_file, out, size, per_test, max_size)
        else:
            manifest = prepare(
                args.dataset, root, split_file, out, size, per_test, max_size=max_size, workers=workers
            )
        storage.upload_file(split_file, storage.join(out, "split.json"))
    summary = {
        s: {"shards": len(manifest.shards[s]), "samples": manifest.samples(s)}
        for s in manifest.present_splits
    }
    print(json.dumps({"out": out, **summary}), flush=True)
    return 0


def _prepare_on_ray(dataset, root, split_file, out, size, per_test, max_size):
    """`prepare` with its check and write tasks on the Ray cluster (RAY_ADDRESS, else a local Ray)."""
    import ray

    from ltad.data.prepare import prepare
    from ltad.training.cluster import connect
    from ltad.training.ray_map import check_reachable, ray_tasks

    started = connect()
    try:
        check_reachable(("--root", root), ("--out", out))
        return prepare(dataset, root, split_file, out, size, per_test, max_size=max_size, executor=ray_tasks)
    finally:
        if started:
            ray.shutdown()


def job_argv(argv: list[str] | None) -> list[str]:
    """jobs/prepare.py's arguments: a job submitted to a Ray cluster (`ray job submit`) runs its work
    as Ray tasks (`--ray`) unless the arguments choose `--workers` or `--ray` themselves."""
    import sys

    from ltad.training.cluster import JOB_CONFIG_VAR

    args = list(sys.argv[1:] if argv is None else argv)
    chosen = any(a == "--ray" or a == "--workers" or a.startswith("--workers=") for a in args)
    if os.environ.get(JOB_CONFIG_VAR) and not chosen:
        args.append("--ray")
    return args
