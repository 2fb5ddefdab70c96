"""Summary of a sweep and single runs: `results.csv`, `report.md` and PNG plots.

Reads each run's `metrics.json` (local folder or `s3://` prefix) and the sweep's `sweep.json` (format
in docs/ARCHITECTURE.md), validates everything before writing anything, builds one row per run and
writes all outputs into a temporary folder first, so a failure never leaves a half report behind.
An imbalance *level* is (dataset, profile, ratio); a *setting* is (prompt length, synthesis ratio, and
the values of any other field the sweep swept) within a level, its figures the mean over the runs
(seeds) that share it. A sweep trial's swept fields (sweep.json `params`) are read back from the
config its metrics.json records (what ran) and checked against sweep.json; fields other than the
prompt length and synthesis ratio get a results.csv column each, named by the dotted key.

Each level's setting is chosen by the validation metric alone (`val_image_AUROC`: held-out normals vs
synthetic pseudo-anomalies, ltad/eval/validation.py), never by a test metric; the test metrics are
then reported for the chosen setting. A level with a run whose metrics.json has no validation metric
(written before it existed, or data without held-out images) gets no choice: the report says so and
names those runs. A sweep trial ASHA stopped is a row too (`status` stopped), with the validation
metric it was stopped on (sweep.json) and empty test columns.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ltad.data.levels import Level
from ltad.errors import DataError, UserError
from ltad.eval.aggregate import GROUPS, METRICS
from ltad.eval.summary_plots import plot_heatmap, plot_per_class, plot_ratio
from ltad.eval.validation import VAL_METRIC
from ltad.io import storage

SWEEP_FORMAT = "ltad-sweep/1"
TRIAL_STATUSES = ("finished", "stopped", "error", "running", "pending")
PARAM_KEYS = {"prompt_length": "model.prompts.length", "synthesis_ratio": "phase2.synthesis_ratio"}
GROUP_METRICS = ("image_AUROC", "pixel_AUROC")
CHOICE_RULE = (
    "chosen by validation image AUROC (held-out normals vs synthetic pseudo-anomalies; mean over the "
    "setting's runs; ties: the first by prompt length, then synthesis ratio); test metrics reported "
    "for the chosen setting"
)
COLUMNS = (
    "source", "trial", "status", "dataset", "profile", "ratio", "level", "prompt_length", "synthesis_ratio",
    "seed", VAL_METRIC, *METRICS,
    *(f"{g}_{m}" for g in GROUPS for m in GROUP_METRICS),
    *(f"gap_{m}" for m in GROUP_METRICS),
    "real_clip", "weights", "path",
)  # fmt: skip


def level_label(profile: str, ratio: float) -> str:
    """'exp100', 'step50', 'balanced': the level name used in tables and file names."""
    return Level(profile, ratio).name


@dataclass(frozen=True)
class RunResult:
    """One run (or sweep trial) as read from its metrics.json."""

    source: str  # the sweep root, or "run" for a single run folder
    trial: str  # the trial name ("" for a single run)
    uri: str  # the run folder
    dataset: str
    profile: str
    ratio: float
    prompt_length: int
    synthesis_ratio: float
    seed: int | None
    values: dict[str, float]  # VAL_METRIC, METRICS, {group}_{metric}, gap_{metric}; NaN = undefined
    per_class: dict[str, dict[str, Any]]
    real_clip: bool
    weights: str
    status: str = "finished"  # or "stopped": an ASHA-stopped trial, validation metric only
    params: dict[str, Any] = field(default_factory=dict)
    """The sweep's swept fields (dotted key -> the value the run's config holds); {} for a run."""

    @property
    def other_params(self) -> tuple[tuple[str, Any], ...]:
        """The swept fields beyond the prompt length and synthesis ratio (their own CSV columns)."""
        return tuple(sorted((k, _frozen(v)) for k, v in self.params.items() if k not in PARAM_FIELDS))

    @property
    def validated(self) -> bool:
        """Whether the run has a validation metric (what chooses settings)."""
        return not math.isnan(self.values[VAL_METRIC])

    @property
    def level(self) -> str:
        return level_label(self.profile, self.ratio)

    @property
    def level_key(self) -> tuple[str, str, float]:
        return (self.dataset, self.profile, self.ratio)

    def row(self) -> dict[str, Any]:
        fixed = {c: getattr(self, c) for c in COLUMNS if c not in self.values and c != "path"}
        return {**fixed, **self.values, **dict(self.other_params), "path": self.uri}


PARAM_FIELDS = frozenset(PARAM_KEYS.values())


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def param_text(params: Iterable[tuple[str, Any]]) -> str:
    """'phase2.lr=0.0003, model.score.fusion_lambda=0.5' ('' for none)."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params)


