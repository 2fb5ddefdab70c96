"""Ray job (or plain script): dataset + long-tailed split -> shards + manifest on S3.

    python jobs/prepare.py --dataset synth --root data/synth --profile exp --ratio 10 \
        --out s3://bucket/demo/shards [--split existing_split.json]

With `--dataset synth` a missing root is generated first (the offline pseudo-industrial dataset).
The split file is stored beside the shards as `{out}/split.json`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's `ltad` package

from ltad.errors import ConfigError, UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs/prepare.py", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="mvtec | visa | dagm | folder | synth")
    p.add_argument("--root", required=True, help="dataset root directory")
    p.add_argument("--out", required=True, help="shard prefix: s3://bucket/prefix or a local directory")
    p.add_argument("--split", help="an existing split file (else one is made from --profile/--ratio)")
    p.add_argument("--profile", default="exp", help="exp | step | pareto | full")
    p.add_argument("--ratio", type=float, default=10.0, help="head/tail ratio (> 1; ignored for full)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synth-classes", type=int, default=8)
    p.add_argument("--synth-image-size", type=int, default=128)
    p.add_argument("--synth-train", type=int, default=60, help="synthetic normal training images per class")
    p.add_argument("--synth-test", type=int, default=24, help="synthetic test images per class")
    p.add_argument("--test-shard-samples", type=int, default=64)
    args = p.parse_args(argv)
    try:
        from ltad.data import storage
        from ltad.data.datasets import read_dataset
        from ltad.data.prepare import prepare
        from ltad.data.splits import make_split
        from ltad.data.synth import synthesize
        from ltad.log import get_logger

        log = get_logger("prepare").info

        if args.dataset == "synth" and not Path(args.root, "synth.json").is_file():
            log(f"generating the synthetic dataset at {args.root}")
            synthesize(
                args.root,
                args.synth_classes,
                args.synth_image_size,
                args.synth_train,
                args.synth_test,
                args.seed,
            )
        if not Path(args.root).is_dir():
            raise ConfigError(f"--root '{args.root}' is not a directory")
        with tempfile.TemporaryDirectory(prefix="ltad-split-") as tmp:
            split_path = args.split
            if split_path is None:
                split = make_split(read_dataset(args.dataset, args.root), args.profile, args.ratio, args.seed)
                split_path = split.save(Path(tmp) / "split.json")
                counts = ", ".join(f"{c}={split.counts[c]}" for c in split.class_order)
                log(f"split {args.profile} ratio {split.ratio:g}: {counts}")
            manifest = prepare(
                args.dataset, args.root, split_path, args.out, test_shard_samples=args.test_shard_samples
            )
            storage.upload_file(split_path, storage.join(args.out, "split.json"))
        print(
            f"{args.out}: {manifest.samples('train')} train / {manifest.samples('test')} test samples",
            flush=True,
        )
        return 0
    except UserError as exc:
        print(f"jobs/prepare.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
