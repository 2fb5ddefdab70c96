"""A stage's checkpoints in its run directory (ltad/training/store.py), on a local directory: only sealed
directories are read, finals by their model.pt, pruning keeps the newest two and every final, and a
rank downloads the shared files and its own ZeRO shard only."""

from __future__ import annotations

from pathlib import Path

from ltad.training import store


def _write(tmp: Path, root: str, step: int, *, final: bool = False, seal: bool = True) -> str:
    local = tmp / f"local-{step}-{final}"
    (local / "ds").mkdir(parents=True)
    for rank in (0, 1):
        (local / "ds" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"r%d" % rank)
    (local / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"model states")
    (local / "ds" / "zero_to_fp32.py").write_text("# DeepSpeed's recovery script\n")
    (local / "history.jsonl").write_text("{}\n")
    if final:
        (local / store.MODEL_FILE).write_bytes(b"model")
    uri = store.step_dir(root, step, final)
    store.upload_rank_files(local, uri, skip=("history.jsonl", store.MODEL_FILE))
    if seal:
        store.seal(uri, local, step=step, world_size=2, files=("history.jsonl", store.MODEL_FILE))
    return uri


def test_only_sealed_checkpoints_are_read_and_finals_count(tmp_path):
    root = str(tmp_path / "run-phase2")
    assert store.latest(root) is None and store.latest_final(root) is None
    two = _write(tmp_path, root, 2)
    _write(tmp_path, root, 4, seal=False)  # a crash between the ranks' uploads and the seal
    assert store.latest(root) == two and store.latest_final(root) is None
    final = _write(tmp_path, root, 6, final=True)
    assert store.latest(root) == final == store.latest_final(root)


def test_prune_keeps_the_newest_two_every_final_and_drops_unsealed_leftovers(tmp_path):
    root = str(tmp_path / "run-phase1")
    for step in (2, 4):
        _write(tmp_path, root, step)
    _write(tmp_path, root, 5, seal=False)
    for step in (6, 8):
        _write(tmp_path, root, step)
    deleted = store.prune(root)
    assert deleted == [store.step_dir(root, s) for s in (2, 4, 5)]
    left = {
        Path(u).parent.parent.name if "/ds/" in u else Path(u).parent.name for u in store.storage.list(root)
    }
    assert left == {"step-0000006", "step-0000008"}
    final = _write(tmp_path, root, 10, final=True)
    store.prune(root)
    assert store.latest_final(root) == final and store.latest(root) == final


def test_a_rank_downloads_the_shared_files_and_its_own_shard(tmp_path):
    uri = _write(tmp_path, str(tmp_path / "run-phase2"), 2)
    got = store.download(uri, tmp_path / "rank1", rank=1)
    names = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    assert "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt" in names
    assert "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt" not in names
    assert set(names) == {
        "ds/zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "ds/mp_rank_00_model_states.pt",
        "history.jsonl",
    }  # what its restore reads: not the marker, not DeepSpeed's recovery script
    assert store.restores("ds/zero_pp_rank_1_mp_rank_00_model_states.pt", 1)  # ZeRO-3: its own model shard
    assert not store.restores("ds/zero_pp_rank_0_mp_rank_00_model_states.pt", 1)
    assert not store.restores("ds/zero_to_fp32.py", 1) and not store.restores("ds/latest", 1)


def test_the_history_file_name_is_the_history_module_s():
    from ltad.training.history import HISTORY_FILE

    assert store.HISTORY_FILE == HISTORY_FILE
