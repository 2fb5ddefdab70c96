"""`ltad serve`'s application on a real Ray Serve (the session's local Ray), spoken to over real HTTP:
scores equal `ltad predict`'s, batching, the map, 400/413 with the server still serving, /healthz.

With LTAD_RECORD=docs/results/serve-parity.json the parity figures are written there.
"""

from __future__ import annotations

import base64
import csv
import datetime
import io
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LIMIT_MB = 1


@pytest.fixture(scope="module")
def server(ray_local, exported):
    """The application of `build_app` on Serve at a free loopback port; Serve shut down afterwards."""
    from ray import serve

    from ltad.inference.serve import build_app
    from tools.services.ports import free_port

    model_dir = exported[0]
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app = build_app(
            {
                "model": str(model_dir),
                "max_batch_size": 4,
                "batch_wait_ms": 300,  # long enough for concurrent requests to share a batch
                "max_body_mb": LIMIT_MB,
                "cpus_per_replica": 0.5,
            }
        )
        serve.run(app, name="ltad", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _post(url: str, path: Path) -> dict:
    r = requests.post(
        f"{url}/predict", data=path.read_bytes(), headers={"Content-Type": "image/png"}, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_scores_equal_ltad_predict_batched_over_http(server, exported, tmp_path):
    from ltad.cli import main
    from ltad.inference.predict import find_images
    from ltad.inference.predictor import Predictor, read_image

    model_dir, folder, _, _ = exported
    files, _ = find_images(str(folder))
    with ThreadPoolExecutor(len(files)) as pool:  # concurrent requests: dynamic batching
        served = list(pool.map(lambda p: _post(server, p), files))
    # what `ltad predict` computes for each file (predict_folder: read_image, predict_rgb), unrounded
    predictor = Predictor.load(model_dir)
    expected = predictor.predict_rgb([np.asarray(read_image(p)) for p in files])
    diff = np.abs(np.array([s["score"] for s in served]) - expected.scores)
    diff_norm = np.abs(np.array([s["score_normalised"] for s in served]) - expected.scores_normalised)
    assert diff.max() <= 1e-5 and diff_norm.max() <= 1e-5, (diff, diff_norm)
    assert [s["pred_class"] for s in served] == expected.pred_class
    assert [s["anomalous"] for s in served] == expected.decisions.tolist()
    assert {s["decision"] for s in served} <= {"anomalous", "normal"}
    assert all(s["threshold_source"] == "uncalibrated" for s in served)  # the fixture's export
    assert max(s["batch_size"] for s in served) > 1  # concurrent requests shared a forward pass
    # and the `ltad predict` command's own scores.csv (6 significant digits)
    assert main(["predict", "--model", str(model_dir), "--images", str(folder), "--out", str(tmp_path)]) == 0
    with (tmp_path / "scores.csv").open() as f:
        csv_scores = {Path(row["key"]): float(row["pred_score"]) for row in csv.DictReader(f)}
    diff_csv = np.abs(np.array([s["score"] for s in served]) - np.array([csv_scores[p] for p in files]))
    assert (diff_csv <= 5e-6 * np.abs(expected.scores) + 1e-12).all(), diff_csv
    record = {
        "what": "ltad serve (Ray Serve, one CPU replica, dynamic batching) vs ltad predict on the same images: "
        "max |difference| of the raw and normalised image scores",
        "command": "LTAD_RECORD=docs/results/serve-parity.json python -m pytest -q -m integration "
        "tests/integration/test_serve.py",
        "date": datetime.date.today().isoformat(),
        "git_commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "model": "tiny random LTAD (TINY_MODEL, 64 px), standardisation fitted on 8 synthetic normals; no training",
        "images": len(files),
        "batch_sizes": sorted(s["batch_size"] for s in served),
        "max_abs_diff_score": float(diff.max()),
        "max_abs_diff_score_normalised": float(diff_norm.max()),
        "max_abs_diff_score_vs_scores_csv": float(diff_csv.max()),
        "scores_csv_precision": "6 significant digits",
        "tolerance": 1e-5,
    }
    if os.environ.get("LTAD_RECORD"):
        Path(os.environ["LTAD_RECORD"]).write_text(json.dumps(record, indent=2) + "\n")


def test_multipart_upload_and_map_png(server, exported):
    _, folder, _, _ = exported
    gray = folder / "sub" / "gray.png"
    with gray.open("rb") as f:
        r = requests.post(
            f"{server}/predict?map=png", files={"image": ("gray.png", f, "image/png")}, timeout=60
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {**_post(server, gray), "map_png": body["map_png"], "batch_size": body["batch_size"]}
    nmap = Image.open(io.BytesIO(base64.b64decode(body["map_png"])))
    assert nmap.mode == "L" and nmap.size == (80, 48)  # at the image's own size, as ltad predict's maps/


def test_bad_and_oversized_bodies_are_refused_and_the_server_goes_on(server, exported):
    _, folder, _, _ = exported
    r = requests.post(f"{server}/predict", data=b"this is not an image", timeout=60)
    assert r.status_code == 400
    assert r.json() == {"error": "the body is not an image (PNG, JPEG, BMP, TIFF, ... expected)"}
    png = (folder / "img0.png").read_bytes()
    r = requests.post(f"{server}/predict", data=png[: len(png) // 2], timeout=60)  # truncated PNG
    assert r.status_code == 400 and r.json()["error"].startswith("the image cannot be decoded")
    big = b"\0" * (LIMIT_MB * (1 << 20) + 1)
    r = requests.post(f"{server}/predict", data=big, timeout=60)
    assert r.status_code == 413
    assert r.json() == {"error": f"the request body is larger than the server's limit of {LIMIT_MB} MB"}
    r = requests.post(f"{server}/predict", data=iter([big[:600_000], big[600_000:]]), timeout=60)  # chunked
    assert r.status_code == 413
    r = requests.post(f"{server}/predict?map=jpeg", data=png, timeout=60)
    assert r.status_code == 400 and "map=png" in r.json()["error"]
    assert requests.get(f"{server}/nowhere", timeout=60).status_code == 404
    health = requests.get(f"{server}/healthz", timeout=60)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "format": "torch", "classes": ["a", "b"], "image_size": 64}
    assert _post(server, folder / "img0.png")["pred_class"] in ("a", "b")  # still serving
