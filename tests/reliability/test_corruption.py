"""Corrupt shards: every kind is detected; evaluation and inspect fail naming the shard; training
skips within `data.max_bad_samples`, reports the count, and fails beyond it.

Kinds: a shard truncated mid-member and at a member boundary, a corrupt tar header, a corrupt PNG,
a lost mask member, and a manifest whose sample count disagrees with the shard.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from ltad.errors import DataError
from tests.reliability.conftest import run_cli

pytestmark = pytest.mark.integration


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def truncate_mid_member(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 + 100])


def truncate_at_boundary(path: Path) -> None:
    """Cut after the first sample's last member: the tar stream ends 'normally', only the count tells."""
    members = _members(path)
    key = members[0].name.split(".")[0]
    last = [m for m in members if m.name.split(".")[0] == key][-1]
    end = last.offset_data + -(-last.size // 512) * 512
    path.write_bytes(path.read_bytes()[:end])


def corrupt_header(path: Path) -> None:
    """Overwrite the header block of a member in the middle of the shard."""
    member = _members(path)[len(_members(path)) // 2]
    data = bytearray(path.read_bytes())
    data[member.offset : member.offset + 512] = bytes(range(256)) * 2
    path.write_bytes(bytes(data))


def corrupt_png(path: Path) -> None:
    """Garble the signature and header chunk of the first image (same length: the tar stays valid)."""
    member = next(m for m in _members(path) if m.name.endswith(".png") and not m.name.endswith("mask.png"))
    data = bytearray(path.read_bytes())
    data[member.offset_data : member.offset_data + 32] = b"\x00" * 32
    path.write_bytes(bytes(data))


def drop_mask(path: Path) -> None:
    """Rewrite the shard without the first mask member (a defective sample loses its mask)."""
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    dropped = next(m.name for m, _ in members if m.name.endswith(".mask.png"))
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for m, data in members:
            if m.name != dropped:
                tar.addfile(m, io.BytesIO(data))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated_mid_member": truncate_mid_member,
    "truncated_at_boundary": truncate_at_boundary,
    "corrupt_tar_header": corrupt_header,
    "corrupt_png": corrupt_png,
    "missing_mask": drop_mask,
}


def count_mismatch(prefix: Path, shard: str) -> None:
    """The manifest claims one sample more for `shard` than it holds (kept self-consistent)."""
    path = prefix / "manifest.json"
    doc = json.loads(path.read_text())
    split = shard.split("/")[0]
    entry = next(e for e in doc["shards"][split] if e["name"] == shard)
    cls = next(iter(entry["per_class"]))
    entry["samples"] += 1
    entry["per_class"][cls] += 1
    doc["counts"][split][cls] += 1
    path.write_text(json.dumps(doc))


def _copy(local_shards: Path, tmp: Path) -> Path:
    dst = tmp / "shards"
    shutil.copytree(local_shards, dst)
    return dst


def _test_shard_with_mask(prefix: Path) -> str:
    """A test shard holding at least one defective sample (so every corruption kind applies)."""
    from ltad.data.manifest import read_manifest

    for entry in read_manifest(str(prefix)).shards["test"]:
        if any(m.name.endswith(".mask.png") for m in _members(prefix / entry.name)):
            return entry.name
    raise AssertionError("no test shard with a mask")


def _corrupt(prefix: Path, shard: str, kind: str) -> None:
    if kind == "count_mismatch":
        count_mismatch(prefix, shard)
    else:
        CORRUPTIONS[kind](prefix / shard)


KINDS = [*CORRUPTIONS, "count_mismatch"]


@pytest.mark.parametrize("kind", KINDS)
def test_evaluation_stream_fails_naming_the_shard(kind, local_shards, tmp_path):
    from ltad.data.manifest import read_manifest
    from ltad.data.streams import eval_stream

    prefix = _copy(local_shards, tmp_path)
    shard = _test_shard_with_mask(prefix)
    _corrupt(prefix, shard, kind)
    manifest = read_manifest(str(prefix))
    stream = eval_stream(str(prefix), manifest, image_size=32, rank=0, world_size=1)
    with pytest.raises(DataError) as err:
        for _ in stream:
            pass
    assert str(prefix / shard) in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_inspect_reports_the_shard(kind, local_shards, tmp_path):
    from ltad.data.inspect import inspect

    prefix = _copy(local_shards, tmp_path)
    shard = _test_shard_with_mask(prefix)
    _corrupt(prefix, shard, kind)
    report = inspect(str(prefix))
    assert report["matches_manifest"] is False and report["splits"]["train"]["matches_manifest"]
    errors = report["splits"]["test"]["errors"]
    assert len(errors) == 1 and str(prefix / shard) in errors[0], errors


def test_inspect_cli_exits_1_on_a_corrupt_shard(local_shards, tmp_path):
    prefix = _copy(local_shards, tmp_path)
    shard = _test_shard_with_mask(prefix)
    corrupt_png(prefix / shard)
    ran = run_cli(["inspect", str(prefix)])
    assert ran.rc == 1 and "Traceback" not in ran.stderr
    assert shard in json.loads(ran.stdout)["splits"]["test"]["errors"][0]


def _train_stream(prefix: Path, budget: int, epoch_samples: int = 40):
    from ltad.data.manifest import read_manifest
    from ltad.data.streams import train_stream

    manifest = read_manifest(str(prefix))
    return train_stream(
        str(prefix),
        manifest,
        image_size=32,
        epoch_samples=epoch_samples,
        seed=0,
        rank=0,
        world_size=1,
        class_balance=1.0,  # every class drawn equally often: the corrupt one is met
        max_bad_samples=budget,
    )


def _head_shard(prefix: Path) -> tuple[str, int]:
    from ltad.data.manifest import read_manifest

    entry = max(read_manifest(str(prefix)).shards["train"], key=lambda e: e.samples)
    return entry.name, entry.samples


# expected bad-sample count of each corruption of a 6-sample train shard (None: depends on the cut)
TRAIN_KINDS = {
    "corrupt_png": 1,
    "truncated_at_boundary": 5,
    "truncated_mid_member": None,
    "count_mismatch": 1,
}


@pytest.mark.parametrize("kind", list(TRAIN_KINDS))
def test_training_skips_within_budget_and_reports(kind, local_shards, tmp_path, capfd):
    prefix = _copy(local_shards, tmp_path)
    shard, n = _head_shard(prefix)
    _corrupt(prefix, shard, kind)
    stream = _train_stream(prefix, budget=n)
    samples = list(stream)
    assert len(samples) == 40  # the epoch is full: bad samples were replaced, not dropped
    expected = TRAIN_KINDS[kind]
    assert stream.bad_samples == expected if expected is not None else 1 <= stream.bad_samples <= n
    # each skip travels with the sample that replaced it, so the trainer can sum them into its metrics
    assert sum(int(s["bad_skipped"]) for s in samples) == stream.bad_samples
    err = capfd.readouterr().err
    assert f"{stream.bad_samples} of data.max_bad_samples={n} used" in err and shard in err


@pytest.mark.parametrize("kind", list(TRAIN_KINDS))
def test_training_fails_beyond_budget_naming_the_shard(kind, local_shards, tmp_path):
    prefix = _copy(local_shards, tmp_path)
    shard, _ = _head_shard(prefix)
    _corrupt(prefix, shard, kind)
    with pytest.raises(DataError) as err:
        list(_train_stream(prefix, budget=0))
    assert "more than data.max_bad_samples=0" in str(err.value) and shard in str(err.value)


def test_clean_training_stream_counts_nothing(local_shards):
    stream = _train_stream(local_shards, budget=0)
    samples = list(stream)
    assert len(samples) == 40 and stream.bad_samples == 0
    assert all(s["bad_skipped"] == 0 for s in samples)
