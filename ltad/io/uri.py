"""Every location ltad takes (data, output, storage, roots, model, images) resolved in one place.

ltad reads and writes two kinds of location: `s3://bucket/key` (any S3-compatible store) and local
paths, which are made absolute here so that a Ray worker on another node or in another working
directory sees the same folder. Anything that looks like a URI but is not one of them (`gs://...`,
`S3://...`, `s3:/b/x`, `s3://` without a bucket) is one ConfigError naming the flag or key and the
value, so no code path ever treats `gs://b/x` as a local folder called `gs:`.
"""

from __future__ import annotations

import os
import re

from ltad.errors import ConfigError

S3 = "s3"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(/*)(.*)$")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]*$")


def _fsspec_hint(scheme: str) -> str:
    """What fsspec knows about `scheme`: the package it needs, or '' when fsspec does not know it."""
    try:
        from fsspec.registry import known_implementations
    except ImportError:
        return ""
    impl = known_implementations.get(scheme)
    if not impl:
        return ""
    package = impl["class"].split(".")[0]
    return f" (fsspec serves it with the package '{package}')"


def scheme(value: str, what: str = "location") -> str:
    """'s3' or 'local' for a valid location; a ConfigError naming `what` and `value` otherwise."""
    text = str(value)
    if not text:
        raise ConfigError(f"{what} is empty: give s3://bucket/prefix or a local path")
    match = _SCHEME.match(text)
    if match is None or (len(match.group(1)) == 1 and os.name == "nt"):  # no scheme: a local path
        return "local"
    name, slashes, rest = match.groups()
    if name == "file":
        if slashes not in ("//", "///") or (slashes == "//" and not rest.startswith("/")):
            raise ConfigError(f"{what} '{text}' is not a valid file URI: expected file:///absolute/path")
        return "local"
    if name.lower() == S3 and name != S3:
        fixed = f"s3://{text.split(':', 1)[1].lstrip('/')}"
        raise ConfigError(f"{what} '{text}': the scheme must be lower-case 's3://' (did you mean '{fixed}'?)")
    if name == S3:
        if slashes != "//":
            raise ConfigError(
                f"{what} '{text}' is not a valid S3 URI: expected s3://bucket/prefix "
                f"(did you mean 's3://{rest.lstrip('/')}'?)"
            )
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"{what} '{text}' has no bucket: expected s3://bucket/prefix")
        if not _BUCKET.match(bucket):
            raise ConfigError(
                f"{what} '{text}': '{bucket}' is not a valid bucket name (letters, digits, '.', '-', '_')"
            )
        return S3
    if slashes or _fsspec_hint(name.lower()):
        hint = _fsspec_hint(name.lower())
        raise ConfigError(
            f"{what} '{text}': scheme '{name}' is not supported{hint}; ltad reads and writes s3:// "
            "(any S3-compatible store: set AWS_ENDPOINT_URL for GCS, MinIO or SeaweedFS) and local paths"
        )
    return "local"  # e.g. 'a:b' with no slashes: a relative file name containing a colon


def is_s3(value: str) -> bool:
    """True for a valid `s3://bucket/...`, False for a local path (or ''); a ConfigError for anything else."""
    return bool(str(value)) and scheme(value) == S3


def resolve(value: str, what: str = "location", *, local_only: bool = False) -> str:
    """The location as ltad uses it: an S3 URI unchanged, a local path (or file:// URI) absolute.

    `what` names the flag or config key in errors (e.g. '--out', 'run.output'); `local_only` rejects
    S3 where a command can only use local files.
    """
    text = str(value)
    kind = scheme(text, what)
    if kind == S3:
        if local_only:
            raise ConfigError(f"{what} '{text}' must be a local path here, not an S3 URI")
        return text
    if text.startswith("file://"):
        text = text[len("file://") :]
    return os.path.abspath(os.path.expanduser(text))


def resolve_optional(value: str | None, what: str, *, local_only: bool = False) -> str | None:
    """`resolve` for an optional flag or key: None and '' stay as they are."""
    return resolve(value, what, local_only=local_only) if value else value


def resolve_run_locations(cfg):  # cfg: ltad.config.LTADConfig (the base layer; typed loosely here)
    """`cfg` with data.uri, data.cache_uri, run.output and run.storage_path resolved (errors name the key)."""
    from dataclasses import replace

    return replace(
        cfg,
        data=replace(
            cfg.data,
            uri=resolve_optional(cfg.data.uri, "data.uri"),
            cache_uri=resolve_optional(cfg.data.cache_uri, "data.cache_uri"),
        ),
        run=replace(
            cfg.run,
            output=resolve(cfg.run.output, "run.output"),
            storage_path=resolve_optional(cfg.run.storage_path, "run.storage_path"),
        ),
    )
