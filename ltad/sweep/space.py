"""A sweep's search space (`tune/*.yaml`): imbalance levels x prompt lengths x synthesis ratios.

The file names the base run config (plus `--set` overrides), one prepared shard set per level, the
values to sweep, the ASHA settings and the sweep root (`root`: sweep.json, trials/, Ray storage). Every
trial's run config is derived here, so the driver, the trials and the summary agree on names: phase 1
of a (level, prompt length) pair is the run `{level}-L{length}`, a trial is `{level}-L{length}-s{ratio}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ltad.config import LTADConfig
from ltad.data import storage
from ltad.errors import ConfigError
from ltad.eval.summary import PARAM_KEYS, level_label

KEYS = (
    "name",
    "config",
    "set",
    "levels",
    "prompt_lengths",
    "synthesis_ratios",
    "root",
    "reuse",
    "asha",
    "max_concurrent",
)
ASHA_KEYS = ("metric", "mode", "grace_period", "reduction_factor", "max_t")


@dataclass(frozen=True)
class Level:
    """One imbalance level: a split profile and ratio, and the shard prefix prepared from it."""

    name: str
    profile: str
    ratio: float
    data: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "profile": self.profile, "ratio": self.ratio, "data": self.data}


@dataclass(frozen=True)
class Trial:
    """One trial: a level, a prompt length and a synthesis ratio."""

    level: Level
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
    levels: tuple[Level, ...]
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


def _need(data: dict, key: str, where: str, expected: str, ok) -> Any:
    value = data.get(key)
    if value is None or not ok(value):
        raise ConfigError(f"{where}: key '{key}' must be {expected}, got {value!r}")
    return value


def _level(item: Any, i: int, where: str) -> Level:
    at = f"{where} levels[{i}]"
    if not isinstance(item, dict) or set(item) - {"name", "profile", "ratio", "data"}:
        raise ConfigError(
            f"{at} must be a mapping with profile, ratio, data (and optional name), got {item!r}"
        )
    profile = _need(
        item, "profile", at, "a split profile (exp, step, pareto, full)", lambda v: isinstance(v, str)
    )
    ratio = float(_need(item, "ratio", at, "a number >= 1", lambda v: isinstance(v, (int, float)) and v >= 1))
    data = _need(
        item, "data", at, "a shard prefix (s3://... or a directory)", lambda v: isinstance(v, str) and v
    )
    return Level(str(item.get("name") or level_label(profile, ratio)), profile, ratio, data)


def load_space(
    path: str | Path, *, overrides=(), root: str | None = None, max_concurrent: int | None = None
) -> Space:
    """Read a space file; `overrides` are `--set` keys of the base run config, `root` replaces `root`,
    `max_concurrent` replaces `max_concurrent`."""
    where = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"search space '{where}' cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space '{where}' is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"search space '{where}' must be a mapping with keys {', '.join(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known keys: {', '.join(KEYS)})")
    base = LTADConfig.from_yaml(data["config"]) if data.get("config") else LTADConfig()
    base = base.with_overrides([*(data.get("set") or []), *overrides])
    levels_raw = _need(data, "levels", where, "a non-empty list", lambda v: isinstance(v, list) and v)
    levels = tuple(_level(item, i, where) for i, item in enumerate(levels_raw))
    if len({lv.name for lv in levels}) != len(levels):
        raise ConfigError(f"{where}: level names {[lv.name for lv in levels]} must be distinct")
    lengths = _need(data, "prompt_lengths", where, "a non-empty list of ints", _all(int))
    ratios = _need(
        data, "synthesis_ratios", where, "a non-empty list of numbers in [0, 1)", _all((int, float))
    )
    for value in lengths:  # validated by the run config itself
        base.with_overrides([f"model.prompts.length={value}"])
    for value in ratios:
        base.with_overrides([f"phase2.synthesis_ratio={value}"])
    asha = data.get("asha")
    if asha is not None and (
        not isinstance(asha, dict) or set(asha) - set(ASHA_KEYS) or "metric" not in asha
    ):
        raise ConfigError(
            f"{where}: 'asha' must be null or a mapping with metric and {', '.join(ASHA_KEYS[1:])}"
        )
    root = root or _need(data, "root", where, "the sweep root (s3://bucket/prefix or a directory)", bool)
    limit = max_concurrent if max_concurrent is not None else data.get("max_concurrent")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ConfigError(f"{where}: 'max_concurrent' must be null or an int >= 1, got {limit!r}")
    return Space(
        name=str(data.get("name") or Path(path).stem),
        base=base,
        levels=levels,
        prompt_lengths=tuple(int(v) for v in lengths),
        synthesis_ratios=tuple(float(v) for v in ratios),
        root=root if storage.is_s3(root) else str(Path(root).resolve()),
        reuse=bool(data.get("reuse", True)),
        asha=asha,
        max_concurrent=limit,
    )


def _all(kind):
    return lambda v: (
        isinstance(v, list) and v and all(isinstance(x, kind) and not isinstance(x, bool) for x in v)
    )
