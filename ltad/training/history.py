"""`history.jsonl`: the per-step training metrics of a run, one JSON object per logged step.

Rank 0 keeps the records of its stage (`History`) and writes them into every checkpoint it reports,
so a resumed stage continues from exactly the records of the checkpoint it resumes from (no gap, no
step twice). The driver reads the file from each finished stage's final checkpoint and writes the
run's `history.jsonl` to `run.output` as one whole object after every training stage (through
ltad.io.storage: atomic locally, one PUT on S3), so the file in the output is never half written
and always holds whole stages. Workers never write to the output.

A record: `stage`, `step`, `time` (unix seconds), then what the step loop logged for the interval
ending at `step` (means over the interval and over ranks, see loop.py): `loss` and the objective's
terms, `lr` (and `lr_<group>` for other parameter groups), `samples_per_s`, `steps_per_s`,
`bad_samples`, and in phase 2 `synthetic_fraction`. A value that is not a finite number is written
as null, so the file stays valid JSON.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ltad.errors import DataError
from ltad.io import storage

HISTORY_FILE = "history.jsonl"
TRAINING_STAGES = ("phase1", "phase2")
"""The stages that write history, in the order they appear in a run's history.jsonl."""


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_jsonl(records: list[dict[str, Any]]) -> bytes:
    """Records as JSON lines (non-finite numbers as null)."""
    return "".join(json.dumps({k: _plain(v) for k, v in r.items()}) + "\n" for r in records).encode()


def parse_jsonl(data: bytes, where: str) -> list[dict[str, Any]]:
    """The records of a history file; a line that is not a JSON object is a DataError naming `where`."""
    out = []
    for n, line in enumerate(data.decode().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise DataError(f"{where} line {n} is not a JSON object")
        out.append(record)
    return out


class History:
    """Rank 0's records of one stage, carried from checkpoint to checkpoint."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.records: list[dict[str, Any]] = []

    def add(self, step: int, metrics: dict[str, float]) -> dict[str, Any]:
        record = {"stage": self.stage, "step": step, "time": round(time.time(), 3), **metrics}
        self.records.append(record)
        return record

    def write(self, directory: str | Path) -> None:
        """Into a checkpoint directory about to be reported."""
        (Path(directory) / HISTORY_FILE).write_bytes(to_jsonl(self.records))

    def resume(self, directory: str | Path, step: int) -> None:
        """Take the records of the checkpoint in `directory` up to `step` (older checkpoints have none)."""
        path = Path(directory) / HISTORY_FILE
        if path.is_file():
            records = parse_jsonl(path.read_bytes(), str(path))
            self.records = [r for r in records if int(r.get("step", 0)) <= step]


def read_checkpoint_history(checkpoint) -> list[dict[str, Any]]:
    """The records in a checkpoint directory (a URI or `ray.train.Checkpoint`); [] when it holds none.

    Reads only that file, never the DeepSpeed state beside it.
    """
    from ltad.training.store import read_file, uri_of

    data = read_file(checkpoint, HISTORY_FILE)
    return [] if data is None else parse_jsonl(data, storage.join(uri_of(checkpoint), HISTORY_FILE))


def write_history(output: str, records: list[dict[str, Any]]) -> str:
    """`{output}/history.jsonl` holding `records`, written as one whole object; its URI."""
    uri = storage.join(output, HISTORY_FILE)
    storage.write_bytes(uri, to_jsonl(records))
    return uri


def run_history(checkpoints: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of the training stages among `checkpoints` (stage -> checkpoint), in stage order."""
    return [
        r
        for s in TRAINING_STAGES
        if checkpoints.get(s) is not None
        for r in read_checkpoint_history(checkpoints[s])
    ]
