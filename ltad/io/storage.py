"""One URI API over local paths and `s3://bucket/key`.

S3 settings come only from boto3's standard chain (AWS_* variables, AWS_ENDPOINT_URL, profiles,
instance roles): never from configs. One client per process (re-created after a fork). Reads stream
through a ~1 MiB buffer and resume with a ranged GET from the current offset after a transient error,
so a long shard read survives a dropped connection but a dead server ends in a clear StorageError
rather than a silently short stream. Every error names the URL and the endpoint, never a secret.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from ltad.errors import StorageError
from ltad.io import uri as _uri

BUFFER = 1 << 20
RETRIES = 5
"""Default retry budget per stream: attempts after transient errors while opening or reading it
(backoff 0.5 s doubling, capped at 8 s: 15.5 s of waiting in all, enough for a server restart).
Override with the environment variable LTAD_S3_RETRIES."""
MULTIPART_THRESHOLD = 64 << 20

S3_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
"""The non-secret S3 settings (endpoint, region) a driver passes on to every worker process of its job,
so that boto3 (shards, outputs) and pyarrow (checkpoints) reach the same store on every node.
Credentials never travel: each node keeps its own chain (environment, profile, instance role)."""

_client: Any = None
_client_pid: int | None = None
_client_lock = threading.Lock()


def is_s3(uri: str) -> bool:
    """True for s3://, False for a local path; a ConfigError for any other scheme or a malformed URI
    (ltad/io/uri.py), so `gs://b/x` never becomes a local folder."""
    return _uri.is_s3(uri)


def split_s3(uri: str) -> tuple[str, str]:
    """('bucket', 'key/inside') of an s3:// URI."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise StorageError(f"'{uri}' is not a valid S3 URI: expected s3://bucket/key")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join URI parts with '/' (S3) or the local path rules."""
    if is_s3(base):
        out = base.rstrip("/")
        for p in parts:
            out = f"{out}/{p.strip('/')}"
        return out
    return str(Path(base, *parts))


def client() -> Any:
    """The process's boto3 S3 client (standard env/profile chain; honours AWS_ENDPOINT_URL).

    Made once per process under a lock: threads that read ahead (prepare, the training stream) ask for
    it at the same moment, and each making its own would cost ~0.1 s of CPU a client."""
    global _client, _client_pid
    if _client is not None and _client_pid == os.getpid():
        return _client
    with _client_lock:
        if _client is None or _client_pid != os.getpid():
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,  # >= data.read_ahead (32): a training reader's reads in flight
            )
            _client = boto3.session.Session().client("s3", config=config)
            _client_pid = os.getpid()
        return _client


def _new_lock_in_child() -> None:
    global _client_lock
    _client_lock = threading.Lock()  # a forked child must not inherit a lock another thread held


os.register_at_fork(after_in_child=_new_lock_in_child)


def s3_settings() -> dict[str, str]:
    """The S3_SETTINGS this process has (set and non-empty)."""
    return {k: os.environ[k] for k in S3_SETTINGS if os.environ.get(k)}


def reset_client() -> None:
    """Forget the cached client (after the environment changed, e.g. in tests)."""
    global _client
    _client = None


def endpoint() -> str:
    try:
        return str(client().meta.endpoint_url)
    except Exception:
        return os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")


