"""Optuna per imbalance level: one Ray Tune `OptunaSearch` (a TPE study) per level, behind one searcher.

As with ASHA (ltad/sweep/scheduler.py), trials of different levels train on different data, so a
study that mixed them would learn the level's difficulty, not the fields'. `LevelSearch` keeps one
study per level and hands out `num_samples` trials per level, round robin (so levels progress
together), each config being {'level': name, key: value, ...}; results reach only their level's study.
Tune saves searchers with experiment snapshots (`Tuner.restore` reads them): its own bookkeeping goes
to JSON, each level's study to Ray's `OptunaSearch.save` beside it; ltad itself never unpickles.
"""

from __future__ import annotations

import json
from typing import Any

from ray.tune.search import Searcher


class LevelSearch(Searcher):
    """One OptunaSearch per level over `space` (Tune domains keyed by dotted config key)."""

    def __init__(
        self,
        levels: list[str],
        space: dict[str, Any],
        *,
        metric: str,
        mode: str,
        num_samples: int,
        seed: int | None = None,
    ):
        from ray.tune.search.optuna import OptunaSearch

        super().__init__(metric=metric, mode=mode)
        self.num_samples = num_samples
        distributions = OptunaSearch.convert_search_space(space)
        self.studies = {
            level: OptunaSearch(space=distributions, metric=metric, mode=mode, seed=seed) for level in levels
        }
        self.issued = dict.fromkeys(levels, 0)
        self.level_of: dict[str, str] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return metric in (None, self.metric) and mode in (None, self.mode) and not config

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        open_levels = [lv for lv, n in self.issued.items() if n < self.num_samples]
        if not open_levels:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's documented end signal
        level = min(open_levels, key=lambda lv: self.issued[lv])  # round robin, in level order
        config = self.studies[level].suggest(trial_id)
        if config is None:
            return None
        self.issued[level] += 1
        self.level_of[trial_id] = level
        return {"level": level, **config}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # a phase-2 report between validations lacks the metric: Optuna would fail on it
        if trial_id in self.level_of and result.get(self.metric) is not None:
            self.studies[self.level_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.level_of:
            self.studies[self.level_of[trial_id]].on_trial_complete(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        levels = list(self.studies)
        for i, level in enumerate(levels):
            self.studies[level].save(f"{checkpoint_path}.level{i}")
        state = {"levels": levels, "issued": self.issued, "level_of": self.level_of}
        with open(checkpoint_path, "w") as f:
            json.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        for i, level in enumerate(state["levels"]):
            if level in self.studies:
                self.studies[level].restore(f"{checkpoint_path}.level{i}")
        self.issued = {lv: int(state["issued"].get(lv, 0)) for lv in self.studies}
        self.level_of = {str(k): str(v) for k, v in state["level_of"].items()}
