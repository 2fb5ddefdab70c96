"""The quality gate: a small LTAD training on the synthetic data whose fused score must detect defects.

CI (tests/integration/test_quality_gate.py) trains the study's model config, shortened, on a small
`ltad synth` dataset with the in-process study trainer, then scores the test images through
`LTAD.score` (the fusion the job and the predictor use) and reports image AUROC for:

- `ltad`: the fused score with the predicted class, as deployed;
- `shuffled_classes`: the same model told a wrong class for every test image (a random other class):
  LTAD's semantic score is conditioned on the class, so a fused score that uses the class must lose;
- `random`: the AUROC that a score unrelated to the images exceeds only 5 % of the time, from
  permutations of the test labels (the "beats random" bar for this test-set size: about 0.59 for the
  gate's 96 test images, against 0.5 for an infinite test set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ltad.config import LTADConfig
from ltad.data.datasets import read_dataset
from ltad.data.synth import synthesize
from ltad.eval.metrics import image_auroc
from ltad.models.encoder import Encoder
from ltad.models.ltad import LTAD
from ltad.study.cache import write_training_cache
from ltad.study.features import FeatureSet, encode_records
from ltad.study.trainer import train_phase1, train_phase2

REPO = Path(__file__).resolve().parents[2]
GATE_OVERRIDES = (
    "model.reconstruction.hidden=64",
    "model.reconstruction.encoder_layers=1",
    "model.reconstruction.decoder_layers=1",
    "model.reconstruction.ffn=128",
    "model.semantic.projection_hidden=64",
    "model.vae.hidden=64",
    "model.vae.latent=16",
    "phase1.steps=60",
    "phase2.steps=400",
    "phase1.norm_samples=64",
    "phase2.stats_samples=64",
)
"""configs/study-model.yaml made smaller and shorter, so the gate trains in about a minute on 2 idle CPU cores."""


@dataclass(frozen=True)
class GateData:
    classes: int = 4
    image_size: int = 128
    train_per_class: int = 20
    test_per_class: int = 24
    seed: int = 0


def gate_config(seed: int, overrides: tuple[str, ...] = ()) -> LTADConfig:
    cfg = LTADConfig.from_yaml(REPO / "configs/study-model.yaml")
    return cfg.with_overrides([*GATE_OVERRIDES, *overrides, f"run.seed={seed}"])


def gate_features(work: Path, cfg: LTADConfig, data: GateData) -> tuple[FeatureSet, FeatureSet, list[str]]:
    """(train, test, class names) of the gate's synthetic dataset, encoded with the config's encoder."""
    root = synthesize(
        work / "synth",
        classes=data.classes,
        image_size=data.image_size,
        train_per_class=data.train_per_class,
        test_per_class=data.test_per_class,
        seed=data.seed,
    )
    ds = read_dataset("synth", root)
    enc = Encoder(cfg.model.encoder)
    train = encode_records(enc, root, ds.select("train"), with_masks=False)
    test = encode_records(enc, root, ds.select("test"), with_masks=False)
    return train, test, list(ds.classes)


@torch.no_grad()
def image_scores(model: LTAD, test: FeatureSet, class_id: torch.Tensor | None, size: int) -> torch.Tensor:
    """Image scores of `test` by `LTAD.score` (predicted class when `class_id` is None)."""
    model.eval()
    out = []
    for i in range(0, len(test), 64):
        sl = slice(i, i + 64)
        cid = None if class_id is None else class_id[sl]
        out.append(model.score(test.patches[sl].float(), test.global_emb[sl], (size, size), cid).pred_score)
    return torch.cat(out)


def wrong_classes(class_id: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """A uniformly drawn other class for every sample."""
    gen = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, num_classes, class_id.shape, generator=gen)
    return (class_id + shift) % num_classes


def random_bar(labels: torch.Tensor, seed: int, draws: int = 2000, quantile: float = 0.95) -> float:
    """The `quantile` of image AUROCs that scores independent of the images reach on these labels."""
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    scores = np.arange(len(y), dtype=np.float64)
    return float(np.quantile([image_auroc(scores, rng.permutation(y)) for _ in range(draws)], quantile))


def run_gate(work: Path, seed: int = 0, data: GateData | None = None) -> dict[str, float]:
    """Train the gate's model with `seed` and return its image AUROCs (see the module docstring)."""
    data = data or GateData()
    cfg = gate_config(seed)
    train, test, classes = gate_features(work, cfg, data)
    cache = write_training_cache(train, classes, work / "train-cache")
    model, _ = train_phase1(cfg, cache)
    train_phase2(cfg, model, cache)
    size = cfg.model.encoder.image_size
    labels = test.label
    return {
        "ltad": image_auroc(image_scores(model, test, None, size), labels),
        "shuffled_classes": image_auroc(
            image_scores(model, test, wrong_classes(test.class_id, data.classes, seed), size), labels
        ),
        "random": random_bar(labels, seed),
    }