def csv_columns(results: Sequence[RunResult]) -> list[str]:
    """COLUMNS, with one column per other swept field (sorted) after `synthesis_ratio`."""
    extra = sorted({k for r in results for k, _ in r.other_params})
    at = COLUMNS.index("synthesis_ratio") + 1
    return [*COLUMNS[:at], *extra, *COLUMNS[at:]]


def _get(data: Any, dotted: str, where: str) -> Any:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DataError(
                f"{where} lacks key '{dotted}': expected the layout documented in docs/ARCHITECTURE.md"
            )
        node = node[part]
    return node


def _number(data: Any, dotted: str, where: str) -> float:
    """A metric value; null (NaN written by the evaluation) is NaN."""
    v = _get(data, dotted, where)
    if v is None:
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DataError(f"{where} key '{dotted}' must be a number or null, got {v!r}")
    return float(v)


def _int(data: Any, dotted: str, where: str) -> int:
    v = _get(data, dotted, where)
    if isinstance(v, bool) or not isinstance(v, int):
        raise DataError(f"{where} key '{dotted}' must be an int, got {v!r}")
    return v


def _mapping(data: Any, dotted: str, where: str) -> dict[str, Any]:
    v = _get(data, dotted, where)
    if not isinstance(v, dict):
        raise DataError(f"{where} key '{dotted}' must be a mapping, got {type(v).__name__}")
    return v


def _metrics_uri(uri: str) -> str:
    return uri if uri.endswith(".json") else storage.join(uri, "metrics.json")


def load_run(uri: str, source: str = "run", trial: str = "", keys: Iterable[str] = ()) -> RunResult:
    """Read and validate the metrics.json of the run folder `uri` (or the file itself); `keys`: the
    dotted config keys (a sweep's swept fields) whose values to read from its recorded config."""
    where = _metrics_uri(uri)
    if not storage.exists(where):
        raise UserError(
            f"run folder {uri} has no metrics.json: expected a finished ltad run (jobs/train.py output)"
        )
    m = storage.read_json(where)
    values = {VAL_METRIC: _number(m, VAL_METRIC, where) if VAL_METRIC in m else math.nan}
    values.update({k: _number(m, k, where) for k in METRICS})
    for g in GROUPS:
        values.update({f"{g}_{k}": _number(m, f"groups.{g}.{k}", where) for k in GROUP_METRICS})
    values.update({f"gap_{k}": _number(m, f"gap.{k}", where) for k in GROUP_METRICS})
    per_class = _mapping(m, "per_class", where)
    for name, pc in per_class.items():
        for key in ("image_AUROC", "pixel_AUROC", "train_count", "group"):
            _get(pc, key, f"{where} per_class.{name}")
    prov = _mapping(m, "provenance", where)
    weights = _mapping(prov, "weights", f"{where} provenance")
    seed = prov["seed"] if "seed" in prov else _get(prov, "config.run.seed", f"{where} provenance")
    return RunResult(
        source=source,
        trial=trial,
        uri=uri.removesuffix("/metrics.json") if uri.endswith(".json") else uri,
        dataset=str(prov.get("dataset", "")),
        profile=str(_get(prov, "split.profile", f"{where} provenance")),
        ratio=_number(prov, "split.ratio", f"{where} provenance"),
        prompt_length=_int(prov, "config." + PARAM_KEYS["prompt_length"], f"{where} provenance"),
        synthesis_ratio=_number(prov, "config." + PARAM_KEYS["synthesis_ratio"], f"{where} provenance"),
        seed=None if seed is None else int(seed),
        values=values,
        per_class=per_class,
        real_clip=bool(weights.get("real_clip", False)),
        weights=f"image: {weights.get('image', '?')}; text: {weights.get('text', '?')}",
        params={k: _get(prov, f"config.{k}", f"{where} provenance") for k in keys},
    )