def _error(uri: str, exc: BaseException) -> StorageError:
    """Translate a botocore exception into one sentence naming the URL and the endpoint."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    ep = endpoint()
    if isinstance(exc, NoCredentialsError):
        return StorageError(
            f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status == 403:
            return StorageError(
                f"S3 endpoint {ep} rejected the credentials for {uri} ({code or status}): "
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            )
        if code == "NoSuchBucket":
            return StorageError(f"bucket '{split_s3(uri)[0]}' of {uri} does not exist at S3 endpoint {ep}")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return StorageError(f"no object at {uri} (S3 endpoint {ep})")
        return StorageError(f"S3 request for {uri} failed at {ep}: {code or status}")
    if isinstance(exc, EndpointConnectionError) or _is_transient(exc):
        return StorageError(
            f"cannot reach S3 endpoint {ep} for {uri} ({type(exc).__name__}): is the server running "
            "and AWS_ENDPOINT_URL right?"
        )
    return StorageError(f"S3 request for {uri} failed at {ep}: {type(exc).__name__}: {exc}")


def _is_transient(exc: BaseException) -> bool:
    from botocore import exceptions as bx
    from urllib3.exceptions import HTTPError as Urllib3Error

    transient = (
        bx.ConnectionClosedError,
        bx.ConnectTimeoutError,
        bx.EndpointConnectionError,
        bx.IncompleteReadError,
        bx.ReadTimeoutError,
        bx.ResponseStreamingError,
        Urllib3Error,
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient):
        return True
    if isinstance(exc, bx.ClientError):
        return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return False


def _call(uri: str, fn, **kwargs) -> Any:
    try:
        return fn(**kwargs)
    except StorageError:
        raise
    except Exception as exc:
        raise _translate(uri, exc) from None


def _translate(uri: str, exc: Exception) -> StorageError:
    if _code(exc) in ("404", "NotFound"):  # a bare 404 (HEAD has no body): bucket or key?
        bucket, _ = split_s3(uri)
        try:
            client().head_bucket(Bucket=bucket)
        except Exception as inner:
            if _code(inner) in ("404", "NoSuchBucket", "NotFound"):
                return StorageError(
                    f"bucket '{split_s3(uri)[0]}' of {uri} does not exist at S3 endpoint {endpoint()}"
                )
    return _error(uri, exc)


def retry_budget() -> int:
    """Retries per stream: LTAD_S3_RETRIES, else RETRIES."""
    raw = os.environ.get("LTAD_S3_RETRIES", "")
    if not raw:
        return RETRIES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise StorageError(f"LTAD_S3_RETRIES must be an int >= 0, got {raw!r}")
    return value


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class _S3RawReader(io.RawIOBase):
    """A streaming GET that resumes with a ranged GET from the current offset on transient errors.

    Opening retries too, so an outage between two shards is survived like one in the middle of a
    shard; one budget of `retries` covers the whole stream.
    """

    def __init__(self, uri: str, retries: int) -> None:
        self.uri = uri
        self.bucket, self.key = split_s3(uri)
        self.offset = 0
        self.size: int | None = None
        self.retries = self.retries_left = retries
        self._body: Any = None  # botocore's (untyped) StreamingBody; None while closed
        self._open()

    def _open(self) -> None:
        while True:
            try:
                response = client().get_object(Bucket=self.bucket, Key=self.key)
                break
            except Exception as exc:
                if not _is_transient(exc):
                    raise _translate(self.uri, exc) from None
                self._retry(exc)
        self.size = int(response["ContentLength"])
        self.etag = response["ETag"]
        self._body = response["Body"]

    def _resume(self) -> None:
        """Ranged GET from the current offset of the same object version (raw errors: the caller retries)."""
        rng = f"bytes={self.offset}-"
        response = client().get_object(Bucket=self.bucket, Key=self.key, Range=rng, IfMatch=self.etag)
        self._body = response["Body"]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if self.size is not None and self.offset >= self.size:
                return 0
            try:
                if self._body is None:
                    self._resume()
                chunk = self._body.read(len(view))
                if not chunk:
                    raise ConnectionError(f"stream ended at byte {self.offset} of {self.size}")
            except Exception as exc:
                if not _is_transient(exc):
                    raise _error(self.uri, exc) from None
                self._retry(exc)
                continue
            n = len(chunk)
            view[:n] = chunk
            self.offset += n
            return n

    def _retry(self, exc: BaseException) -> None:
        self._close_body()
        if self.retries_left <= 0:
            budget = f"after {self.retries} retries (budget: LTAD_S3_RETRIES)"
            if self.size is None:  # never opened
                raise StorageError(f"{_error(self.uri, exc)} {budget}") from None
            raise StorageError(
                f"reading {self.uri} from S3 endpoint {endpoint()} failed at byte {self.offset} of "
                f"{self.size} {budget} ({type(exc).__name__}): is the server still running?"
            ) from None
        attempt = self.retries - self.retries_left
        self.retries_left -= 1
        time.sleep(min(8.0, 0.5 * 2**attempt))

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):  # the connection is already broken
                self._body.close()
        self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()


def open_read(uri: str, retries: int | None = None) -> BinaryIO:
    """A buffered binary stream of `uri` (local file or resumable S3 GET; the kernel's socket buffer
    already reads a streaming GET ahead, a read-ahead thread measured no gain here)."""
    if is_s3(uri):
        budget = retry_budget() if retries is None else retries
        return io.BufferedReader(_S3RawReader(uri, budget), buffer_size=BUFFER)
    try:
        return open(uri, "rb", buffering=BUFFER)  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise StorageError(f"no file at {uri}") from None


def read_range(uri: str, offset: int, length: int, retries: int | None = None) -> bytes:
    """Bytes [offset, offset + length) of `uri`: one ranged GET (S3) or a seek and read (local).

    Fewer bytes come back when the object is shorter (a truncated shard: the caller's check, not a
    StorageError); transient S3 errors are retried like a stream's, anything else is a StorageError.
    """
    if offset < 0 or length < 0:
        raise StorageError(f"invalid byte range {offset}+{length} of {uri}")
    if length == 0:
        return b""
    if not is_s3(uri):
        try:
            with open(uri, "rb", buffering=0) as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise StorageError(f"no file at {uri}") from None
    bucket, key = split_s3(uri)
    return _get_retrying(
        uri,
        lambda: client().get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"),
        absent=("InvalidRange",),  # the range starts past the end: a truncated object
        default=b"",
        retries=retries,
    )


def read_optional(uri: str, retries: int | None = None) -> bytes | None:
    """The whole object, or None when it does not exist; transient S3 errors are retried like a
    stream's (so a short outage is survived), anything else is a StorageError."""
    if not is_s3(uri):
        path = Path(uri)
        return path.read_bytes() if path.is_file() else None
    bucket, key = split_s3(uri)
    return _get_retrying(
        uri,
        lambda: client().get_object(Bucket=bucket, Key=key),
        absent=("NoSuchKey", "404", "NotFound"),
        default=None,
        retries=retries,
    )


