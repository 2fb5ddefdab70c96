"""A sweep's search space (`tune/*.yaml`): imbalance levels x prompt lengths x synthesis ratios.

The file names the base run config (plus `--set` overrides), one prepared shard set per level, the
values to sweep, the ASHA settings and the sweep root (`root`: sweep.json, trials/, Ray storage). Every
trial's run config is derived here, so the driver, the trials and the summary agree on names: phase 1
of a (level, prompt length) pair is the run `{level}-L{length}`, a trial is `{level}-L{length}-s{ratio}`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ltad.config import LTADConfig, check, load_yaml
from ltad.data.levels import Level
from ltad.errors import ConfigError
from ltad.eval.summary import PARAM_KEYS
from ltad.eval.validation import VAL_METRIC
from ltad.io import storage
from ltad.io.uri import resolve, resolve_run_locations


@dataclass(frozen=True)
class LevelSpec:
    """One imbalance level of a space file: a split profile and ratio, and the shard prefix prepared from it."""

    profile: str = ""
    """Split profile: exp, step, pareto or full."""
    ratio: float = 1.0
    """Head/tail ratio (> 1; ignored for full)."""
    data: str = ""
    """The prepared shard prefix (s3://... or a directory) of this level."""
    name: str = ""
    """Level name in trial names and tables (default: the level's label, e.g. exp100)."""

    def __post_init__(self) -> None:
        check(bool(self.data), "levels[].data", "a shard prefix (s3://... or a directory)", self.data)
        Level.parse(f"{self.profile}:{self.ratio}")  # a ConfigError naming a bad profile or ratio


@dataclass(frozen=True)
class AshaSpec:
    """Ray Tune's ASHAScheduler settings (its own defaults); time = Tune reports of a trial."""

    metric: str = ""
    mode: Literal["min", "max"] = "min"
    grace_period: int = 1
    reduction_factor: float = 4
    max_t: int = 100

    def __post_init__(self) -> None:
        known = reported_metrics()
        check(
            self.metric in known,
            "asha.metric",
            f"a metric the trials report ({', '.join(known)})",
            self.metric,
        )


def reported_metrics() -> tuple[str, ...]:
    """What ASHA may rank trials by: the validation AUROC (every `phase2.validate_every` steps, then
    the evaluation's) and phase 2's logs every `run.log_every` steps (the objective's and the loop's).
    Never a test metric: the evaluation's test metrics reach Tune too, but must not choose."""
    from ltad.eval.validation import VAL_METRIC
    from ltad.training.loop import LOOP_LOGS
    from ltad.training.objectives import Phase2Objective

    return (VAL_METRIC, *(f"phase2/{name}" for name in (*Phase2Objective.LOGS, *LOOP_LOGS)))


@dataclass(frozen=True)
class SpaceFile:
    """A search-space YAML file as written, read by the run config's own loader (ltad.config)."""

    name: str = ""
    """Sweep name (default: the file's stem)."""
    config: str = ""
    """The base run config YAML (default: the built-in defaults)."""
    set: tuple[str, ...] = ()
    """`key=value` overrides of the base run config."""
    levels: tuple[LevelSpec, ...] = ()
    prompt_lengths: tuple[int, ...] = ()
    synthesis_ratios: tuple[float, ...] = ()
    root: str = ""
    """The sweep root: s3://bucket/prefix or a directory (sweep.json, trials/, Ray storage)."""
    reuse: bool = True
    """Phase 1 once per (level, prompt length) and the feature cache; False = the naive sweep (benchmark)."""
    asha: AshaSpec | None = None
    """ASHA early stopping; null runs every trial fully."""
    max_concurrent: int | None = None
    """At most this many trials at once (default: as the cluster allows; see ltad/sweep/driver.py)."""

    def __post_init__(self) -> None:
        check(bool(self.levels), "levels", "a non-empty list", list(self.levels))
        ok = self.max_concurrent is None or self.max_concurrent >= 1
        check(ok, "max_concurrent", "null or an int >= 1", self.max_concurrent)
        check(
            bool(self.prompt_lengths), "prompt_lengths", "a non-empty list of ints", list(self.prompt_lengths)
        )
        check(bool(self.synthesis_ratios), "synthesis_ratios", "a non-empty list of numbers in [0, 1)",
              list(self.synthesis_ratios))  # fmt: skip


@dataclass(frozen=True)
class SweepLevel:
    """One imbalance level of a sweep: its name, profile, ratio and shard prefix."""

    name: str
    profile: str
    ratio: float
    data: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "ratio": self.ratio, "data": self.data}