def read_sweep(root: str) -> dict[str, Any]:
    """The validated sweep.json of the sweep root `root`."""
    where = storage.join(root, "sweep.json")
    if not storage.exists(where):
        raise UserError(f"sweep root {root} has no sweep.json: expected the output folder of tune/sweep.py")
    return validate_sweep(storage.read_json(where), where)


def write_sweep(
    root: str, name: str, levels: list[dict], trials: list[dict], metric: str = VAL_METRIC
) -> str:
    """Validate and write `<root>/sweep.json` (for tune/sweep.py: call it again whenever a trial ends)."""
    where = storage.join(root, "sweep.json")
    sweep = {"format": SWEEP_FORMAT, "name": name, "metric": metric, "levels": levels, "trials": trials}
    storage.write_json(where, validate_sweep(sweep, where))
    return where


def validate_sweep(sweep: Any, where: str) -> dict[str, Any]:
    """`sweep` if it follows the sweep.json format (docs/ARCHITECTURE.md), else a DataError naming `where`."""
    if not isinstance(sweep, dict) or sweep.get("format") != SWEEP_FORMAT:
        got = sweep.get("format") if isinstance(sweep, dict) else sweep
        raise DataError(f"{where} must have format '{SWEEP_FORMAT}', got {got!r}")
    levels = {
        _get(lv, "name", f"{where} levels[{i}]"): lv for i, lv in enumerate(_get(sweep, "levels", where))
    }
    for name, lv in levels.items():
        _get(lv, "profile", f"{where} level {name}")
        _number(lv, "ratio", f"{where} level {name}")
    for i, t in enumerate(_get(sweep, "trials", where)):
        at = f"{where} trials[{i}]"
        if _get(t, "level", at) not in levels:
            raise DataError(f"{at} names level {t['level']!r}, which is not in levels {sorted(levels)}")
        if _get(t, "status", at) not in TRIAL_STATUSES:
            raise DataError(f"{at} has status {t['status']!r}; expected one of {', '.join(TRIAL_STATUSES)}")
        _get(t, "name", at)
    return sweep


def _check_trial(run: RunResult, trial: dict, level: dict, params: dict, where: str) -> None:
    """The trial's metrics must match what sweep.json says it ran."""
    if run.profile != level["profile"] or not math.isclose(run.ratio, float(level["ratio"])):
        raise DataError(
            f"{where} was evaluated on split {run.profile} ratio {run.ratio:g}, but sweep.json puts trial "
            f"{trial['name']!r} in level {level['name']!r} ({level['profile']} ratio {float(level['ratio']):g})"
        )
    for key, value in params.items():
        have: Any = run.params.get(key)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (have, value))
        if not (math.isclose(float(have), float(value)) if numbers else _frozen(have) == _frozen(value)):
            raise DataError(
                f"{where} ran with {key}={have}, but sweep.json gives trial {trial['name']!r} {value}"
            )


def _param(params: dict, key: str, where: str) -> float:
    v = params.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise DataError(f"{where} needs a number for params '{key}', got {v!r}")
    return v


def stopped_trial(root: str, trial: dict, level: dict, dataset: str) -> RunResult:
    """The row of a trial ASHA stopped: its settings from sweep.json, the validation metric it was
    stopped on (NaN if none was reported), every test column empty."""
    at = f"{storage.join(root, 'sweep.json')} trial {trial['name']!r}"
    params = trial.get("params", {})
    length, synth = PARAM_KEYS["prompt_length"], PARAM_KEYS["synthesis_ratio"]
    values = {c: math.nan for c in COLUMNS[COLUMNS.index(VAL_METRIC) : COLUMNS.index("real_clip")]}
    if trial.get(VAL_METRIC) is not None:
        values[VAL_METRIC] = _number(trial, VAL_METRIC, at)
    return RunResult(
        source=root,
        trial=trial["name"],
        uri=storage.join(root, trial.get("path") or f"trials/{trial['name']}"),
        dataset=dataset,
        profile=str(level["profile"]),
        ratio=float(level["ratio"]),
        prompt_length=int(_param(params, length, at)),
        synthesis_ratio=float(_param(params, synth, at)),
        seed=None,
        values=values,
        per_class={},
        real_clip=False,
        weights="",
        status="stopped",
        params=dict(params),
    )


