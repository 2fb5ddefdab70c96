"""WebDataset tar shards: sample encoding, a deterministic size-rolling writer, a checked reader.

Writing is byte-deterministic (members sorted within a sample, fixed mtime/uid/gid/mode/owner) so
identical inputs give identical shards and re-running `prepare` can skip them by hash. Reading checks
every shard against the manifest's sample count: a shard cut at a member boundary or with a corrupt
header ends the tar stream "normally", and only the count tells.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ltad.data.records import Record
from ltad.errors import DataError, StorageError
from ltad.io import storage

MTIME = 0
MODE = 0o644


def sample_key(record: Record) -> str:
    """WebDataset key of a record: its relative path without the extension, no dots (they split keys)."""
    stem = record.path.rsplit(".", 1)[0] if "." in record.path.rsplit("/", 1)[-1] else record.path
    return stem.replace(".", "_")


IMAGE_MEMBERS = ("png", "jpg")
"""A sample's image member: the source's own bytes when it is a PNG or a JPEG (`prepare` keeps them as
they are), a PNG otherwise (BMP, TIFF, ... are re-encoded) or after a `--max-size` resize."""
KEPT_FORMATS = {"PNG": "png", "JPEG": "jpg", "MPO": "jpg"}  # MPO: a camera JPEG with extra frames
JPEG_QUALITY = 95


def image_member(sample: dict[str, Any]) -> bytes:
    """The encoded image of a raw sample, whichever format it was kept in (see IMAGE_MEMBERS)."""
    for ext in IMAGE_MEMBERS:
        if ext in sample:
            return sample[ext]
    raise DataError(
        f"sample '{sample['__key__']}' of shard {sample['__url__']} has no image member (expected "
        f"{' or '.join(f'key.{e}' for e in IMAGE_MEMBERS)}): re-run ltad prepare"
    )


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def fitted_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) with the longer side at most `max_size` (aspect kept; unchanged when None or
    already small enough)."""
    longest = max(width, height)
    if max_size is None or longest <= max_size:
        return width, height
    scale = max_size / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_record(
    record: Record, image: bytes, mask: bytes | None, max_size: int | None = None, where: str = ""
) -> tuple[str, dict[str, bytes], tuple[int, int]]:
    """(key, {ext: bytes}, (width, height)) of one record from its source bytes: the image kept as it is
    (PNG, JPEG) or as a PNG, resized when its longer side exceeds `max_size` (re-encoded in its own
    format, JPEG at quality 95); the mask binarised to an L PNG (resized NEAREST); class id; JSON."""
    try:
        with Image.open(io.BytesIO(image)) as im:
            ext = KEPT_FORMATS.get(im.format or "")
            source = im.size
            size = fitted_size(*source, max_size)
            if ext is not None and size == source:
                data = image
            else:
                rgb = im.convert("L" if im.mode == "L" else "RGB")
                if size != source:
                    rgb = rgb.resize(size, Image.Resampling.LANCZOS)
                if ext == "jpg":
                    buf = io.BytesIO()
                    rgb.save(buf, format="JPEG", quality=JPEG_QUALITY)
                    data = buf.getvalue()
                else:
                    ext, data = "png", _png(rgb)
        binary = None
        if mask is not None:
            with Image.open(io.BytesIO(mask)) as m:
                binary = (np.asarray(m.convert("L")) > 0).astype(np.uint8) * 255
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read image or mask of '{record.path}' under '{where}': {exc or type(exc).__name__}"
        ) from None
    if binary is not None and binary.shape != (source[1], source[0]):
        raise DataError(
            f"mask '{record.mask_path}' is {binary.shape[1]}x{binary.shape[0]} but image '{record.path}' is "
            f"{source[0]}x{source[1]}"
        )
    meta = {
        "path": record.path,
        "class_name": record.class_name,
        "class_id": record.class_id,
        "label": record.label,
        "defect_type": record.defect_type,
        "split": record.split,
        "width": size[0],
        "height": size[1],
        "mask": binary is not None,  # lets readers tell a lost mask member from a defect without one
    }
    files = {ext: data, "cls": str(record.class_id).encode(), "json": json.dumps(meta).encode()}
    if binary is not None:
        mask_image = Image.fromarray(binary, mode="L")
        if size != source:
            mask_image = mask_image.resize(size, Image.Resampling.NEAREST)
        files["mask.png"] = _png(mask_image)
    return sample_key(record), files, size


