"""`ltad serve`'s request handling without Ray: options, multipart, image decoding, the body limit on a
real starlette Request, the CLI's one-line errors; and the pyfunc model's input parsing."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from starlette.requests import Request

from ltad.errors import ConfigError, DataError
from ltad.inference.serve import (
    RequestError,
    ServeOptions,
    decode_image,
    image_bytes,
    map_png,
    read_body,
)


def _png(w: int = 5, h: int = 3) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(w * h * 3, dtype=np.uint8).reshape(h, w, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _request(chunks: list[bytes], headers: dict[str, str]) -> Request:
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive():
        return messages.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope, receive)


def test_options_from_args_coerce_strings_and_name_the_bad_key():
    opts = ServeOptions.from_args(
        {"model": "s3://b/m", "replicas": "2", "gpus_per_replica": 1, "batch_wait_ms": "5"}
    )
    assert (opts.replicas, opts.gpus_per_replica, opts.batch_wait_ms, opts.device) == (2, 1.0, 5.0, "cuda")
    with pytest.raises(ConfigError, match=r"^unknown serve option\(s\) \['replica'\]; known: "):
        ServeOptions.from_args({"model": "m", "replica": 2})
    with pytest.raises(ConfigError, match=r"^serve option 'max_batch_size' must be an int, got 1.5$"):
        ServeOptions.from_args({"model": "m", "max_batch_size": 1.5})
    with pytest.raises(ConfigError, match=r"^serve option 'max_body_mb' must be a number > 0, got 0.0$"):
        ServeOptions.from_args({"model": "m", "max_body_mb": 0})
    with pytest.raises(ConfigError, match=r"^serve option 'model' is required"):
        ServeOptions.from_args({})


def test_multipart_file_part_is_the_image_bytes_exactly():
    png = _png()
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--XyZ--\r\n"
    )
    assert image_bytes(body, "multipart/form-data; boundary=XyZ") == png
    assert image_bytes(png, "image/png") == png  # a raw body is the image
    with pytest.raises(RequestError, match="no file part"):
        image_bytes(
            b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n--XyZ--\r\n',
            "multipart/form-data; boundary=XyZ",
        )
    with pytest.raises(RequestError, match="no boundary"):
        image_bytes(body, "multipart/form-data")


def test_decode_image_gives_rgb_and_400_for_anything_else():
    assert decode_image(_png(5, 3)).shape == (3, 5, 3)
    for bad, message in (
        (b"", "has no image"),
        (b"not an image", "is not an image"),
        (_png(40, 30)[:200], "cannot be decoded"),
    ):
        with pytest.raises(RequestError, match=message) as info:
            decode_image(bad)
        assert info.value.status == 400


def test_body_limit_from_content_length_and_from_the_stream():
    ok = asyncio.run(read_body(_request([b"ab", b"cd"], {}), limit=4))
    assert ok == b"abcd"
    with pytest.raises(RequestError, match="larger than the server's limit") as info:
        asyncio.run(read_body(_request([b"abc"], {"content-length": "5"}), limit=4))  # refused unread
    assert info.value.status == 413
    with pytest.raises(RequestError) as info:
        asyncio.run(read_body(_request([b"abc", b"de"], {}), limit=4))  # chunked: stopped at the limit
    assert info.value.status == 413


def test_map_png_is_the_normalised_map_at_0_to_255():
    nmap = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(map_png(nmap)))))
    assert back.tolist() == [[0, 128], [255, 64]]


def test_cli_errors_are_one_line_naming_the_flag(tmp_path, capsys):
    from ltad.cli import main

    assert main(["serve", "--model", str(tmp_path), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size must be an int >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "is not an exported ltad model" in capsys.readouterr().err.strip().splitlines()[-1]


def test_pyfunc_inputs_paths_bytes_and_base64_frames():
    from ltad.inference.mlflow_model import images_of

    png = _png()
    frame = pd.DataFrame({"image": [base64.b64encode(png).decode()]})
    (im,) = images_of(frame)
    assert np.asarray(im).shape == (3, 5, 3)
    assert images_of(pd.DataFrame({"path": ["/x/a.png"]})) == ["/x/a.png"]
    assert images_of("/x/a.png") == ["/x/a.png"]
    assert np.asarray(images_of([png])[0]).shape == (3, 5, 3)
    with pytest.raises(DataError, match=r"^row 0 of column 'image' is not an encoded image"):
        images_of(pd.DataFrame({"image": ["bm90IGFuIGltYWdl"]}))
    with pytest.raises(DataError, match=r"needs a column 'image' \(base64\) or 'path', got \['x'\]"):
        images_of(pd.DataFrame({"x": [1]}))