def collect(sweeps: Sequence[str], runs: Sequence[str]) -> tuple[list[RunResult], list[str]]:
    """Every readable result (ASHA-stopped trials as `stopped` rows, after the evaluated ones), and
    one line per other sweep trial without results (failed, running, pending)."""
    results, stopped, missing = [], [], []
    for root in sweeps:
        sweep = read_sweep(root)
        levels = {lv["name"]: lv for lv in sweep["levels"]}
        halted = []
        for t in sweep["trials"]:
            uri = storage.join(root, t.get("path") or f"trials/{t['name']}")
            if t["status"] != "finished" and not storage.exists(_metrics_uri(uri)):
                if t["status"] == "stopped":
                    halted.append(t)
                else:
                    missing.append(f"{root}: trial {t['name']} ({t['status']})")
                continue
            run = load_run(uri, source=root, trial=t["name"], keys=t.get("params", {}))
            _check_trial(run, t, levels[t["level"]], t.get("params", {}), _metrics_uri(uri))
            results.append(run)
        by_level = {t["name"]: t["level"] for t in sweep["trials"]}
        datasets = {by_level[r.trial]: r.dataset for r in results if r.source == root}
        for t in halted:
            stopped.append(stopped_trial(root, t, levels[t["level"]], datasets.get(t["level"], "")))
    results += [load_run(uri) for uri in runs]
    results += stopped
    if not any(r.status == "finished" for r in results):
        raise UserError(
            f"no results to summarize in sweeps {list(sweeps)} and runs {list(runs)}: every trial lacks metrics.json"
        )
    return results, missing


# --------------------------------------------------------------------------- selection


def _rank(v: float) -> float:
    return -math.inf if math.isnan(v) else v


def _mean(values: Iterable[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")


@dataclass(frozen=True)
class Setting:
    """(prompt length, synthesis ratio, other swept fields) within one level, figures averaged over its runs."""

    prompt_length: int
    synthesis_ratio: float
    runs: tuple[RunResult, ...]
    params: tuple[tuple[str, Any], ...] = ()
    """The other swept fields' values (RunResult.other_params)."""

    def value(self, key: str) -> float:
        return _mean(r.values[key] for r in self.runs)

    @property
    def score(self) -> float:
        """Ranking: the validation metric alone (no test metric breaks ties)."""
        return _rank(self.value(VAL_METRIC))

    @property
    def best_run(self) -> RunResult:
        """The run (seed) of the setting with the highest validation metric (its per-class plot)."""
        return max(self.runs, key=lambda r: _rank(r.values[VAL_METRIC]))


def evaluated(results: Sequence[RunResult]) -> list[RunResult]:
    """The runs with test metrics (not the ASHA-stopped trials)."""
    return [r for r in results if r.status == "finished"]


def settings_by_level(results: Sequence[RunResult]) -> dict[tuple, list[Setting]]:
    """Level key -> its settings (evaluated runs only); levels sorted by (dataset, profile, ratio)."""
    grouped: dict[tuple, dict[tuple, list[RunResult]]] = defaultdict(lambda: defaultdict(list))
    for r in evaluated(results):
        grouped[r.level_key][(r.prompt_length, r.synthesis_ratio, r.other_params)].append(r)
    return {
        key: [Setting(p, s, tuple(runs), o) for (p, s, o), runs in sorted(grouped[key].items(), key=_order)]
        for key in sorted(grouped)
    }


def _order(item: tuple) -> tuple:
    """Settings in (prompt length, synthesis ratio, other fields as text) order."""
    (p, s, o), _ = item
    return (p, s, param_text(o))


def unvalidated(results: Sequence[RunResult]) -> dict[tuple, list[RunResult]]:
    """Level key -> its evaluated runs without a validation metric (levels that have any)."""
    out: dict[tuple, list[RunResult]] = defaultdict(list)
    for r in evaluated(results):
        if not r.validated:
            out[r.level_key].append(r)
    return dict(out)


def best_settings(results: Sequence[RunResult]) -> dict[tuple, Setting]:
    """Each level's setting with the highest mean validation metric (`CHOICE_RULE`); a level with a
    run lacking the validation metric is left out (`unvalidated`): never chosen by a test metric."""
    skip = unvalidated(results)
    return {
        key: max(ss, key=lambda s: s.score)  # max keeps the first of equal scores: (length, ratio) order
        for key, ss in settings_by_level(results).items()
        if key not in skip
    }


# --------------------------------------------------------------------------- outputs


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}"


def _level_name(key: tuple) -> str:
    dataset, profile, ratio = key
    return f"{dataset} {level_label(profile, ratio)}".strip()


def _slug(key: tuple) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in _level_name(key).replace(" ", "-"))


