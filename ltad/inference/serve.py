"""`ltad serve`: an exported model (torch or ONNX) as a Ray Serve application over HTTP.

Routes (docs/SCORING.md, "Serving"):

- `POST /predict`: one image, as the raw request body (any `Content-Type` but multipart) or as the
  file part of a `multipart/form-data` body. Answers JSON: `score` (raw), `score_normalised`,
  `anomalous`, `decision`, `pred_class`, `threshold`, `threshold_source`, `batch_size` (images in
  the forward pass that scored it); with `?map=png` also
  `map_png`, the normalised anomaly map at the image's own size as a base64 PNG (0..255, the
  threshold at 128, as `ltad predict` writes maps/).
- `GET /healthz`: 200 with the model's format, classes and image size once the replica has loaded it.

A body that is not a decodable image is 400, one larger than `max_body_mb` is 413 (refused from its
Content-Length before it is read, else when the stream passes the limit), each with one sentence in
`{"error": ...}`; the replica goes on serving. Request images live only in memory. Requests are
scored in batches (`@serve.batch`: up to `max_batch_size` images, waiting at most `batch_wait_ms`
for a batch to fill) by `Predictor.predict_rgb`, the function `ltad predict` scores with, on a thread
so the replica keeps answering while a batch runs.

`build_app(args)` is the application builder: `ltad serve` calls it, and a RayService's serve
config names it (`import_path: ltad.inference.serve:build_app`, k8s/rayservice.yaml) with the same
`args` keys as `ServeOptions`' fields.
"""

from __future__ import annotations

import asyncio
import base64
import io
import tempfile
from dataclasses import dataclass, fields
from email.message import Message
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ltad.errors import ConfigError
from ltad.inference.export import threshold_of

MB = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    """What a deployment of one export needs; the CLI flags, and a RayService's `args`, by field name."""

    model: str  # an export: a local directory (on every node a replica may run on) or an s3:// prefix
    replicas: int = 1
    gpus_per_replica: float = 0.0  # > 0: the replica scores on CUDA
    cpus_per_replica: float = 1.0
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    max_body_mb: float = 20.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("serve option 'model' must be an export directory or s3:// prefix")
        checks = (
            ("replicas", self.replicas >= 1, "an int >= 1"),
            ("gpus_per_replica", self.gpus_per_replica >= 0, "a number >= 0"),
            ("cpus_per_replica", self.cpus_per_replica >= 0, "a number >= 0"),
            ("max_batch_size", self.max_batch_size >= 1, "an int >= 1"),
            ("batch_wait_ms", self.batch_wait_ms >= 0, "a number >= 0"),
            ("max_body_mb", self.max_body_mb > 0, "a number > 0"),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"serve option '{name}' must be {expected}, got {getattr(self, name)!r}")

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeOptions:
        """From a RayService's `args` (or the CLI): unknown keys and wrong types are one ConfigError."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ConfigError(f"unknown serve option(s) {unknown}; known: {sorted(known)}")
        if "model" not in args:
            raise ConfigError("serve option 'model' is required (an export directory or s3:// prefix)")
        return cls(**{name: _coerce(name, value, known[name].type) for name, value in args.items()})

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_replica > 0 else "cpu"


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """`value` as the field's type (`str`, `int` or `float`; a YAML/CLI string is parsed), else one error."""
    expected = {"str": "a string", "int": "an int", "float": "a number"}[str(kind)]
    if str(kind) == "str":
        if isinstance(value, str):
            return value
    elif not isinstance(value, bool):
        cast = int if str(kind) == "int" else float
        if isinstance(value, int) or (cast is float and isinstance(value, float)):
            return cast(value)
        if isinstance(value, str):
            try:
                return cast(value)
            except ValueError:
                pass
    raise ConfigError(f"serve option '{name}' must be {expected}, got {value!r}")


