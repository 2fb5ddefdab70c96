"""The study's own config: dataset, imbalance levels, seeds, methods and the LTAD config they share.

A YAML file (configs/study.yaml, configs/study-validation.yaml); unknown keys and bad values fail with
one sentence naming the key, as the run config does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ltad.data.splits import check_ratio
from ltad.errors import ConfigError

METHODS = ("ltad", "rec_only", "sem_only", "no_vae", "oracle", "knn")
"""ltad: full model (fused score, predicted class); rec_only: RM trained without synthesis, S_rec alone
(the UniAD-style baseline); sem_only: the full model's S_sem alone; no_vae: the full model trained
without VAE synthesis; oracle: the full model given the true class; knn: PatchCore-like baseline."""


@dataclass(frozen=True)
class DatasetSpec:
    classes: int = 10
    image_size: int = 128
    train_per_class: int = 100
    test_per_class: int = 40
    seed: int = 0


@dataclass(frozen=True)
class Level:
    profile: str
    ratio: float

    @property
    def name(self) -> str:
        return "balanced" if self.profile == "full" else f"{self.profile}{self.ratio:g}"

    @staticmethod
    def parse(text: str) -> Level:
        """'full', 'exp:100', 'step:10' -> Level."""
        profile, _, ratio = str(text).partition(":")
        try:
            value = float(ratio) if ratio else None
        except ValueError:
            value = ratio
        return Level(profile, check_ratio(profile, value))


@dataclass(frozen=True)
class StudySpec:
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    levels: tuple[Level, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = METHODS
    config: str = "configs/study-model.yaml"
    """The LTAD run config every LTAD method trains with (relative to the repository root)."""
    overrides: tuple[str, ...] = ()
    """key=value overrides of that config (e.g. phase2.steps=200 for a smoke run)."""
    knn_coreset: float = 0.1
    label: str = ""
    """What the figures are: printed with every table (weights and data)."""

    def to_json(self) -> str:
        d = asdict(self)
        d["levels"] = [lv.name for lv in self.levels]
        return json.dumps(d, sort_keys=True)


def _fields(cls) -> set[str]:
    return set(cls.__dataclass_fields__)


def _known(d: dict, cls, where: str) -> None:
    unknown = sorted(set(d) - _fields(cls))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' (expected one of {', '.join(sorted(_fields(cls)))})"
        )


def from_dict(d: dict[str, Any], where: str = "study config") -> StudySpec:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {type(d).__name__}")
    _known(d, StudySpec, where)
    ds = d.get("dataset", {})
    if not isinstance(ds, dict):
        raise ConfigError(f"{where}: 'dataset' must be a mapping")
    _known(ds, DatasetSpec, f"{where} dataset")
    for k, v in ds.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k == "seed" else 1):
            raise ConfigError(f"{where}: dataset.{k} must be a positive int, got {v!r}")
    levels = tuple(Level.parse(x) for x in d.get("levels", ["full"]))
    methods = tuple(d.get("methods", METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"{where}: unknown method '{bad[0]}' (expected some of {', '.join(METHODS)})")
    seeds = tuple(d.get("seeds", (0, 1, 2)))
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of ints >= 0, got {seeds!r}")
    coreset = d.get("knn_coreset", 0.1)
    if not isinstance(coreset, (int, float)) or not 0 < coreset <= 1:
        raise ConfigError(f"{where}: knn_coreset must be in (0, 1], got {coreset!r}")
    return StudySpec(
        dataset=DatasetSpec(**ds),
        levels=levels,
        seeds=seeds,
        methods=methods,
        config=str(d.get("config", StudySpec.config)),
        overrides=tuple(str(x) for x in d.get("overrides", ())),
        knn_coreset=float(coreset),
        label=str(d.get("label", "")),
    )


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study config '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"study config '{path}' is not valid YAML: {exc}") from None
    return from_dict(data or {}, f"study config '{path}'")
