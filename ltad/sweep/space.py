"""A sweep's search space (`tune/*.yaml`): imbalance levels x any run-config fields, and how to search them.

The file names the base run config (plus `--set` overrides), one prepared shard set per level, the
fields to sweep (`params`: dotted run-config keys, each with a Tune domain: grid, choice, uniform,
loguniform; the older `prompt_lengths` / `synthesis_ratios` lists are grids of the two fields they
name), the search algorithm (`search`: grid, random or optuna; `num_samples`), the ASHA settings and
the sweep root (`root`: sweep.json, trials/, Ray storage). Syntax and choices: docs/SWEEPS.md.

Every trial's run config is derived here, so the driver, the trials and the summary agree on names.
A trial is a level and one value per swept field; its phase-1 run is the level and the values of the
fields phase 1 depends on (ltad/training/identity.py `shapes_phase1`), so trials that differ only in
later fields share it. Names: `{level}` then one part per phase-1 field (the phase-1 run), then one
per other field (the trial); `model.prompts.length` is `L{value}`, `phase2.synthesis_ratio`
`s{value}` (`exp10-L2-s0.25`, as before), any other field `{its last key part}_{value}`, and a value
that `:g` cannot write exactly (a sampled float) is written to 4 digits with a hash of the exact
values appended, so names stay unique.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from functools import reduce
from pathlib import Path
from typing import Any, Literal

from ltad.config import LTADConfig, check, key_type, load_yaml
from ltad.data.levels import Level
from ltad.errors import ConfigError
from ltad.eval.summary import PARAM_KEYS
from ltad.eval.validation import VAL_METRIC
from ltad.io import storage
from ltad.io.uri import resolve, resolve_run_locations
from ltad.training.identity import shapes_phase1

DOMAINS = ("grid", "choice", "uniform", "loguniform")
"""How a field's values are written: `{grid: [..]}` every value (Tune's grid_search), `{choice: [..]}`
one value drawn per trial, `{uniform: [lo, hi]}` / `{loguniform: [lo, hi]}` a float drawn from the
range; a plain list is the values to try (a grid, a choice under optuna)."""
FINITE = ("grid", "choice")
SEARCHES = ("grid", "random", "optuna")
SET_BY_SWEEP = ("data.uri", "data.use_feature_cache", "run.name", "run.storage_path", "run.output")
"""Run-config keys the sweep itself sets per trial (never swept)."""
TAGS = {PARAM_KEYS["prompt_length"]: "L", PARAM_KEYS["synthesis_ratio"]: "s"}
"""Short name parts of the two fields the first sweeps swept (their trial names stay `exp10-L2-s0.25`)."""
SYNTAX = "{grid: [..]}, {choice: [..]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]} or a list of values"


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
    params: dict[str, Any] = field(default_factory=dict)
    """Swept run-config fields: dotted key -> domain (see DOMAINS; docs/SWEEPS.md)."""
    prompt_lengths: tuple[int, ...] = ()
    """Shorthand (the first sweeps' syntax): values of `model.prompts.length`."""
    synthesis_ratios: tuple[float, ...] = ()
    """Shorthand (the first sweeps' syntax): values of `phase2.synthesis_ratio`."""
    search: Literal["grid", "random", "optuna"] = "grid"
    """Tune's search algorithm: every grid point (grid), Tune's random sampling (random), or one Optuna
    (TPE) study per imbalance level (optuna)."""
    num_samples: int = 1
    """random: samples per level (and per grid point); optuna: trials per level; grid: 1."""
    metric: str = ""
    """What optuna optimises (default: asha.metric); a metric the trials report."""
    mode: Literal["", "min", "max"] = ""
    """min or max (default: asha.mode)."""
    root: str = ""
    """The sweep root: s3://bucket/prefix or a directory (sweep.json, trials/, Ray storage)."""
    reuse: bool = True
    """Phase 1 once per (level, phase-1 field values) and the feature cache; False = the naive sweep
    (benchmark): every trial trains its own phase 1."""
    asha: AshaSpec | None = None
    """ASHA early stopping; null runs every trial fully."""
    max_concurrent: int | None = None
    """At most this many trials at once (default: as the cluster allows; see ltad/sweep/driver.py)."""

    def __post_init__(self) -> None:
        check(bool(self.levels), "levels", "a non-empty list", list(self.levels))
        ok = self.max_concurrent is None or self.max_concurrent >= 1
        check(ok, "max_concurrent", "null or an int >= 1", self.max_concurrent)
        check(isinstance(self.params, dict), "params", "a mapping of config keys to domains", self.params)
        check(self.num_samples >= 1, "num_samples", "an int >= 1", self.num_samples)
        swept = bool(self.params or self.prompt_lengths or self.synthesis_ratios)
        check(swept, "params", "a non-empty mapping of config keys to domains (or prompt_lengths / "
              "synthesis_ratios)", self.params)  # fmt: skip


@dataclass(frozen=True)
class Param:
    """One swept run-config field: its dotted key, its domain and the domain's values (finite domains:
    each value, validated and typed by the run config; uniform/loguniform: the bounds)."""

    key: str
    domain: str
    values: tuple[Any, ...]

    @property
    def finite(self) -> bool:
        return self.domain in FINITE

    @property
    def phase1(self) -> bool:
        """Phase 1 depends on this field (trials differing in it cannot share a phase-1 run)."""
        return shapes_phase1(self.key)

    def tune_domain(self):
        """The field's Ray Tune domain (grid_search for a grid)."""
        from ray import tune

        if self.domain == "grid":
            return tune.grid_search(list(self.values))
        if self.domain == "choice":
            return tune.choice(list(self.values))
        if self.domain == "uniform":
            return tune.uniform(*self.values)
        return tune.loguniform(*self.values)

    def to_dict(self) -> dict[str, Any]:
        return {self.domain: list(self.values)}


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
    """One trial (or, built by `Space.phase1_runs`, one shared phase-1 run): a level and one value per
    swept field, named by the space (`Space.trial`)."""

    level: SweepLevel
    params: dict[str, Any]
    """Dotted key -> value of every swept field (a phase-1 run: of the phase-1 fields only)."""
    name: str
    phase1_name: str
    """The phase-1 run the trial starts from (with reuse)."""

    @property
    def config(self) -> dict[str, Any]:
        """The trial's Tune config: its level and its field values (what Tune's MLflow callback logs)."""
        return {"level": self.level.name, **self.params}


def _override(key: str, value: Any) -> str:
    """`key=value` as `--set` writes it (floats exactly, lists as YAML)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, list | tuple):
        text = json.dumps(list(value))
    else:
        text = repr(value) if isinstance(value, float) else str(value)
    return f"{key}={text}"


def _value(cfg: LTADConfig, key: str) -> Any:
    value = reduce(getattr, key.split("."), cfg)
    return list(value) if isinstance(value, tuple) else value


def _part(value: Any) -> tuple[str, bool]:
    """A value as a name part, and whether the part spells it exactly."""
    if isinstance(value, float):
        text = f"{value:g}"
        if float(text) == value:
            return text, True
        return f"{value:.4g}", False
    text = str(value).lower() if isinstance(value, bool) else str(value)
    safe = "".join(c if c.isalnum() or c in "._" else "-" for c in text)
    return safe, safe == text


@dataclass(frozen=True)
class Space:
    """A parsed, validated search-space file."""

    name: str
    base: LTADConfig
    levels: tuple[SweepLevel, ...]
    root: str
    params: tuple[Param, ...] = ()
    """The swept fields, in the file's order (prompt_lengths, synthesis_ratios first when given)."""
    search: str = "grid"
    """grid, random or optuna (SEARCHES)."""
    num_samples: int = 1
    metric: str = ""
    """What the search algorithm optimises (optuna); '' for grid and random."""
    mode: str = ""
    reuse: bool = True
    """Phase 1 once per (level, phase-1 field values) and the feature cache; False = the naive sweep
    (benchmark)."""
    asha: dict[str, Any] | None = field(default=None)
    """ASHA settings (metric, mode, grace_period, reduction_factor, max_t); None = run every trial fully."""
    max_concurrent: int | None = None
    """At most this many trials at once; None = as many as the cluster places (it may grow). Applies
    when an experiment starts: a restored one keeps its limit."""

    # ---- names
    def _tags(self) -> dict[str, str]:
        """Key -> its name part's prefix: TAGS, else the key's last part (the whole key, dots as '_',
        where two swept keys end alike), then '_'."""
        last = [p.key.rsplit(".", 1)[-1] for p in self.params]
        out = {}
        for p, end in zip(self.params, last):
            if p.key in TAGS:
                out[p.key] = TAGS[p.key]
            else:
                out[p.key] = (end if last.count(end) == 1 else p.key.replace(".", "_")) + "_"
        return out

    def _name(self, level: SweepLevel, params: dict[str, Any]) -> str:
        tags, parts, exact = self._tags(), [level.name], True
        for p in sorted(self.params, key=lambda p: not p.phase1):  # the phase-1 run's name comes first
            if p.key in params:
                text, ok = _part(params[p.key])
                parts.append(f"{tags[p.key]}{text}")
                exact = exact and ok
        if not exact:
            blob = json.dumps(sorted(params.items()), default=str).encode()
            parts.append(hashlib.sha1(blob).hexdigest()[:6])
        return "-".join(parts)

    def phase1_keys(self) -> tuple[str, ...]:
        """The swept fields phase 1 depends on (a phase-1 run is a level and one value of each)."""
        return tuple(p.key for p in self.params if p.phase1)

    def trial(self, config: dict[str, Any]) -> Trial:
        """The trial a Tune config gives ({'level': name, key: value, ...}); also the {'trial': name}
        configs of experiments made before fields were swept by key."""
        if "trial" in config and "level" not in config:
            named = {t.name: t for t in (*self.trials(), *self.phase1_runs())}
            return named[config["trial"]]
        level = {lv.name: lv for lv in self.levels}[config["level"]]
        params = {p.key: self._typed(p.key, config[p.key]) for p in self.params if p.key in config}
        ones = {k: v for k, v in params.items() if k in self.phase1_keys()}
        name = self._name(level, params)
        return Trial(level, params, name, self._name(level, ones) if self.reuse else name)

    def _typed(self, key: str, value: Any) -> Any:
        """A value as the run config types it (Tune hands back what the domain held: 0 for 0.0)."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return list(value) if isinstance(value, tuple) else value
        return float(value) if key_type(LTADConfig, key) is float else value

    # ---- trials and phase-1 runs
    @property
    def finite(self) -> bool:
        """The trials are known before the sweep starts (search grid: every grid point)."""
        return self.search == "grid"

    def trials(self) -> list[Trial]:
        """Every trial of a grid search (level x every field's values), in the file's order; [] for
        random and optuna, whose trials the search algorithm proposes as the sweep runs."""
        if not self.finite:
            return []
        keys = [p.key for p in self.params]
        return [
            self.trial({"level": lv.name, **dict(zip(keys, combo))})
            for lv in self.levels
            for combo in itertools.product(*(p.values for p in self.params))
        ]

    def phase1_runs(self) -> list[Trial]:
        """The shared phase-1 runs (with reuse): each level x every combination of the phase-1 fields'
        values (finite domains by construction); [] without reuse (each trial trains its own)."""
        if not self.reuse:
            return []
        ones = [p for p in self.params if p.phase1]
        runs = []
        for lv in self.levels:
            for combo in itertools.product(*(p.values for p in ones)):
                t = self.trial({"level": lv.name, **{p.key: v for p, v in zip(ones, combo)}})
                runs.append(t)
        return runs

    def param_space(self) -> dict[str, Any]:
        """Tune's param_space for grid and random: the level as a grid, every field as its domain
        (choice expanded as a grid under search grid). Optuna takes its space from `search_space`."""
        from ray import tune

        space: dict[str, Any] = {"level": tune.grid_search([lv.name for lv in self.levels])}
        for p in self.params:
            grid = self.search == "grid" and p.domain == "choice"
            space[p.key] = tune.grid_search(list(p.values)) if grid else p.tune_domain()
        return space

    def search_space(self) -> dict[str, Any]:
        """The fields' Tune domains without the level (the space each level's Optuna study searches)."""
        return {p.key: p.tune_domain() for p in self.params}

    def recorded_params(self, trial: Trial) -> dict[str, Any]:
        """sweep.json's `params` of a trial: its swept fields' values, after the prompt length and
        synthesis ratio it runs with (swept or the base config's: every summary row has them)."""
        return {**{k: _value(self.base, k) for k in PARAM_KEYS.values()}, **trial.params}

    def trial_dir(self, trial: Trial) -> str:
        return storage.join(self.root, "trials", trial.name)

    def run_config(self, trial: Trial, *, phase1: bool = False) -> LTADConfig:
        """The run config of a trial (or of its shared phase-1 run): base + level data + swept values
        (for the shared phase-1 run, only the values of the fields phase 1 depends on)."""
        shared = phase1 and self.reuse
        name = trial.phase1_name if shared else trial.name
        keys = self.phase1_keys()
        params = {k: v for k, v in trial.params.items() if k in keys} if shared else trial.params
        return self.base.with_overrides(
            [
                f"data.uri={trial.level.data}",
                f"data.use_feature_cache={str(self.reuse).lower()}",
                *(_override(k, v) for k, v in params.items()),
                f"run.name={name}",
                f"run.storage_path={storage.join(self.root, 'ray')}",
                f"run.output={self.trial_dir(trial)}",
            ]
        )


def parse_param(base: LTADConfig, key: str, spec: Any, search: str) -> Param:
    """One `params` entry as a Param, every value checked by the run config (as `--set` would); a bad
    key or domain is one ConfigError naming the key."""
    where = f"params key '{key}'"
    try:
        tp = key_type(LTADConfig, key)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if key in SET_BY_SWEEP:
        raise ConfigError(f"{where} is set by the sweep itself per level and trial, so it cannot be swept")
    if isinstance(spec, list):
        spec = {"choice" if search == "optuna" else "grid": spec}
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DOMAINS):
        raise ConfigError(f"{where} must be one of {SYNTAX}, got {spec!r}")
    domain, values = next(iter(spec.items()))
    if domain in FINITE:
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {domain} must be a non-empty list of values, got {values!r}")
        typed = []
        for value in values:
            try:
                typed.append(_value(base.with_overrides([_override(key, value)]), key))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {domain} value {value!r}: {exc}") from None
        if len({json.dumps(v, default=str) for v in typed}) != len(typed):
            raise ConfigError(f"{where}: {domain} values {values!r} must be distinct")
        return Param(key, domain, tuple(typed))
    if tp is not float:
        raise ConfigError(
            f"{where}: {domain} draws floats, but the key is {getattr(tp, '__name__', tp)}: use choice or grid"
        )
    bounds = values if isinstance(values, list) and len(values) == 2 else None
    try:
        bounds = [float(v) for v in bounds] if bounds else None
    except (TypeError, ValueError):
        bounds = None
    if not bounds or not all(math.isfinite(b) for b in bounds) or bounds[0] >= bounds[1]:
        raise ConfigError(f"{where}: {domain} must be [lo, hi] with lo < hi, got {values!r}")
    if domain == "loguniform" and bounds[0] <= 0:
        raise ConfigError(f"{where}: loguniform needs lo > 0, got {values!r}")
    for bound in bounds:
        try:
            base.with_overrides([_override(key, bound)])
        except ConfigError as exc:
            raise ConfigError(f"{where}: {domain} bound {bound!r}: {exc}") from None
    return Param(key, domain, tuple(bounds))


def parse_params(spec: SpaceFile, base: LTADConfig) -> tuple[Param, ...]:
    """The swept fields: `prompt_lengths` / `synthesis_ratios` (the first sweeps' syntax) then `params`,
    checked against the search algorithm and phase-1 reuse."""
    written: dict[str, Any] = {}
    for key, values in ((PARAM_KEYS["prompt_length"], spec.prompt_lengths),
                        (PARAM_KEYS["synthesis_ratio"], spec.synthesis_ratios)):  # fmt: skip
        if values:
            written[key] = list(values)
    for key, domain in spec.params.items():
        if key in written:
            raise ConfigError(f"params key '{key}' is given twice (in params and as its shorthand list)")
        written[str(key)] = domain
    params = tuple(parse_param(base, key, domain, spec.search) for key, domain in written.items())
    for p in params:
        if spec.search == "grid" and not p.finite:
            raise ConfigError(
                f"params key '{p.key}' is {p.domain}, which search grid cannot enumerate: use grid or "
                "choice, or search random / optuna"
            )
        if spec.search == "optuna" and p.domain == "grid":
            raise ConfigError(
                f"params key '{p.key}' is a grid, which search optuna cannot take (Optuna proposes every "
                "value): write it as choice"
            )
        if spec.reuse and p.phase1 and not p.finite:
            raise ConfigError(
                f"params key '{p.key}' is {p.domain}, but phase 1 depends on it and is shared (reuse: true), "
                "so it needs a finite domain (choice or grid: phase 1 is trained once per value); or set "
                "reuse: false to train phase 1 per trial"
            )
    if spec.search != "grid" and all(p.finite for p in params):
        raise ConfigError(
            f"search {spec.search} needs at least one uniform or loguniform field: over finite domains "
            "alone it would propose settings already running (two trials under one run name); use search "
            "grid to run each combination once"
        )
    if spec.search == "grid" and spec.num_samples != 1:
        raise ConfigError(
            f"config key 'num_samples' must be 1 with search grid (every grid point runs once; sweep "
            f"run.seed for repeats), got {spec.num_samples}"
        )
    return params


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
        params = parse_params(spec, base)
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
        metric, mode = spec.metric, spec.mode
        if spec.search == "optuna":
            metric = metric or (spec.asha.metric if spec.asha else "")
            mode = mode or (spec.asha.mode if spec.asha else "")
            known = reported_metrics()
            check(metric in known, "metric", f"what search optuna optimises: a metric the trials report "
                  f"({', '.join(known)}), or set asha", metric)  # fmt: skip
            check(mode in ("min", "max"), "mode", "'min' or 'max' (or set asha)", mode)
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
        root=root,
        params=params,
        search=spec.search,
        num_samples=spec.num_samples,
        metric=metric,
        mode=mode,
        reuse=spec.reuse,
        asha=None if spec.asha is None else asdict(spec.asha),
        max_concurrent=spec.max_concurrent,
    )