def _get_retrying(uri: str, get, *, absent: tuple[str, ...], default, retries: int | None):
    """The body of `get()` (one GetObject), `default` for an error code in `absent`; transient errors
    are retried with a stream's back-off (budget LTAD_S3_RETRIES), anything else is a StorageError."""
    budget = retry_budget() if retries is None else retries
    attempt = 0
    while True:
        try:
            return get()["Body"].read()
        except Exception as exc:
            if _code(exc) in absent:
                return default
            if not _is_transient(exc):
                raise _translate(uri, exc) from None
            if attempt >= budget:
                raise StorageError(
                    f"{_error(uri, exc)} after {budget} retries (budget: LTAD_S3_RETRIES)"
                ) from None
            time.sleep(min(8.0, 0.5 * 2**attempt))
            attempt += 1


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
    """Write a whole object; local writes are atomic (temp file + rename)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _call(uri, client().put_object, Bucket=bucket, Key=key, Body=data, Metadata=metadata or {})
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def upload_file(local: str | Path, uri: str, metadata: dict[str, str] | None = None) -> None:
    """Copy a local file to `uri`; large files go up as S3 multipart uploads."""
    if is_s3(uri):
        from boto3.s3.transfer import TransferConfig

        bucket, key = split_s3(uri)
        config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )
        extra = {"Metadata": metadata or {}}
        _call(
            uri,
            client().upload_file,
            Filename=str(local),
            Bucket=bucket,
            Key=key,
            ExtraArgs=extra,
            Config=config,
        )
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    shutil.copyfile(local, tmp)
    os.replace(tmp, path)


COPY_OBJECT_LIMIT = 5 << 30
"""The largest object S3's CopyObject copies in one request; larger ones go as a multipart copy."""