@dataclass(frozen=True)
class Trial:
    """One trial: a level, a prompt length and a synthesis ratio."""

    level: SweepLevel
    prompt_length: int
    synthesis_ratio: float

    @property
    def phase1_name(self) -> str:
        return f"{self.level.name}-L{self.prompt_length}"

    @property
    def name(self) -> str:
        return f"{self.phase1_name}-s{self.synthesis_ratio:g}"

    @property
    def params(self) -> dict[str, Any]:
        return {
            PARAM_KEYS["prompt_length"]: self.prompt_length,
            PARAM_KEYS["synthesis_ratio"]: self.synthesis_ratio,
        }


@dataclass(frozen=True)
class Space:
    """A parsed, validated search-space file."""

    name: str
    base: LTADConfig
    levels: tuple[SweepLevel, ...]
    prompt_lengths: tuple[int, ...]
    synthesis_ratios: tuple[float, ...]
    root: str
    reuse: bool = True
    """Phase 1 once per (level, prompt length) and the feature cache; False = the naive sweep (benchmark)."""
    asha: dict[str, Any] | None = field(default=None)
    """ASHA settings (metric, mode, grace_period, reduction_factor, max_t); None = run every trial fully."""
    max_concurrent: int | None = None
    """At most this many trials at once; None = as many as the cluster places (it may grow). Applies
    when an experiment starts: a restored one keeps its limit."""

    def trials(self) -> list[Trial]:
        return [
            Trial(lv, length, ratio)
            for lv in self.levels
            for length in self.prompt_lengths
            for ratio in self.synthesis_ratios
        ]

    def phase1_runs(self) -> list[Trial]:
        """One trial per (level, prompt length): the phase-1 runs every ratio of the pair shares."""
        runs: dict[str, Trial] = {}
        for t in self.trials():
            runs.setdefault(t.phase1_name, t)
        return list(runs.values())

    def trial_dir(self, trial: Trial) -> str:
        return storage.join(self.root, "trials", trial.name)

    def run_config(self, trial: Trial, *, phase1: bool = False) -> LTADConfig:
        """The run config of a trial (or of its shared phase-1 run): base + level data + swept values."""
        name = trial.phase1_name if phase1 and self.reuse else trial.name
        return self.base.with_overrides(
            [
                f"data.uri={trial.level.data}",
                f"data.use_feature_cache={str(self.reuse).lower()}",
                f"model.prompts.length={trial.prompt_length}",
                f"phase2.synthesis_ratio={trial.synthesis_ratio}",
                f"run.name={name}",
                f"run.storage_path={storage.join(self.root, 'ray')}",
                f"run.output={self.trial_dir(trial)}",
            ]
        )


def load_space(
    path: str | Path, *, overrides=(), root: str | None = None, max_concurrent: int | None = None
) -> Space:
    """Read a space file; `overrides` are `--set` keys of the base run config, `root` replaces `root`,
    `max_concurrent` replaces `max_concurrent`."""
    try:
        spec = load_yaml(SpaceFile, path)
        if max_concurrent is not None:
            spec = replace(spec, max_concurrent=max_concurrent)
        base = LTADConfig.from_yaml(spec.config) if spec.config else LTADConfig()
        base = base.with_overrides([*spec.set, *overrides])
        for value in spec.prompt_lengths:  # validated by the run config itself
            base.with_overrides([f"model.prompts.length={value}"])
        for value in spec.synthesis_ratios:
            base.with_overrides([f"phase2.synthesis_ratio={value}"])
        levels = tuple(
            SweepLevel(
                lv.name or Level(lv.profile, lv.ratio).name,
                lv.profile,
                float(lv.ratio),
                resolve(lv.data, f"levels[{i}].data"),
            )
            for i, lv in enumerate(spec.levels)
        )
        base = resolve_run_locations(base)
        root = resolve(root, "--root") if root else resolve(spec.root, "root") if spec.root else ""
    except ConfigError as exc:
        raise ConfigError(f"search space '{path}': {exc}") from None
    if len({lv.name for lv in levels}) != len(levels):
        raise ConfigError(f"search space '{path}': level names {[lv.name for lv in levels]} must be distinct")
    if not root:
        raise ConfigError(
            f"search space '{path}': key 'root' must be the sweep root (s3://bucket/prefix or a directory)"
        )
    if spec.asha is not None and spec.asha.metric == VAL_METRIC and not base.phase2.validate_every:
        raise ConfigError(
            f"search space '{path}': asha.metric {VAL_METRIC} needs phase2.validate_every > 0 in the run "
            "config (e.g. `set: [phase2.validate_every=<run.log_every>]`), else trials report it only at the end"
        )
    return Space(
        name=spec.name or Path(path).stem,
        base=base,
        levels=levels,
        prompt_lengths=spec.prompt_lengths,
        synthesis_ratios=spec.synthesis_ratios,
        root=root,
        reuse=spec.reuse,
        asha=None if spec.asha is None else asdict(spec.asha),
        max_concurrent=spec.max_concurrent,
    )
