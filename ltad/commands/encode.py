"""`ltad encode`: run the frozen encoder once over train and test shards, writing fp16 feature shards."""

from __future__ import annotations

import argparse

from ltad.commands.common import add_run_arguments, load_config


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="re-encode every shard, even when a complete or partial cache exists",
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "encode",
        help="cache encoder features beside the image shards (or at data.cache_uri)",
        description=__doc__,
    )
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ltad.data.manifest import read_manifest
    from ltad.errors import ConfigError
    from ltad.models.encoder import Encoder
    from ltad.training.feature_cache import encode

    cfg = load_config(args)
    if not cfg.data.uri:
        raise ConfigError(
            "data.uri is empty: pass --data s3://bucket/prefix (a prefix holding manifest.json)"
        )
    read_manifest(cfg.data.uri)  # a missing or bad prefix fails before the encoder is built
    uri = encode(
        Encoder(cfg.model.encoder),
        cfg.data.uri,
        batch_size=cfg.eval.batch_size,
        force=args.force,
        root=cfg.data.cache_uri,
        num_workers=cfg.data.loader_workers,
    )
    print(uri)
    return 0