class RequestError(Exception):
    """A request the server refuses: its HTTP status and one sentence for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) from its Content-Length or as soon as the stream passes `limit`."""
    too_large = RequestError(413, f"the request body is larger than the server's limit of {limit / MB:g} MB")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The image's bytes: the whole body, or of a multipart/form-data body the first file part (or the
    part named `image` or `file`)."""
    if not content_type.lower().startswith("multipart/"):
        return body
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise RequestError(400, "the multipart body has no boundary in its Content-Type")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    for part in (b"\r\n" + body).split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.partition(b"\r\n\r\n")
        disposition = head.decode("latin-1").lower()
        if sep and (
            "filename=" in disposition or 'name="image"' in disposition or 'name="file"' in disposition
        ):
            return data
    raise RequestError(
        400, "the multipart body has no file part (send the image as a file, or as the raw body)"
    )


def decode_image(data: bytes) -> np.ndarray:
    """H x W x 3 uint8 of an encoded image (PNG, JPEG, BMP, TIFF, ...); 400 when it is not one."""
    if not data:
        raise RequestError(400, "the request has no image: send one as the body or a multipart file part")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError:
        raise RequestError(413, "the image has more pixels than the server decodes") from None
    except Image.UnidentifiedImageError:
        raise RequestError(400, "the body is not an image (PNG, JPEG, BMP, TIFF, ... expected)") from None
    except (OSError, ValueError, SyntaxError) as exc:  # a known format, but truncated or corrupt
        raise RequestError(400, f"the image cannot be decoded ({exc or type(exc).__name__})") from None


def map_png(nmap: np.ndarray) -> str:
    """A normalised map in [0, 1] as base64 PNG (grey, 0..255; 128 is the decision threshold)."""
    buf = io.BytesIO()
    Image.fromarray(np.round(nmap * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def load_predictor(options: ServeOptions) -> Any:
    """The `Predictor` of the export (an s3:// prefix copied to a temporary folder first)."""
    from ltad.inference.model_files import download_model
    from ltad.inference.predictor import Predictor
    from ltad.io.uri import is_s3

    if not is_s3(options.model):
        return Predictor.load(options.model, device=options.device, batch_size=options.max_batch_size)
    with tempfile.TemporaryDirectory(prefix="ltad-serve-") as tmp:
        local = download_model(options.model, Path(tmp))
        return Predictor.load(local, device=options.device, batch_size=options.max_batch_size)


class LtadServer:
    """One replica: the model in memory, batched scoring, the HTTP routes of the module docstring."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.options = ServeOptions.from_args(args)
        self.predictor = load_predictor(self.options)
        self.limit = int(self.options.max_body_mb * MB)
        batcher: Any = self.score  # @serve.batch's wrapper, configured per deployment
        batcher.set_max_batch_size(self.options.max_batch_size)
        batcher.set_batch_wait_timeout_s(self.options.batch_wait_ms / 1000.0)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def score(self, rgbs: list[np.ndarray]) -> list[dict[str, Any]]:
        """One forward pass over the images of concurrent requests; one result per image."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(None, self.predictor.predict_rgb, rgbs)
        out = []
        for i in range(len(result)):
            name = result.pred_class[i]
            threshold, source = threshold_of(self.predictor.meta, name)
            anomalous = bool(result.decisions[i])
            out.append(
                {
                    "score": float(result.scores[i]),
                    "score_normalised": float(result.scores_normalised[i]),
                    "anomalous": anomalous,
                    "decision": "anomalous" if anomalous else "normal",
                    "pred_class": name,
                    "threshold": threshold,
                    "threshold_source": source,
                    "batch_size": len(result),
                    "_map": result.maps_normalised[i],
                }
            )
        return out

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        try:
            if path.endswith("/healthz"):
                if request.method not in ("GET", "HEAD"):
                    raise RequestError(405, "/healthz answers GET")
                return JSONResponse(self.health())
            if path.endswith("/predict"):
                if request.method != "POST":
                    raise RequestError(405, "/predict takes POST with an image body")
                return JSONResponse(await self.predict(request))
            raise RequestError(404, f"no route {path}: POST /predict or GET /healthz")
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)

    def health(self) -> dict[str, Any]:
        p = self.predictor
        return {"status": "ok", "format": p.format, "classes": p.classes, "image_size": p.image_size}

    async def predict(self, request: Request) -> dict[str, Any]:
        want = request.query_params.get("map")
        if want not in (None, "", "png"):
            raise RequestError(400, f"map={want!r} is not supported: use map=png or leave it out")
        body = await read_body(request, self.limit)
        rgb = decode_image(image_bytes(body, request.headers.get("content-type", "")))
        row = dict(await self.score(rgb))
        nmap = row.pop("_map")
        if want == "png":
            row["map_png"] = map_png(nmap)
        return row


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application of `args` (ServeOptions' fields): what `ltad serve` runs and a RayService's
    `import_path` names."""
    options = ServeOptions.from_args(dict(args))
    deployment = serve.deployment(
        name="ltad",
        num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica},
        max_ongoing_requests=max(2 * options.max_batch_size, 8),
    )(LtadServer)
    return deployment.bind({f.name: getattr(options, f.name) for f in fields(options)})
