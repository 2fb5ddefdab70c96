"""shards.py: deterministic bytes, roll-over, round trip, and loud failures on damaged shards."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from ltad.data.records import Record
from ltad.data.shards import ShardWriter, encode_record, iterate_shard, sample_key
from ltad.errors import DataError


@pytest.fixture
def records(tmp_path):
    """Six tiny images of two classes; every third one defective with a grey-level mask."""
    root = tmp_path / "data"
    out = []
    rng = np.random.default_rng(0)
    for i in range(6):
        cls = "a" if i < 3 else "b"
        rel = f"{cls}/test/{'cut' if i % 3 == 0 else 'good'}/{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 16), dtype=np.uint8), "L").save(root / rel)
        mask = None
        if i % 3 == 0:
            mask = f"{cls}/ground_truth/cut/{i:03d}_mask.png"
            (root / mask).parent.mkdir(parents=True, exist_ok=True)
            m = np.zeros((12, 16), dtype=np.uint8)
            m[2:5, 3:9] = 7  # a label map, not 0/255: must be binarised
            Image.fromarray(m, "L").save(root / mask)
        label = int(mask is not None)
        out.append(Record(rel, cls, int(cls == "b"), "test", label, mask, "cut" if label else "good"))
    return root, out


def _encode(record, root, max_size=None):
    mask = (root / record.mask_path).read_bytes() if record.mask_path else None
    return encode_record(record, (root / record.path).read_bytes(), mask, max_size, str(root))


def _write(tmp_path, root, records, name, **kw):
    done = []
    writer = ShardWriter(tmp_path / name, "test", "test", lambda path, info: done.append((path, info)), **kw)
    for r in records:
        key, files, _ = _encode(r, root)
        writer.write(key, files, r.class_name)
    writer.close()
    return done


def test_encode_record(records):
    root, recs = records
    key, files, size = _encode(recs[0], root)
    assert key == "a/test/cut/000" == sample_key(recs[0])
    assert size == (16, 12)
    assert sorted(files) == ["cls", "json", "mask.png", "png"]
    assert files["png"] == (root / recs[0].path).read_bytes()  # the source PNG kept as it is
    mask = np.asarray(Image.open(io.BytesIO(files["mask.png"])))
    assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 18
    meta = json.loads(files["json"])
    assert meta == {**meta, "path": recs[0].path, "label": 1, "width": 16, "height": 12, "class_id": 0}
    assert "mask.png" not in _encode(recs[1], root)[1]


def test_identical_inputs_give_identical_bytes(tmp_path, records):
    root, recs = records
    one = _write(tmp_path, root, recs, "one")
    two = _write(tmp_path, root, recs, "two")
    assert [i.sha256 for _, i in one] == [i.sha256 for _, i in two]
    assert one[0][0].read_bytes() == two[0][0].read_bytes()
    with tarfile.open(one[0][0]) as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.mode, m.uname) for m in members} == {(0, 0, 0, 0o644, "")}
    assert [m.name for m in members[:4]] == [
        "a/test/cut/000.cls",
        "a/test/cut/000.json",
        "a/test/cut/000.mask.png",
        "a/test/cut/000.png",
    ]


def test_rolls_over_by_count_and_size(tmp_path, records):
    root, recs = records
    by_count = _write(tmp_path, root, recs, "count", max_samples=4)
    assert [(i.name, i.samples, i.per_class) for _, i in by_count] == [
        ("test/test-000000.tar", 4, {"a": 3, "b": 1}),
        ("test/test-000001.tar", 2, {"b": 2}),
    ]
    by_size = _write(tmp_path, root, recs, "size", max_bytes=4000)
    assert len(by_size) > 2 and sum(i.samples for _, i in by_size) == 6
    assert all(i.bytes <= 4000 + 10240 for _, i in by_size)  # one sample may overflow, plus the tar footer


def test_iterate_roundtrip(tmp_path, records):
    root, recs = records
    ((path, info),) = _write(tmp_path, root, recs, "rt")
    samples = list(iterate_shard(str(path), info.samples))
    assert [s["__key__"] for s in samples] == [sample_key(r) for r in recs]
    assert [int(s["cls"]) for s in samples] == [r.class_id for r in recs]
    assert ["mask.png" in s for s in samples] == [r.label == 1 for r in recs]


def test_count_mismatch_and_truncation_are_errors(tmp_path, records):
    root, recs = records
    ((path, info),) = _write(tmp_path, root, recs, "bad")
    with pytest.raises(DataError, match=f"shard {path} holds 6 samples but the manifest says 7"):
        list(iterate_shard(str(path), 7))
    data = path.read_bytes()
    with tarfile.open(path) as tar:
        boundary = [m.offset for m in tar.getmembers()][7]  # cut exactly before sample 3
    path.write_bytes(data[:boundary])
    with pytest.raises(DataError, match="holds 2 samples but the manifest says 6"):
        list(iterate_shard(str(path), 6))
    path.write_bytes(data[: boundary + 700])  # cut inside a member's data
    with pytest.raises(DataError, match=f"shard {path} is truncated or corrupt"):
        list(iterate_shard(str(path), 6))


def test_decode_failure_names_sample_and_shard(tmp_path, records):
    root, recs = records
    ((path, info),) = _write(tmp_path, root, recs[:1], "dec")

    def decode(sample):
        Image.open(io.BytesIO(sample["png"][:20])).load()

    with pytest.raises(DataError, match=rf"cannot decode sample 'a/test/cut/000' of shard {path}: \w+"):
        list(iterate_shard(str(path), 1, decode))


def _jpeg(path, size=(40, 30), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    return path


def test_jpeg_is_kept_byte_identical_and_decodes(tmp_path):
    from ltad.data.shards import image_member

    src = _jpeg(tmp_path / "a" / "train" / "good" / "000.jpg")
    record = Record("a/train/good/000.jpg", "a", 0, "train", 0, None, "good")
    key, files, size = _encode(record, tmp_path)
    assert sorted(files) == ["cls", "jpg", "json"] and size == (40, 30)
    assert files["jpg"] == src.read_bytes()
    assert image_member({"__key__": key, "__url__": "x", **files}) == src.read_bytes()
    with pytest.raises(DataError, match="has no image member"):
        image_member({"__key__": key, "__url__": "s.tar", "json": b"{}"})


def test_max_size_resizes_in_the_source_format_and_masks_nearest(tmp_path):
    _jpeg(tmp_path / "a" / "test" / "cut" / "000.jpg", size=(80, 40))
    mask = np.zeros((40, 80), dtype=np.uint8)
    mask[10:30, 20:60] = 3
    (tmp_path / "a" / "ground_truth" / "cut").mkdir(parents=True)
    Image.fromarray(mask).save(tmp_path / "a" / "ground_truth" / "cut" / "000_mask.png")
    record = Record("a/test/cut/000.jpg", "a", 0, "test", 1, "a/ground_truth/cut/000_mask.png", "cut")
    _, files, size = _encode(record, tmp_path, max_size=20)
    assert size == (20, 10)
    with Image.open(io.BytesIO(files["jpg"])) as im:
        assert (im.format, im.size) == ("JPEG", (20, 10))
    with Image.open(io.BytesIO(files["mask.png"])) as m:
        assert m.size == (20, 10) and set(np.unique(np.asarray(m))) == {0, 255}  # NEAREST: still binary
    assert json.loads(files["json"])["width"] == 20
    _, same, _ = _encode(record, tmp_path, max_size=80)  # already small enough: bytes kept
    assert same["jpg"] == (tmp_path / record.path).read_bytes()


def test_other_formats_become_png(tmp_path):
    path = tmp_path / "a" / "train" / "good" / "000.bmp"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((6, 8, 3), 9, dtype=np.uint8)).save(path)
    _, files, _ = _encode(Record("a/train/good/000.bmp", "a", 0, "train", 0, None, "good"), tmp_path)
    assert "png" in files and Image.open(io.BytesIO(files["png"])).format == "PNG"