def write_csv(path: Path, results: Sequence[RunResult]) -> None:
    with path.open("w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=csv_columns(results))
        out.writeheader()
        for r in results:
            out.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.row().items()})


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def choice_lines(results: Sequence[RunResult]) -> list[str]:
    """What chose each level's setting, one line each (stdout of `ltad summary`)."""
    best, skip = best_settings(results), unvalidated(results)
    lines = [f"best setting per level {CHOICE_RULE}"]
    for key in settings_by_level(results):
        if key in best:
            s = best[key]
            other = f", {param_text(s.params)}" if s.params else ""
            lines.append(
                f"  {_level_name(key)}: prompt length {s.prompt_length}, synthesis ratio {s.synthesis_ratio:g}{other} "
                f"(validation image AUROC {_pct(s.value(VAL_METRIC))}; test image AUROC {_pct(s.value('image_AUROC'))})"
            )
        else:
            lines.append(
                f"  {_level_name(key)}: not chosen: {len(skip[key])} runs have no validation metric "
                "(none is chosen by a test metric instead)"
            )
    return lines


def write_report(
    path: Path, results: Sequence[RunResult], missing: Sequence[str], plots: dict[str, str]
) -> None:
    """report.md: weights first (said plainly), the setting validation chose per level and its test
    metrics, levels it could not choose for, levels side by side, stopped trials, plots."""
    best, skip, levels = best_settings(results), unvalidated(results), settings_by_level(results)
    runs, stopped = evaluated(results), [r for r in results if r.status == "stopped"]
    lines = [
        "# LTAD sweep summary",
        "",
        f"{len(runs)} evaluated runs over {len(levels)} imbalance levels"
        + (f", {len(stopped)} trials stopped by ASHA" if stopped else "")
        + "; values in %.",
        "",
    ]
    notes = sorted({(r.real_clip, r.weights) for r in runs})
    lines += ["## Weights", ""]
    for real, text in notes:
        n = sum((r.real_clip, r.weights) == (real, text) for r in runs)
        lines.append(f"- {text} ({n} runs){'' if real else ': not CLIP, so not comparable with the paper'}")
    lines += ["", "## Best setting per level", "", f"Each level's setting is {CHOICE_RULE}.", ""]
    rows = []
    for key in levels:
        if key in best:
            s = best[key]
            rows.append([_level_name(key), s.prompt_length, f"{s.synthesis_ratio:g}", len(s.runs),
                         _pct(s.value(VAL_METRIC)), _pct(s.value("image_AUROC")), _pct(s.value("pixel_AUROC")),
                         f"`{s.best_run.uri}`"])  # fmt: skip
        else:
            rows.append([_level_name(key), "not chosen", "", "", "n/a", "", "",
                         f"{len(skip[key])} runs without a validation metric (below)"])  # fmt: skip
    header = ["level", "prompt length", "synthesis ratio", "runs", "validation image AUROC (chose)"]
    header += ["test image AUROC", "test pixel AUROC", "best run"]
    if any(r.other_params for r in results):  # the other swept fields of each chosen setting
        header.append("other swept fields")
        for key, row in zip(levels, rows):
            row.append(param_text(best[key].params) if key in best else "")
    lines += _table(header, rows)
    if skip:
        lines += [
            "",
            "## Levels whose choice could not be made by validation",
            "",
            "These runs' metrics.json have no validation image AUROC (evaluated before it existed, or data "
            "without held-out normal images), so their levels' settings were not chosen, and none was "
            "chosen by a test metric instead. Re-evaluate them (`ltad evaluate`) on data with held-out "
            "images to choose.",
            "",
        ]
        for key, missing_val in skip.items():
            lines.append(f"- {_level_name(key)}: " + ", ".join(f"`{r.uri}`" for r in missing_val))
    lines += ["", "## Across levels (test metrics of the setting validation chose)", ""]
    metrics = [*METRICS, *(f"{g}_image_AUROC" for g in GROUPS), *(f"{g}_pixel_AUROC" for g in GROUPS)]
    metrics += ["gap_image_AUROC", "gap_pixel_AUROC"]
    header = ["level", "img AUROC", "px AUROC", "AUPRO", "img F1max", "head img", "medium img", "tail img"]
    header += ["head px", "medium px", "tail px", "gap img", "gap px"]
    header = [header[0], *(f"test {h}" for h in header[1:])]
    lines += _table(header, ([_level_name(k), *(_pct(s.value(m)) for m in metrics)] for k, s in best.items()))
    lines += [
        "",
        "Groups: head / medium / tail thirds of the classes by training count; gap = head - tail.",
        "",
    ]
    if stopped:
        lines += [
            "## Trials stopped by ASHA",
            "",
            "On the validation image AUROC they last reported; no test metrics.",
            "",
        ]
        lines += _table(
            ["trial", "level", "prompt length", "synthesis ratio", "validation image AUROC when stopped",
             "other swept fields"],
            ([r.trial, f"{r.dataset} {r.level}".strip(), r.prompt_length, f"{r.synthesis_ratio:g}",
              _pct(r.values[VAL_METRIC]), param_text(r.other_params)] for r in stopped),
        )  # fmt: skip
        lines.append("")
    if missing:
        lines += ["## Trials without results", "", *(f"- {m}" for m in missing), ""]
    lines += ["## Plots", "", *(f"![{title}]({rel})" for title, rel in plots.items()), ""]
    path.write_text("\n".join(lines))


