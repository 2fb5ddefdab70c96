"""What every distributed stage receives: one typed `StageInput`, built by `stage_input` alone.

The job's driver (training/pipeline.py) and the sweep (sweep/driver.py) both build it here, so a stage
never reads string keys of a hand-made dict. Ray Train passes a train function one dict: `fit` wraps
the input as `{"stage": StageInput}` and `StageInput.of(loop)` unwraps it on the worker.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltad.config import LTADConfig
from ltad.training.engine import load_zero_config
from ltad.training.identity import run_root

LOOP_KEY = "stage"
STAGE_NAMES = ("encode", "phase1", "phase2", "evaluate")


@dataclass(frozen=True)
class StageInput:
    """A stage's inputs: the resolved run config, DeepSpeed JSON, code version and earlier results."""

    config: LTADConfig
    deepspeed: dict[str, Any]
    """The ZeRO stage's run-independent JSON (configs/deepspeed/zero{stage}.json), read on the driver."""
    git_commit: str
    phase1_checkpoint: Any = None
    """A finished phase 1 (a checkpoint URI or `ray.train.Checkpoint`); None: the run's own (`roots`)."""
    phase2_checkpoint: Any = None
    """A finished phase 2 (a checkpoint URI or `ray.train.Checkpoint`); None: the run's own (`roots`)."""
    training: dict[str, float | None] = field(default_factory=dict)
    """What evaluation records about training: corrupt samples skipped per phase."""
    identity: dict[str, Any] = field(default_factory=dict)
    """Per stage: the fingerprint of its inputs and the commits that ran it (ltad/training/identity.py)."""
    stages: tuple[str, ...] = ()
    """What `stages.run_job` runs, in order, in one worker group (encode, phase1, phase2, evaluate)."""
    roots: dict[str, str] = field(default_factory=dict)
    """Stage -> its run directory (checkpoints, evaluations): `{storage}/{run.name}-{stage}` by default."""

    def root(self, stage: str) -> str:
        """The run directory of `stage` (training/store.py keeps its checkpoints there)."""
        if stage not in self.roots:
            raise KeyError(f"no run directory for stage '{stage}' in this stage input")
        return self.roots[stage]

    @property
    def data_uri(self) -> str:
        return self.config.data.uri

    def loop_config(self) -> dict[str, Any]:
        return {LOOP_KEY: self}

    @staticmethod
    def of(loop: dict[str, Any]) -> StageInput:
        return loop[LOOP_KEY]


def stage_input(cfg: LTADConfig, *, commit: str | None = None, **results: Any) -> StageInput:
    """The input of any stage of the run `cfg`; `results` are phase1_checkpoint / phase2_checkpoint /
    training / identity / stages / roots (default: every stage's `{storage}/{run.name}-{stage}`)."""
    results.setdefault("roots", {s: run_root(cfg, s) for s in STAGE_NAMES})
    return StageInput(
        config=cfg,
        deepspeed=load_zero_config(cfg.scaling.zero_stage),
        git_commit=git_commit() if commit is None else commit,
        **results,
    )


def git_commit() -> str:
    """The commit this code is: LTAD_GIT_COMMIT when set, else `git rev-parse` in the checkout
    (`+dirty` with uncommitted changes), else the commit HEAD and the refs name (what `ray job submit
    --working-dir .` uploads of them through the `.ltad-git` link, see .rayignore; Ray never uploads
    .git itself, and without objects uncommitted changes cannot be checked, so the commit is marked
    `+unverified`), else the image's LTAD_IMAGE_COMMIT (the
    code baked into it), else 'unknown'."""
    if os.environ.get("LTAD_GIT_COMMIT"):
        return os.environ["LTAD_GIT_COMMIT"]
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        found = commit_from_refs(root / ".git") or commit_from_refs(root / ".ltad-git")
        if found:
            return f"{found}+unverified"
        return os.environ.get("LTAD_IMAGE_COMMIT") or "unknown"  # baked into docker/Dockerfile's image
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def commit_from_refs(git_dir: Path) -> str | None:
    """The commit `HEAD` names, read from the files alone (a detached sha, a loose ref or packed-refs)."""
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref: "):
        return head if _is_sha(head) else None
    ref = head[len("ref: ") :]
    loose = git_dir / ref
    if loose.is_file():
        sha = loose.read_text().strip()
        return sha if _is_sha(sha) else None
    packed = git_dir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and _is_sha(parts[0]):
                return parts[0]
    return None


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)
