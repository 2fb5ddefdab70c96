"""Weight files named by a path or an `s3://` URI, fetched once per node into a content-addressed cache.

Encoder checkpoints (`model.encoder.pretrained`) may live in S3 so that every node of a cluster reads
the same bytes. The cache is `$LTAD_CACHE_DIR/weights` (default `~/.cache/ltad/weights`), local to
each node:

    blobs/<sha256><suffix>    the content, named by its sha256 (the suffix is the source's: open_clip
                              picks its loader by it, `.safetensors` vs `.pt`/`.bin`)
    refs/<sha256 of URI>.json {uri, etag, size, sha256, blob}: what the last fetch of that URI found
    locks/<sha256 of URI>.lock held while fetching, so the workers of one node download once

A fetch asks S3 for the object's ETag and size (one HEAD). When they match the ref and the blob is
intact, the blob is used as it is. Otherwise the object is streamed (the resumable GET of
`ltad.io.storage`) to a temp file beside the blobs, hashed on the way, checked against the object's
size and against its `sha256` metadata when it has one, and renamed into place: a reader never sees a
half-written blob, and a blob found corrupt on a later fetch is fetched again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ltad.errors import StorageError
from ltad.io import storage
from ltad.log import get_logger

log = get_logger(__name__)

CACHE_ENV = "LTAD_CACHE_DIR"
CHUNK = 4 << 20

_hashes: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class Blob:
    """A local file with the sha256 of its content and where it came from."""

    path: Path
    sha256: str
    source: str
    fetched: bool = False
    """True when this call downloaded it (False: a local file or a cache hit)."""
    etag: str | None = None
    """The S3 object's ETag when the content was fetched (None for a local file)."""


def cache_dir() -> Path:
    """This node's weights cache: $LTAD_CACHE_DIR/weights, else ~/.cache/ltad/weights."""
    root = os.environ.get(CACHE_ENV) or "~/.cache/ltad"
    return Path(root).expanduser() / "weights"


def file_sha256(path: str | Path) -> str:
    """sha256 of a local file (remembered per process while its size and mtime stay the same)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StorageError(f"no file at {path}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def content_id(source: str) -> str:
    """What the content behind `source` is, told without downloading it and the same on every node: a
    local file's sha256; an s3:// object's `sha256` metadata, else `etag:<ETag>:<size>` (one HEAD; an
    object replaced at the same key gets a new ETag). What a driver with no copy (a CPU head) keys by."""
    if not storage.is_s3(source):
        return resolve(source).sha256
    info = storage.head(source)
    if info is None:
        raise StorageError(f"no object at {source} (S3 endpoint {storage.endpoint()})")
    sha = (info.get("metadata") or {}).get("sha256")
    return sha or f"etag:{info.get('etag')}:{info['size']}"


def resolve(source: str) -> Blob:
    """The local file behind `source` (a path, or an s3:// URI fetched into this node's cache)."""
    if storage.is_s3(source):
        return fetch(source)
    path = Path(source)
    if not path.is_file():
        raise StorageError(f"no file at {source}")
    return Blob(path, file_sha256(path), source)


def fetch(uri: str) -> Blob:
    """The cached copy of the S3 object `uri`, downloading it only when the cache lacks it."""
    storage.split_s3(uri)  # a malformed URI fails here
    info = storage.head(uri)
    if info is None:
        raise StorageError(f"no object at {uri} (S3 endpoint {storage.endpoint()})")
    name = hashlib.sha256(uri.encode()).hexdigest()
    ref = cache_dir() / "refs" / f"{name}.json"
    hit = _cached(ref, uri, info)
    if hit is not None:
        return hit
    with _locked(cache_dir() / "locks" / f"{name}.lock"):
        hit = _cached(ref, uri, info)  # another worker of this node may have fetched it meanwhile
        if hit is not None:
            return hit
        return _download(uri, info, ref)


def _cached(ref: Path, uri: str, info: dict) -> Blob | None:
    """The blob the ref names when the object is unchanged (ETag, size) and the blob intact."""
    try:
        record = json.loads(ref.read_text())
    except (OSError, ValueError):
        return None
    if record.get("uri") != uri or record.get("size") != info["size"] or record.get("etag") != info["etag"]:
        return None
    path = cache_dir() / "blobs" / str(record.get("blob", ""))
    if not path.is_file() or path.stat().st_size != info["size"]:
        return None
    if file_sha256(path) != record.get("sha256"):
        log.warning(
            f"weights cache: {path} is corrupt (sha256 differs from its record); fetching {uri} again"
        )
        with suppress(OSError):
            path.unlink()
        return None
    return Blob(path, record["sha256"], uri, etag=record.get("etag"))


def _download(uri: str, info: dict, ref: Path) -> Blob:
    blobs = cache_dir() / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, tmp_name = tempfile.mkstemp(dir=blobs, prefix=".fetch-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, storage.open_read(uri) as src:
            etag = getattr(getattr(src, "raw", None), "etag", info["etag"])
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        if etag != info["etag"]:
            raise StorageError(
                f"{uri} changed while it was being fetched (ETag {info['etag']} -> {etag}): retry"
            )
        if size != info["size"]:
            raise StorageError(f"download of {uri} is corrupt: {size} bytes, the object has {info['size']}")
        claimed = info["metadata"].get("sha256")
        if claimed and claimed != sha:
            raise StorageError(
                f"download of {uri} is corrupt: its content has sha256 {sha[:16]}..., the object's "
                f"sha256 metadata says {claimed[:16]}..."
            )
        suffix = "".join(PurePosixPath(storage.split_s3(uri)[1]).suffixes[-1:])
        path = blobs / f"{sha}{suffix}"
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _hashes[(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns)] = sha
    record = {"uri": uri, "etag": etag, "size": size, "sha256": sha, "blob": path.name}
    storage.write_bytes(str(ref), json.dumps(record, indent=2).encode())
    log.info(f"weights cache: fetched {uri} ({size / 2**20:.1f} MiB, sha256 {sha[:12]}) to {path}")
    return Blob(path, sha, uri, fetched=True, etag=etag)


def copy_checked(source: str, sha256: str, dst: str, etag: str | None = None) -> None:
    """Copy the weights at `source` to `dst` after checking they still are the content `sha256` (an S3
    object by its `sha256` metadata or the ETag it had when used, one HEAD, then copied server-side;
    an object with neither, or a local file, by hashing a copy). One StorageError when they changed."""
    info = storage.head(source) if storage.is_s3(source) else None
    claimed = (info or {}).get("metadata", {}).get("sha256")
    if info is not None and (claimed or (etag and info.get("etag") == etag)):
        if claimed not in (None, sha256):
            raise StorageError(_changed(source, sha256, f"its sha256 metadata says {claimed[:16]}..."))
        storage.copy(source, dst, size=info["size"], if_match=info.get("etag"))
        return
    found = resolve(source)  # a local file, or an object fetched into this node's cache (hashed)
    if found.sha256 != sha256:
        raise StorageError(_changed(source, sha256, f"its content has sha256 {found.sha256[:16]}..."))
    storage.copy(str(found.path), dst)


def _changed(source: str, sha256: str, now: str) -> str:
    return f"the encoder weights at {source} changed since the run used them (sha256 {sha256[:16]}...): {now}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (released when the process dies, so never stale)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
