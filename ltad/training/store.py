"""A stage's checkpoints in its run directory on storage, written and read by ltad itself.

Ray Train's own checkpoints belong to one Ray Train run; a job runs all its stages in one worker group
(one run), yet each stage keeps its own directory `{storage}/{run.name}-{stage}/step-NNNNNNN[-final]`,
so a finished phase 1 can be found by name, reused by sweeps and refused when its inputs changed.
Every rank uploads its own files (ZeRO shards are per rank); after a barrier rank 0 adds the history,
then `model.pt` (final checkpoints) and the marker `.ltad-complete`, last: a directory without the
marker (or, for a final one written by older ltad versions through Ray, without `model.pt`) is never
read. Restoring, a rank downloads its own ZeRO shards, the model states and the history only.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from ltad.io import storage

MARKER = ".ltad-complete"
MODEL_FILE = "model.pt"
KEEP = 2
"""Complete non-final checkpoints kept per stage (finals are always kept)."""
_STEP = re.compile(r"^step-(\d{7})(-final)?$")
_RANK = re.compile(r"zero_pp_rank_(\d+)_")
_MODEL_STATES = re.compile(r"^mp_rank_\d+_model_states\.pt$")
HISTORY_FILE = "history.jsonl"
"""= ltad.training.history.HISTORY_FILE (history imports this module, so the name is repeated here)."""


def uri_of(checkpoint: Any) -> str:
    """A checkpoint directory as a URI: a string as given, a `ray.train.Checkpoint` by its path and filesystem."""
    if isinstance(checkpoint, str):
        return checkpoint.rstrip("/")
    path = str(checkpoint.path).rstrip("/")
    fs = getattr(checkpoint, "filesystem", None)
    if fs is not None and getattr(fs, "type_name", "") == "s3" and not storage.is_s3(path):
        path = f"s3://{path}"
    return path


def step_dir(root: str, step: int, final: bool = False) -> str:
    return storage.join(root, f"step-{step:07d}{'-final' if final else ''}")


def _by_dir(root: str, listing: list[str] | None = None) -> dict[str, set[str]]:
    """Step directory name -> the relative names of its files, from one listing of `root`."""
    files: dict[str, set[str]] = {}
    prefix = root.rstrip("/") + "/"
    for uri in storage.list(root) if listing is None else listing:
        rel = uri[len(prefix) :] if uri.startswith(prefix) else ""
        name, _, rest = rel.partition("/")
        if _STEP.match(name):
            files.setdefault(name, set()).add(rest)
    return files


def _complete(root: str, files: dict[str, set[str]] | None = None) -> list[tuple[int, bool, str]]:
    """(step, final, uri) of every complete checkpoint under `root`, oldest first."""
    out = []
    for name, names in (_by_dir(root) if files is None else files).items():
        m = _STEP.match(name)
        assert m is not None
        final = bool(m.group(2))
        if MARKER in names or (final and MODEL_FILE in names):
            out.append((int(m.group(1)), final, storage.join(root, name)))
    return sorted(out)


def latest(root: str) -> str | None:
    """The newest complete checkpoint of a stage (final or not), or None."""
    found = _complete(root)
    return found[-1][2] if found else None


def latest_final(root: str) -> str | None:
    """The newest final checkpoint of a stage (holding `model.pt`), or None."""
    finals = [uri for _, final, uri in _complete(root) if final]
    return finals[-1] if finals else None


def upload_rank_files(local: str | Path, uri: str, *, skip: tuple[str, ...] = ()) -> int:
    """Upload every file under `local` to `uri` (same relative paths) but `skip`; the count."""
    local = Path(local)
    n = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local).as_posix()
        if rel in skip:
            continue
        storage.upload_file(path, storage.join(uri, rel))
        n += 1
    return n


def seal(uri: str, local: str | Path, *, step: int, world_size: int, files: tuple[str, ...]) -> None:
    """Rank 0, after every rank uploaded: the named files of `local` (history, model), then the marker."""
    for name in files:
        path = Path(local) / name
        if path.is_file():
            storage.upload_file(path, storage.join(uri, name))
    storage.write_bytes(
        storage.join(uri, MARKER), json.dumps({"step": step, "world_size": world_size}).encode()
    )


def prune(root: str, keep: int = KEEP) -> list[str]:
    """Delete complete non-final checkpoints older than the newest `keep`, and incomplete ones older
    than the newest complete one (a crash's leftovers); the deleted directories. One listing."""
    listing = storage.list(root)
    files = _by_dir(root, listing)
    found = _complete(root, files)
    partial = [uri for _, final, uri in found if not final]
    doomed = set(partial[:-keep] if keep else partial)
    if found:
        complete = {uri for *_, uri in found}
        for name in files:
            uri = storage.join(root, name)
            m = _STEP.match(name)
            assert m is not None
            if int(m.group(1)) < found[-1][0] and uri not in complete:
                doomed.add(uri)
    for directory in sorted(doomed):
        prefix = directory.rstrip("/") + "/"
        for uri in listing:
            if uri.startswith(prefix):
                storage.delete(uri)
    return sorted(doomed)


def download(uri: str, dest: str | Path, rank: int | None = None) -> Path:
    """Copy a checkpoint directory into `dest`. With `rank`, only what that rank's restore reads: its
    own ZeRO shards, the model states (`mp_rank_*_model_states.pt`, every rank's under ZeRO-3 being
    its own shard) and the history; never other ranks' shards, the marker, `model.pt` or DeepSpeed's
    recovery script."""
    dest = Path(dest)
    prefix = uri.rstrip("/") + "/"
    for src in storage.list(uri):
        rel = src[len(prefix) :] if src.startswith(prefix) else Path(src).name
        if rank is not None and not restores(rel, rank):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(storage.read_bytes(src))
    return dest


def restores(rel: str, rank: int) -> bool:
    """Whether rank `rank`'s restore reads the checkpoint file `rel` (see `download`)."""
    name = rel.rsplit("/", 1)[-1]
    m = _RANK.search(name)
    if m:
        return int(m.group(1)) == rank
    return rel == HISTORY_FILE or bool(_MODEL_STATES.match(name))


def read_file(checkpoint: Any, name: str) -> bytes | None:
    """One file of a checkpoint directory (a URI or `ray.train.Checkpoint`), or None when absent."""
    return storage.read_optional(storage.join(uri_of(checkpoint), name))


def local_copy(checkpoint: Any) -> tempfile.TemporaryDirectory:
    """A temporary local copy of a whole checkpoint directory (the caller cleans it up)."""
    tmp = tempfile.TemporaryDirectory(prefix="ltad-ckpt-copy-")
    download(uri_of(checkpoint), tmp.name)
    return tmp
