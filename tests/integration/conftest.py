"""Integration fixtures for training: a tiny prepared dataset on the test S3 server, and Ray.

`ray_local` (in tests/conftest.py, shared with tests/reliability) is an in-process local Ray (2 CPUs, dashboard on loopback so finished placement groups
are freed) that inherits the S3 environment; `ray_head` is a separate head from `scripts/ray-local`
for `ray job submit`. They are module-scoped and never run at the same time on this 2-core machine.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]

TINY_MODEL = {
    "encoder": {"image_size": 64, "grid": 8},
    "prompts": {"length": 2},
    "reconstruction": {
        "hidden": 32,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "heads": 4,
        "ffn": 64,
        "neighbor_mask": 3,
    },
    "semantic": {"projection_hidden": 32},
    "vae": {"latent": 8, "hidden": 32, "beta_warmup_steps": 2},
}


def encoder_checkpoint(path: Path, seed: int = 123) -> Path:
    """An open_clip checkpoint of the offline hybrid at the tiny size with seeded random weights, as
    open_clip saves one: encoder weights that are not the bundled ones (own sha256, own feature cache)."""
    import open_clip
    import torch

    from ltad.models.encoder import HYBRID, register_hybrid

    register_hybrid()
    torch.manual_seed(seed)
    torch.save(open_clip.create_model(HYBRID, force_image_size=64).state_dict(), path)
    return path


def tiny_config(tmp: Path, data_uri: str, **sections):
    """A run config small enough for 2 CPU workers in seconds; `sections` override whole sections."""
    from ltad.config import LTADConfig

    base = {
        "model": TINY_MODEL,
        "data": {"uri": data_uri, "batch_size": 4, "use_feature_cache": False},
        "phase1": {"steps": 4},
        "phase2": {"steps": 4, "stats_samples": 16},
        "scaling": {"num_workers": 2, "zero_stage": 2},
        "run": {
            "name": "tiny",
            "output": str(tmp / "out"),
            "storage_path": "",
            "log_every": 2,
            "checkpoint_every": 2,
        },
        "eval": {"batch_size": 8, "overlays_per_class": 2, "pixel_bins": 200},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return LTADConfig.from_dict(base)


@pytest.fixture(scope="session")
def tiny_data(s3_server, tmp_path_factory) -> str:
    """3 synthetic classes at 64 px, an exp split holding half of each class's share out as validation
    (40/20/10 -> train 20/10/5, held out 20/10/5: enough to calibrate thresholds), shards on S3
    (several test shards for 2 readers)."""
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    tmp = tmp_path_factory.mktemp("tiny-data")
    root = synthesize(tmp / "synth", classes=3, image_size=64, train_per_class=40, test_per_class=6, seed=0)
    split = make_split(read_dataset("synth", root), "exp", ratio=4, seed=0, val_fraction=0.5)
    split_path = split.save(tmp / "split.json")
    uri = f"s3://{s3_server.bucket}/tiny"
    prepare("synth", root, split_path, uri, test_shard_samples=5, log=lambda _msg: None)
    return uri


def tiny_export(work: Path, test_per_class: int = 4, commit: str = "test"):
    """An untrained tiny model exported to work/model, its standardisation fitted on the train images of
    a 2-class synthetic set (seed 1) made under work/synth: (the model folder, the synthetic root, the
    model, its scores of the train images). The
    predict tests and benchmarks/batch_predict.py score with it."""
    import numpy as np
    import torch
    from PIL import Image

    from ltad.config import LTADConfig
    from ltad.data.synth import synthesize
    from ltad.inference.export import write_export
    from ltad.models.state import build_model

    root = synthesize(
        work / "synth", classes=2, image_size=64, train_per_class=4, test_per_class=test_per_class, seed=1
    )
    cfg = LTADConfig.from_dict({"model": TINY_MODEL})
    model = build_model(cfg, 2).eval()
    model.cache_text()
    train = sorted(root.glob("*/train/good/*.png"))
    images = torch.stack(
        [
            torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
            for p in train
        ]
    )
    enc = model.encoder.encode_images(images)
    model.fit_standardisation([(enc.patches, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))])
    scores = model.score(enc.patches, enc.global_emb, (64, 64)).pred_score.numpy()
    write_export(
        work / "model", model, cfg, ["a", "b"], scores, float(np.median(scores)), {"git_commit": commit}
    )
    return work / "model", root, model, scores


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """An exported tiny model (standardisation fitted on real synthetic images) and a folder of images
    (three test images and a grayscale one of another size in sub/): the model the predict tests share."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("predict")
    _, root, model, scores = tiny_export(tmp)
    # a folder with nested images of two sizes (one grayscale) to score
    folder = tmp / "images"
    (folder / "sub").mkdir(parents=True)
    tests = sorted(root.glob("*/test/*/*.png"))[:3]
    for i, p in enumerate(tests):
        Image.open(p).save(folder / f"img{i}.png")
    Image.open(tests[0]).convert("L").resize((80, 48)).save(folder / "sub" / "gray.png")
    return tmp / "model", folder, model, scores


@pytest.fixture(scope="module")
def ray_head(s3_server, tmp_path_factory):
    """A local Ray head from `scripts/ray-local` (state in a tmp dir); yields its environment."""
    state = tmp_path_factory.mktemp("ray-head")
    env = {**os.environ, "RAY_DIR": str(state)}
    script = str(REPO / "scripts" / "ray-local")
    subprocess.run([script, "start"], env=env, check=True, cwd=REPO, timeout=120)
    try:
        out = subprocess.run([script, "env"], env=env, check=True, cwd=REPO, capture_output=True, text=True)
        for line in out.stdout.splitlines():
            for part in line.removeprefix("export ").split():
                key, _, value = part.partition("=")
                env[key] = value.strip("'\"")
        yield env
    finally:
        subprocess.run([script, "stop"], env=env, cwd=REPO, timeout=120)