@dataclass
class ShardInfo:
    """One finished shard: its name relative to the prefix, counts and hash."""

    name: str
    samples: int
    bytes: int
    sha256: str
    per_class: dict[str, int] = field(default_factory=dict)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, MTIME, MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Writes `{directory}/{split}/{part}-NNNNNN.tar`, rolling over at a byte or sample limit.

    Each finished shard is handed to `on_done(local_path, info)` before the next one is opened, so
    only one shard is ever on local disk (the callback uploads and deletes it).
    """

    def __init__(
        self,
        directory: str | Path,
        split: str,
        part: str,
        on_done: Callable[[Path, ShardInfo], None],
        max_bytes: int = 256 << 20,
        max_samples: int | None = None,
    ) -> None:
        self.directory, self.split, self.part = Path(directory), split, part
        self.on_done, self.max_bytes, self.max_samples = on_done, max_bytes, max_samples
        self.index = 0
        self._tar: tarfile.TarFile | None = None
        self._path: Path | None = None
        self._samples = 0
        self._size = 0
        self._per_class: dict[str, int] = {}

    def write(self, key: str, files: dict[str, bytes], class_name: str) -> None:
        size = sum(512 + -(-len(b) // 512) * 512 for b in files.values())
        full = self.max_samples is not None and self._samples >= self.max_samples
        if self._tar is not None and self._samples and (full or self._size + size > self.max_bytes):
            self._finish()
        if self._tar is None:
            self._open()
        assert self._tar is not None
        for ext in sorted(files):
            data = files[ext]
            self._tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
        self._samples += 1
        self._size += size
        self._per_class[class_name] = self._per_class.get(class_name, 0) + 1

    def close(self) -> None:
        if self._tar is not None:
            self._finish()

    def _open(self) -> None:
        self._path = self.directory / self.split / f"{self.part}-{self.index:06d}.tar"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._tar = tarfile.open(self._path, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115 - closed in _finish
        self._samples, self._size, self._per_class = 0, 0, {}

    def _finish(self) -> None:
        assert self._tar is not None and self._path is not None
        self._tar.close()
        digest = hashlib.sha256()
        with open(self._path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        info = ShardInfo(
            name=f"{self.split}/{self._path.name}",
            samples=self._samples,
            bytes=self._path.stat().st_size,
            sha256=digest.hexdigest(),
            per_class=dict(sorted(self._per_class.items())),
        )
        self._tar, self.index = None, self.index + 1
        self.on_done(self._path, info)


def _split_name(name: str) -> tuple[str, str]:
    """('dir/key', 'ext') of a member name: the extension starts at the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        raise ValueError(f"member '{name}' has no extension")
    return (f"{head}/{stem}" if head else stem), ext


def iterate_shard(
    url: str, expected_count: int | None, decode: Callable[[dict[str, Any]], Any] | None = None
) -> Generator[Any, None, None]:
    """Samples ({'__key__', '__url__', ext: bytes}, or `decode(sample)`) of one shard, checked.

    Raises DataError naming the shard for a truncated or corrupt tar, a decode failure, or a sample
    count other than `expected_count` (None skips the count check).
    """
    count = 0
    try:
        with storage.open_read(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            current: dict[str, Any] | None = None
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short")
                if current is not None and current["__key__"] != key:
                    count += 1
                    yield decode_sample(current, decode)
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                current[ext] = data
            if current is not None:
                count += 1
                yield decode_sample(current, decode)
    except (StorageError, DataError):
        raise
    except (tarfile.TarError, EOFError, ValueError, OSError) as exc:
        raise DataError(
            f"shard {url} is truncated or corrupt after {count} samples ({type(exc).__name__}: {exc}): "
            "re-run ltad prepare"
        ) from None
    if expected_count is not None and count != expected_count:
        raise DataError(
            f"shard {url} holds {count} samples but the manifest says {expected_count}: the shard is "
            "truncated or corrupt, re-run ltad prepare"
        )


def decode_sample(sample: dict[str, Any], decode: Callable[[dict[str, Any]], Any] | None) -> Any:
    """`decode(sample)` with any failure turned into a DataError naming the sample and its shard."""
    if decode is None:
        return sample
    try:
        return decode(sample)
    except DataError:
        raise
    except Exception as exc:
        # PIL's errors often carry an empty message: name the sample, the shard and the type.
        raise DataError(
            f"cannot decode sample '{sample['__key__']}' of shard {sample['__url__']}: "
            f"{type(exc).__name__}: {exc or 'corrupt data'}"
        ) from None
