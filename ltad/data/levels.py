"""An imbalance level (split profile + ratio) and its one label, shared by sweeps, studies and summaries."""

from __future__ import annotations

from dataclasses import dataclass

from ltad.data.splits import check_ratio

BALANCED = "balanced"
"""Label of the `full` profile (every class keeps all its training images)."""


@dataclass(frozen=True)
class Level:
    """A split profile and its head/tail ratio (1.0 for `full`)."""

    profile: str
    ratio: float

    @property
    def name(self) -> str:
        """'balanced', 'exp100', 'step10': the label in tables, file names and trial names."""
        return BALANCED if self.profile == "full" else f"{self.profile}{self.ratio:g}"

    @staticmethod
    def parse(text: str) -> Level:
        """'full' (or 'balanced'), 'exp:100', 'step:10' -> Level; a bad profile or ratio is a ConfigError."""
        profile, _, ratio = str(text).partition(":")
        profile = "full" if profile == BALANCED else profile
        try:
            value: float | str | None = float(ratio) if ratio else None
        except ValueError:
            value = ratio
        return Level(profile, check_ratio(profile, value))
