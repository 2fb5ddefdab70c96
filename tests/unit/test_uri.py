"""ltad/io/uri.py: every location resolved in one place; a bad scheme is one ConfigError naming the flag."""

from __future__ import annotations

import os

import pytest

from ltad.commands.common import load_config
from ltad.errors import ConfigError
from ltad.io import storage, uri


def test_s3_uris_pass_unchanged_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert uri.resolve("s3://bucket/pre/x") == "s3://bucket/pre/x"
    assert uri.resolve("s3://b") == "s3://b"
    assert uri.resolve("runs/x", "--out") == str(tmp_path / "runs" / "x")
    assert uri.resolve(str(tmp_path / "a")) == str(tmp_path / "a")
    assert uri.resolve(f"file://{tmp_path}/a") == str(tmp_path / "a")
    assert uri.resolve("~/x") == os.path.expanduser("~/x")
    assert uri.resolve("a:b") == str(tmp_path / "a:b")  # a colon in a file name is not a scheme
    assert uri.resolve_optional("", "run.storage_path") == ""
    assert uri.resolve_optional(None, "--root") is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "gs://b/x",
            r"--out 'gs://b/x': scheme 'gs' is not supported \(fsspec serves it with the package 'gcsfs'\)",
        ),
        (
            "S3://b/x",
            r"--out 'S3://b/x': the scheme must be lower-case 's3://' \(did you mean 's3://b/x'\?\)",
        ),
        (
            "s3:/b/x",
            r"--out 's3:/b/x' is not a valid S3 URI: expected s3://bucket/prefix \(did you mean 's3://b/x'\?\)",
        ),
        ("s3:b/x", r"--out 's3:b/x' is not a valid S3 URI"),
        ("s3://", r"--out 's3://' has no bucket"),
        ("s3:///x", r"--out 's3:///x' is not a valid S3 URI"),
        ("s3://b d/x", r"'b d' is not a valid bucket name"),
        ("hdfs://nn/x", r"scheme 'hdfs' is not supported"),
        ("foo://x", r"scheme 'foo' is not supported"),
        ("file:relative", r"not a valid file URI"),
        ("", r"--out is empty"),
    ],
)
def test_malformed_or_unsupported_locations_are_one_config_error_naming_the_flag(value, message):
    with pytest.raises(ConfigError, match=message):
        uri.resolve(value, "--out")


def test_local_only_rejects_s3():
    with pytest.raises(ConfigError, match="--images 's3://b/x' must be a local path here"):
        uri.resolve("s3://b/x", "--images", local_only=True)


def test_storage_never_treats_an_unknown_scheme_as_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("gs://b/x", "S3://b/x", "s3:/b/x"):
        with pytest.raises(ConfigError):
            storage.write_bytes(storage.join(bad, "f.bin"), b"x")
        with pytest.raises(ConfigError):
            storage.list(bad)
    assert not any(tmp_path.iterdir()), "a bad URI created a local folder"
    assert storage.is_s3("s3://b/x") and not storage.is_s3(str(tmp_path)) and not storage.is_s3("")


def test_run_config_locations_name_the_flag_or_the_key(tmp_path):
    class Args:
        config = None
        data = None
        output = None
        set: list[str] = []

    args = Args()
    args.output = "gs://b/x"
    with pytest.raises(ConfigError, match="--out 'gs://b/x'"):
        load_config(args)
    args.output, args.set = None, ["run.storage_path=s3:/b/ray"]
    with pytest.raises(ConfigError, match="run.storage_path 's3:/b/ray'"):
        load_config(args)
    args.set, args.data, args.output = [], "s3://bucket/shards", str(tmp_path / "out")
    cfg = load_config(args)
    assert cfg.data.uri == "s3://bucket/shards" and cfg.run.output == str(tmp_path / "out")
    assert os.path.isabs(cfg.run.output)
