"""The study's own config: dataset, imbalance levels, seeds, methods and the LTAD config they share.

A YAML file (configs/study.yaml, configs/study-validation.yaml) read by the run config's own loader
(`ltad.config.from_dict`), so unknown keys and wrong types fail with the same one-sentence errors.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from ltad.config import check, from_dict, read_yaml_file
from ltad.data.levels import Level

METHODS = (
    "ltad",
    "rec_only",
    "sem_only",
    "no_vae",
    "oracle",
    "knn",
    "ltad_mb",
    "knn_class",
    "knn_class_oracle",
)
"""ltad: full model (fused score, predicted class); rec_only: RM trained without synthesis, S_rec alone
(the UniAD-style baseline); sem_only: the full model's S_sem alone; no_vae: the full model trained
without VAE synthesis; oracle: the full model given the true class; knn: PatchCore-like baseline;
ltad_mb: a variant beyond the paper, the full model's fused score plus a per-class kNN bank's
standardised score for classes with at least `memory_bank_min_images` training images
(ltad/baselines/class_banks.py); knn_class: a control without LTAD, a kNN bank for every training class
(as ltad_mb's banks are made), each test image scored against the bank of the class a nearest-class-mean
classifier picks (ltad/baselines/class_knn.py); knn_class_oracle: the same banks, the true class given."""


@dataclass(frozen=True)
class DatasetSpec:
    classes: int = 10
    image_size: int = 128
    train_per_class: int = 100
    test_per_class: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("classes", "image_size", "train_per_class", "test_per_class"):
            check(getattr(self, key) >= 1, f"dataset.{key}", "a positive int", getattr(self, key))
        check(self.seed >= 0, "dataset.seed", "an int >= 0", self.seed)


@dataclass(frozen=True)
class StudySpec:
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    levels: tuple[str, ...] = ("full",)
    """Imbalance levels as 'full' or 'profile:ratio' (e.g. 'exp:100')."""
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    config: str = "configs/study-model.yaml"
    """The LTAD run config every LTAD method trains with (relative to the repository root)."""
    overrides: tuple[str, ...] = ()
    """key=value overrides of that config (e.g. phase2.steps=200 for a smoke run)."""
    knn_coreset: float = 0.1
    memory_bank_weight: float = 1.0
    """ltad_mb: weight of the per-class bank's z-score added to LTAD's fused score."""
    memory_bank_min_images: int = 10
    """ltad_mb: classes with fewer training images get no bank (their score is LTAD's alone)."""
    label: str = ""
    """What the figures are: printed with every table (weights and data)."""
    test_defects: Literal["synth", "lobe"] = "synth"
    """The anomalous test images: `synth`, the dataset's own (texture, scratch, CutPaste, stain);
    `lobe`, a lobe pseudo-defect copy of each normal test image (ltad/data/pseudo_defects.py), which
    shares no mask shape or fill recipe with them: for validation rounds whose choices must not be
    tuned to the test defects. The dataset's defective test images are then not read."""

    def __post_init__(self) -> None:
        _ = self.level_specs  # parses, so a bad level fails here
        bad = [m for m in self.methods if m not in METHODS]
        check(not bad, "methods", f"some of {', '.join(METHODS)}", bad[:1])
        ok = bool(self.seeds) and all(s >= 0 for s in self.seeds)
        check(ok, "seeds", "a non-empty list of ints >= 0", list(self.seeds))
        check(0 < self.knn_coreset <= 1, "knn_coreset", "in (0, 1]", self.knn_coreset)
        w = self.memory_bank_weight
        check(w >= 0 and w == w, "memory_bank_weight", "a number >= 0", w)
        n = self.memory_bank_min_images
        check(n >= 2, "memory_bank_min_images", "an int >= 2", n)

    @cached_property
    def level_specs(self) -> tuple[Level, ...]:
        return tuple(Level.parse(x) for x in self.levels)

    def to_json(self) -> str:
        d = asdict(self)
        d["levels"] = [lv.name for lv in self.level_specs]
        if d["test_defects"] == "synth":  # so folders of studies made before the field still resume
            del d["test_defects"]
        return json.dumps(d, sort_keys=True)


def _vocabulary(d: dict[str, Any], where: str) -> dict[str, Any]:
    """`set:` is the overrides' key in every file (as `--set` on the command line); `overrides:` warns."""
    if "overrides" not in d:
        return {("overrides" if k == "set" else k): v for k, v in d.items()}
    check("set" not in d, "set", "one of `set` and its old spelling `overrides`", "both")
    print(f"ltad: warning: `overrides:` in {where} is deprecated; name the key `set:`", file=sys.stderr)
    return d


def spec_from_dict(d: dict[str, Any]) -> StudySpec:
    return from_dict(StudySpec, _vocabulary(d, "the study spec"))


def load_spec(path: str | Path) -> StudySpec:
    data = read_yaml_file(path)
    return from_dict(StudySpec, _vocabulary(data, str(path)))