def copy(src: str, dst: str, *, size: int | None = None, if_match: str | None = None) -> None:
    """Copy one object or file to `dst`. S3 to S3 is a server-side copy (CopyObject: no bytes pass
    through this process, the metadata is kept); `if_match` (an ETag) makes it fail rather than copy
    a source replaced since it was checked. Otherwise a download, upload or local copy (atomic)."""
    if is_s3(src) and is_s3(dst):
        (sb, sk), (db, dk) = split_s3(src), split_s3(dst)
        source = {"Bucket": sb, "Key": sk}
        if size is None or size <= COPY_OBJECT_LIMIT:
            extra = {"CopySourceIfMatch": if_match} if if_match else {}
            _call(dst, client().copy_object, CopySource=source, Bucket=db, Key=dk, **extra)
            return
        from boto3.s3.transfer import TransferConfig

        info = head(src) or {}
        config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
        )
        args = {"Metadata": info.get("metadata", {}), **({"CopySourceIfMatch": if_match} if if_match else {})}
        _call(dst, client().copy, CopySource=source, Bucket=db, Key=dk, ExtraArgs=args, Config=config)
        return
    if is_s3(dst):  # a local file up
        upload_file(src, dst)
        return
    path = Path(dst)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        if is_s3(src):
            with open_read(src) as f, tmp.open("wb") as out:
                shutil.copyfileobj(f, out, BUFFER)
        elif Path(src).is_file():
            shutil.copyfile(src, tmp)
        else:
            raise StorageError(f"no file at {src}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def head(uri: str) -> dict[str, Any] | None:
    """{'size': int, 'etag': str | None, 'metadata': {...}} of an existing object, None when it does not
    exist (local files have no ETag)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        try:
            response = client().head_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                _call(uri, client().head_bucket, Bucket=bucket)  # a missing bucket is an error, not "absent"
                return None
            raise _error(uri, exc) from None
        return {
            "size": int(response["ContentLength"]),
            "etag": response.get("ETag"),
            "metadata": dict(response.get("Metadata", {})),
        }
    path = Path(uri)
    return {"size": path.stat().st_size, "etag": None, "metadata": {}} if path.is_file() else None


def exists(uri: str) -> bool:
    return head(uri) is not None


def delete(uri: str) -> None:
    """Delete one object or file; absent is fine."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _call(uri, client().delete_object, Bucket=bucket, Key=key)
        return
    Path(uri).unlink(missing_ok=True)


def list(prefix: str) -> builtins.list[str]:
    """Every object/file URI under `prefix` (recursive, sorted)."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out = []
        paginator = client().get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                out += [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
        except Exception as exc:
            raise _error(prefix, exc) from None
        return sorted(out)
    root = Path(prefix)
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def list_sizes(prefix: str) -> builtins.list[tuple[str, int]]:
    """(URI, size in bytes) of every object/file under `prefix` (recursive, sorted): one listing."""
    if is_s3(prefix):
        bucket, key = split_s3(prefix)
        key = key.rstrip("/") + "/" if key else ""
        out = []
        paginator = client().get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                out += [(f"s3://{bucket}/{obj['Key']}", int(obj["Size"])) for obj in page.get("Contents", [])]
        except Exception as exc:
            raise _error(prefix, exc) from None
        return sorted(out)
    return [(uri, Path(uri).stat().st_size) for uri in list(prefix)]


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{uri} is not valid JSON: {exc}") from None


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> BinaryIO:
    if mode != "rb":
        raise StorageError(f"{url}: only reading is supported through webdataset")
    return open_read(url)


def register_webdataset() -> None:
    """Let `webdataset` open `s3://` URLs through this module (called by streams.py: webdataset
    imports torch, too slow for a plain storage import)."""
    import webdataset

    webdataset.gopen_schemes["s3"] = _gopen_s3
