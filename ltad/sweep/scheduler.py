"""ASHA within one imbalance level: one Ray Tune `ASHAScheduler` per level, behind one scheduler.

Trials of different imbalance levels train on different data, so their validation AUROCs are not
comparable: a hard level (exp100) would lose every rung to an easy one (exp10) and be stopped for
its data, not its setting. `LevelASHA` gives each level its own ASHA brackets and rungs (made when
the level's first trial is added), so a trial is only ever cut against trials of its own level.
It pickles as plain data (Tune saves schedulers with experiment snapshots).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler


class LevelASHA(FIFOScheduler):
    """ASHA per level: a trial's level is its config's `level`; `levels` maps the `config["trial"]`
    names of experiments made before fields were swept by key to their level's name."""

    def __init__(self, levels: dict[str, str], *, metric: str, mode: str, **asha: Any):
        super().__init__()
        self._metric, self._mode = metric, mode
        self.levels, self.asha = dict(levels), dict(asha, metric=metric, mode=mode)
        self.by_level: dict[str, ASHAScheduler] = {}

    def level_of(self, trial) -> str:
        if "level" in trial.config:
            return trial.config["level"]
        return self.levels[trial.config["trial"]]

    def _of(self, trial) -> ASHAScheduler:
        level = self.level_of(trial)
        if level not in self.by_level:
            self.by_level[level] = ASHAScheduler(time_attr="training_iteration", **self.asha)
        return self.by_level[level]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return metric in (None, self._metric) and mode in (None, self._mode)

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"level {name}: {s.debug_string()}" for name, s in sorted(self.by_level.items()))
