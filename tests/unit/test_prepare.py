"""prepare.py: the pure plan, parallel and serial runs giving the same bytes, kept JPEGs, --max-size,
and the bad-input promises (unreadable image, empty root, a crash half-way)."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltad.data import prepare as prepare_module
from ltad.data.datasets import read_dataset
from ltad.data.manifest import read_manifest, try_read_manifest
from ltad.data.prepare import plan, prepare
from ltad.data.progress import Progress
from ltad.data.records import Record
from ltad.data.shards import iterate_shard
from ltad.data.splits import make_split
from ltad.data.tree import scan
from ltad.errors import DataError
from ltad.io import storage


def _jpeg_tree(root: Path, classes=("a", "b"), train=5, test=2, size=(96, 64)) -> Path:
    """MVTec layout with JPEG images (noisy, like photographs) and PNG masks."""
    rng = np.random.default_rng(0)

    def jpeg(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        base = np.linspace(0, 200, size[0], dtype=np.float32)[None, :, None]
        noise = rng.normal(0, 20, (size[1], size[0], 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)

    for cls in classes:
        for i in range(train):
            jpeg(root / cls / "train" / "good" / f"{i:03d}.jpg")
        for i in range(test):
            jpeg(root / cls / "test" / "good" / f"{i:03d}.jpg")
            jpeg(root / cls / "test" / "cut" / f"{i:03d}.jpg")
            mask = np.zeros((size[1], size[0]), np.uint8)
            mask[10:20, 10:30] = 255
            (root / cls / "ground_truth" / "cut").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / cls / "ground_truth" / "cut" / f"{i:03d}_mask.png")
    return root


def _split(root: Path, tmp: Path) -> Path:
    return make_split(read_dataset("mvtec", root), "exp", 2, 0).save(tmp / "split.json")


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.tar"))}


def test_plan_cuts_by_listed_size_and_names_shards_deterministically():
    rec = [Record(f"a/train/good/{i}.jpg", "a", 0, "train", 0, None, "good") for i in range(5)]
    rec += [Record(f"b/train/good/{i}.jpg", "b", 1, "train", 0, None, "good") for i in range(2)]
    test = [Record(f"a/test/cut/{i}.jpg", "a", 0, "test", 1, f"a/gt/{i}.png", "cut") for i in range(5)]
    sizes = {r.path: 1000 for r in rec + test} | {r.mask_path: 100 for r in test}
    items = plan(("a", "b", "c"), rec[::-1], test, sizes, max_bytes=10_000, test_shard_samples=2)
    assert [(i.name, len(i.records)) for i in items] == [
        ("train/a-000000.tar", 2),  # ~3.6 kB a record: two fit in 10 kB, three do not
        ("train/a-000001.tar", 2),
        ("train/a-000002.tar", 1),
        ("train/b-000000.tar", 2),
        ("test/test-000000.tar", 2),  # test shards: at most test_shard_samples
        ("test/test-000001.tar", 2),
        ("test/test-000002.tar", 1),
    ]
    assert [r.path for r in items[0].records] == [rec[4].path, rec[3].path]  # split order kept
    assert plan(("a", "b", "c"), rec[::-1], test, sizes, 10_000, 2) == items  # pure


def test_workers_1_and_2_write_identical_shards_with_jpeg_kept(tmp_path):
    root = _jpeg_tree(tmp_path / "data")
    split = _split(root, tmp_path)
    lines: list[str] = []
    one = prepare("mvtec", root, split, str(tmp_path / "one"), test_shard_samples=3, log=lines.append)
    two = prepare(
        "mvtec", root, split, str(tmp_path / "two"), test_shard_samples=3, workers=2, log=lambda m: None
    )
    assert one == two
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert {line.split(":")[0] for line in lines if "/s" in line} >= {"scan", "check", "write/upload"}
    # JPEG kept as it is: every image member is its source file's bytes
    kept = 0
    for entry in (e for split in one.shards.values() for e in split):
        for sample in iterate_shard(str(tmp_path / "one" / entry.name), entry.samples):
            assert sample["jpg"] == (root / f"{sample['__key__']}.jpg").read_bytes()
            kept += len(sample["jpg"])
    assert kept > 0 and one.samples("test") == 2 * 4
    assert one.image_sizes == {"a": [[96, 64]], "b": [[96, 64]]}


def test_rerun_skips_identical_shards(tmp_path):
    root = _jpeg_tree(tmp_path / "data", classes=("a",))
    split = _split(root, tmp_path)
    first = prepare("mvtec", root, split, str(tmp_path / "out"), log=lambda m: None)
    lines: list[str] = []
    again = prepare("mvtec", root, split, str(tmp_path / "out"), log=lines.append)
    assert again == first
    assert (
        f"0 shards uploaded, {len(first.shards['train']) + len(first.shards['test'])} unchanged" in lines[-1]
    )


def test_max_size_resizes_and_records_the_stored_sizes(tmp_path):
    root = _jpeg_tree(tmp_path / "data", classes=("a",))
    manifest = prepare(
        "mvtec", root, _split(root, tmp_path), str(tmp_path / "out"), log=lambda m: None, max_size=48
    )
    assert manifest.image_sizes == {"a": [[48, 32]]}
    entry = manifest.shards["test"][0]
    for sample in iterate_shard(str(tmp_path / "out" / entry.name), entry.samples):
        with Image.open(io.BytesIO(sample["jpg"])) as im:
            assert im.size == (48, 32)
        if "mask.png" in sample:
            with Image.open(io.BytesIO(sample["mask.png"])) as m:
                assert m.size == (48, 32)


def test_unreadable_image_names_its_path_and_publishes_nothing(tmp_path):
    root = _jpeg_tree(tmp_path / "data", classes=("a",))
    split = _split(root, tmp_path)
    out = tmp_path / "out"
    before = prepare("mvtec", root, split, str(out), log=lambda m: None)
    shards = _files(out)
    bad = root / "a" / "test" / "good" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated: only a full decode sees it
    with pytest.raises(DataError, match="cannot read image 'a/test/good/001.jpg' under"):
        prepare("mvtec", root, split, str(out), log=lambda m: None, workers=2)
    assert read_manifest(str(out)) == before  # the previous manifest is still there and valid
    assert _files(out) == shards


def test_each_pass_reads_every_source_once_with_reads_in_flight(tmp_path, monkeypatch):
    root = _jpeg_tree(tmp_path / "data", train=12)
    split = _split(root, tmp_path)
    real, reads, lock = prepare_module._read, [], threading.Lock()
    running = {"now": 0, "most": 0}

    def slow_read(base: str, rel: str) -> bytes:  # a store answering after 5 ms
        with lock:
            reads.append(rel)
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        time.sleep(0.005)
        with lock:
            running["now"] -= 1
        return real(base, rel)

    monkeypatch.setattr(prepare_module, "_read", slow_read)
    manifest = prepare("mvtec", root, split, str(tmp_path / "out"), log=lambda m: None)
    sources = {str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".jpg", ".png")}
    used = set(reads)
    assert Counter(reads) == {rel: 2 for rel in used}  # once in the check pass, once in the write pass
    assert len(used) == manifest.samples("train") + manifest.samples("test") + 2 * 2  # + the 4 masks
    assert used <= sources
    assert 1 < running["most"] <= prepare_module.READS_IN_FLIGHT


def test_crash_half_way_never_leaves_a_manifest_naming_missing_shards(tmp_path, monkeypatch):
    root = _jpeg_tree(tmp_path / "data")
    split = _split(root, tmp_path)
    out = tmp_path / "out"
    prepare("mvtec", root, split, str(out), test_shard_samples=2, log=lambda m: None)
    for p in (root / "a" / "train" / "good").glob("*.jpg"):  # the next run writes different shards
        p.write_bytes(p.read_bytes())
        Image.open(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p, quality=80)
    real, calls = prepare_module._publish_shard, []

    def dies_on_the_second_shard(target, path, info):  # after the first shard of the lane is uploaded
        calls.append(info.name)
        if len(calls) == 2:
            raise RuntimeError("worker lost")
        return real(target, path, info)

    monkeypatch.setattr(prepare_module, "_publish_shard", dies_on_the_second_shard)
    with pytest.raises(RuntimeError, match="worker lost"):
        prepare("mvtec", root, split, str(out), test_shard_samples=2, log=lambda m: None)
    manifest = try_read_manifest(str(out))
    if manifest is not None:  # a manifest that is there names only complete shards with its hashes
        for entry in (e for s in manifest.shards.values() for e in s):
            assert list(iterate_shard(str(out / entry.name), entry.samples))
    assert len(calls) == 2
    monkeypatch.setattr(prepare_module, "_publish_shard", real)
    assert prepare("mvtec", root, split, str(out), test_shard_samples=2, log=lambda m: None) == read_manifest(
        str(out)
    )


def test_empty_roots_are_errors_naming_them(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"dataset root '{tmp_path / 'empty'}' has no class folders"):
        prepare("mvtec", tmp_path / "empty", tmp_path / "s.json", str(tmp_path / "out"), log=lambda m: None)
    monkeypatch.setattr(storage, "list_sizes", lambda prefix: [])
    with pytest.raises(DataError, match="dataset root 's3://bucket/nothing/here' lists no objects"):
        scan("s3://bucket/nothing/here")


def test_tree_from_a_listing_reads_like_the_directory(tmp_path, monkeypatch):
    root = _jpeg_tree(tmp_path / "data", classes=("a", "b"))
    local = read_dataset("mvtec", root)
    listed = [
        (f"s3://bkt/data/{p.relative_to(root)}", p.stat().st_size) for p in root.rglob("*") if p.is_file()
    ]
    monkeypatch.setattr(storage, "list_sizes", lambda prefix: sorted(listed))
    remote = read_dataset("mvtec", "s3://bkt/data")
    assert remote.records == local.records and remote.classes == local.classes
    assert (
        scan("s3://bkt/data").files["a/train/good/000.jpg"] == (root / "a/train/good/000.jpg").stat().st_size
    )


def test_progress_lines_have_count_rate_and_eta():
    now = [0.0]
    lines: list[str] = []
    progress = Progress("check", total=100, unit="images", log=lines.append, every=5, clock=lambda: now[0])
    now[0] = 2.0
    progress.add(10)
    assert lines == []  # not yet: at most one line per 5 s
    now[0] = 10.0
    progress.add(40)
    assert lines == ["check: 50/100 images, 5.0/s, ETA 10s"]
    now[0] = 20.0
    progress.add(50)
    progress.finish()
    assert lines[-1] == "check: 100/100 images, 5.0/s, 20s elapsed"


def test_a_submitted_prepare_job_runs_on_ray_unless_told_otherwise(monkeypatch):
    from ltad.commands.prepare import job_argv
    from ltad.training.cluster import JOB_CONFIG_VAR

    monkeypatch.delenv(JOB_CONFIG_VAR, raising=False)
    assert job_argv(["--dataset", "mvtec"]) == ["--dataset", "mvtec"]
    monkeypatch.setenv(JOB_CONFIG_VAR, "{}")
    assert job_argv(["--dataset", "mvtec"]) == ["--dataset", "mvtec", "--ray"]
    assert job_argv(["--workers", "4"]) == ["--workers", "4"]
    assert job_argv(["--workers=4"]) == ["--workers=4"]


def test_workers_and_max_size_flags_are_checked(tmp_path, capsys):
    from ltad import cli

    base = [
        "prepare",
        "--dataset",
        "mvtec",
        "--root",
        str(tmp_path),
        "--out",
        str(tmp_path / "o"),
        "--split",
        "s",
    ]
    assert cli.main([*base, "--workers", "0"]) == 2
    assert "--workers must be an int >= 1, got '0'" in capsys.readouterr().err
    assert cli.main([*base, "--max-size", "big"]) == 2
    assert "--max-size" in capsys.readouterr().err
