"""A phase's model.pt is read privately from the checkpoint's filesystem (no shared local copy)."""

from __future__ import annotations

import pytest
import torch

from ltad.errors import DataError
from ltad.training.checkpoint import MODEL_FILE, load_model_state


def test_model_state_round_trips_from_a_checkpoint(tmp_path):
    from ray.train import Checkpoint

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2)}
    torch.save(state, tmp_path / MODEL_FILE)
    loaded = load_model_state(Checkpoint.from_directory(str(tmp_path)))
    assert set(loaded) == {"w", "b"} and torch.equal(loaded["w"], state["w"])


def test_a_checkpoint_without_model_pt_says_the_phase_did_not_finish(tmp_path):
    from ray.train import Checkpoint

    (tmp_path / "other").write_text("x")
    with pytest.raises(DataError, match=r"has no model\.pt: the phase did not finish"):
        load_model_state(Checkpoint.from_directory(str(tmp_path)))