def _render(tmp: Path, results: Sequence[RunResult], missing: Sequence[str]) -> None:
    """Every output file into the staging folder `tmp`."""
    (tmp / "plots").mkdir()
    best = best_settings(results)
    plots = {"Test image AUROC vs imbalance ratio (setting chosen by validation)": "plots/auroc_vs_ratio.png"}
    lines: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for (dataset, profile, ratio), s in best.items():
        point = (ratio, s.value("image_AUROC"), s.value("tail_image_AUROC"))
        lines[f"{dataset} {profile}".strip()].append(point)
    plot_ratio(tmp / "plots/auroc_vs_ratio.png", lines)
    for key, settings in settings_by_level(results).items():
        lengths = sorted({s.prompt_length for s in settings})
        ratios = sorted({s.synthesis_ratio for s in settings})
        grid = np.full((len(lengths), len(ratios)), np.nan)
        # a cell holding several settings (other swept fields) shows the one validation ranks first
        for s in sorted(settings, key=lambda s: s.score):
            grid[lengths.index(s.prompt_length), ratios.index(s.synthesis_ratio)] = s.value("image_AUROC")
        rel = plots[f"{_level_name(key)}: prompt length x synthesis ratio (test)"] = (
            f"plots/heatmap_{_slug(key)}.png"
        )
        plot_heatmap(tmp / rel, _level_name(key), lengths, ratios, grid)
    for key, s in best.items():
        rel = plots[f"{_level_name(key)}: per class (chosen setting)"] = f"plots/per_class_{_slug(key)}.png"
        plot_per_class(tmp / rel, f"{_level_name(key)}, chosen setting (test)", s.best_run.per_class)
    write_csv(tmp / "results.csv", results)
    write_report(tmp / "report.md", results, missing, plots)


def _publish(tmp: Path, out: str) -> None:
    """Move the finished files into `out`; report.md goes last, so its presence means complete."""
    files = [*sorted((tmp / "plots").iterdir()), tmp / "results.csv", tmp / "report.md"]
    if storage.is_s3(out):
        for f in files:
            storage.upload_file(f, storage.join(out, str(f.relative_to(tmp))))
        return
    dest = Path(out)
    old = dest / "plots"
    if old.exists():  # plots/ is ours as a whole: swap it, so no stale plot of an earlier summary stays
        os.replace(old, tmp / "plots.old")
    os.replace(tmp / "plots", old)
    os.replace(tmp / "results.csv", dest / "results.csv")
    os.replace(tmp / "report.md", dest / "report.md")


def summarize(sweeps: Sequence[str], runs: Sequence[str], out: str) -> list[RunResult]:
    """Read every sweep and run, then write results.csv, report.md and plots/ under `out`."""
    results, missing = collect(sweeps, runs)
    if not storage.is_s3(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    staging = Path(out) if not storage.is_s3(out) else None
    tmp = Path(tempfile.mkdtemp(prefix=".summary-", dir=staging))
    try:
        _render(tmp, results, missing)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results
