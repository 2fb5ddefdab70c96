"""Worker loss: a Ray Train worker process SIGKILLed in the middle of phase 2, and run identities.

Phase 2 twice from the same phase-1 checkpoint with the same seed on 2 workers, checkpoints on S3: one
untouched (the reference), one whose Ray Train worker is SIGKILLed right after the first phase-2
checkpoint (step 4 of 12). The killed run must finish from that checkpoint (Ray's FailureConfig restarts
the worker group, which finds the stage's newest complete checkpoint in its run directory), not from
step 0, evaluate every test sample, and end with the same model as the untouched run (resume repeats the
data order and the per-step RNG), hence the same metrics.

The reference is made in two runs, which carry the run-identity checks (formerly their own two Ray runs
in tests/integration/test_identity.py): phase 1 alone; then the same run name over other data (same
classes, other images) is refused with one sentence before any stage runs, in process and through the
job entry point, and nothing under the run's storage changes; then the same data resumes: phase 1's
finished checkpoint is reused (not reported again, no file of it rewritten), phase 2 and the
evaluation run, and metrics.json records every stage's fingerprint.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

if TYPE_CHECKING:
    from ltad.config import LTADConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _config(tmp, data_uri: str, bucket: str, name: str):
    """The integration tests' tiny config, with 12 phase-2 steps and a checkpoint every 4."""
    from tests.integration.conftest import tiny_config

    return tiny_config(
        tmp,
        data_uri,
        phase2={"steps": 12, "stats_samples": 8},
        run={
            "name": name,
            "output": str(tmp / name),
            "storage_path": f"s3://{bucket}/rel-{tmp.name}",
            "checkpoint_every": 4,
            "max_failures": 2,
        },
        eval={"overlays_per_class": 1},
    )


class Killer(threading.Thread):
    """Waits for phase 2's first complete checkpoint in storage, then SIGKILLs one `ray::RayTrainWorker` of the
    local Ray this test started (a descendant of this process)."""

    def __init__(self, prefix: str, checkpoint: str) -> None:
        super().__init__(daemon=True)
        self.prefix, self.checkpoint = prefix, checkpoint
        self.killed: int | None = None
        self.killed_at = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        from ltad.io import storage

        while not self.done.is_set():
            if any(u.endswith(f"/{self.checkpoint}/.ltad-complete") for u in storage.list(self.prefix)):
                time.sleep(1)  # into the steps after it
                workers = [  # only this test's own Ray: never a worker of another session
                    p
                    for p in psutil.Process(os.getpid()).children(recursive=True)
                    if "RayTrainWorker" in " ".join(_cmdline(p))
                ]
                if workers:
                    self.killed, self.killed_at = workers[0].pid, time.time()
                    workers[0].send_signal(signal.SIGKILL)
                    return
            time.sleep(0.2)


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _rewritten_after(prefix: str, when: float) -> list[str]:
    """Objects under `prefix` written after `when` (epoch seconds)."""
    from ltad.io import storage

    bucket, key = storage.split_s3(prefix)
    paginator = storage.client().get_paginator("list_objects_v2")
    out = []
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        out += [o["Key"] for o in page.get("Contents", []) if o["LastModified"].timestamp() > when]
    return out


def _objects(prefix: str) -> dict[str, str]:
    """Every object under an S3 prefix with its last-modified time (rewritten objects change it)."""
    from ltad.io import storage

    out = {}
    for uri in storage.list(prefix):
        bucket, key = storage.split_s3(uri)
        out[uri] = str(storage.client().head_object(Bucket=bucket, Key=key)["LastModified"])
    return out


@pytest.fixture(scope="module")
def other_data(s3_server, tmp_path_factory) -> str:
    """Like `s3_shards` (3 classes at 32 px, exp split) but other synthetic images (seed 1)."""
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    tmp = tmp_path_factory.mktemp("other-data")
    root = synthesize(tmp / "synth", classes=3, image_size=32, train_per_class=6, test_per_class=4, seed=1)
    split = make_split(read_dataset("synth", root), "exp", ratio=3, seed=0)
    uri = f"s3://{s3_server.bucket}/rel-other"
    prepare("synth", root, split.save(tmp / "split.json"), uri, test_shard_samples=3, log=lambda _msg: None)
    return uri


@dataclass
class Reference:
    """The reference run and what each of its steps left (the identity checks read them)."""

    tmp: Path
    cfg: LTADConfig
    metrics: dict
    phase1_log: list[str]
    phase1_record: dict
    before: dict[str, str]  # the run's objects after phase 1
    refused: str  # run_pipeline's RunIdentityError over other data
    after_refused: dict[str, str]
    job_rc: int  # jobs/train.py over other data
    job_stderr: str
    after_job: dict[str, str]
    resume_log: list[str]


@pytest.fixture(scope="module")
def reference(ray_local, s3_server, s3_shards, other_data, tmp_path_factory) -> Reference:
    """Phase 1 alone; the same name over other data refused twice; then the same data resumed to the end."""
    from jobs.train import main
    from ltad.training import identity
    from ltad.training.identity import RunIdentityError
    from ltad.training.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("rel-ref")
    cfg = _config(tmp, s3_shards, s3_server.bucket, "ref")
    store = cfg.run.storage_path
    first: list[str] = []
    run_pipeline(cfg, stages=("phase1",), log=first.append)
    record = identity.read(f"{store}/ref-phase1")
    before = _objects(store)
    other = cfg.with_overrides([f"data.uri={other_data}"])
    with pytest.raises(RunIdentityError) as err:
        run_pipeline(other)
    after_refused = _objects(store)
    (tmp / "run.yaml").write_text(cfg.to_yaml())
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        rc = main(["--config", str(tmp / "run.yaml"), "--data", other_data])
    after_job = _objects(store)
    lines: list[str] = []
    metrics = run_pipeline(cfg, log=lines.append)
    return Reference(
        tmp, cfg, metrics, first, record, before, str(err.value), after_refused, rc, stderr.getvalue(),
        after_job, lines,
    )  # fmt: skip


def test_same_name_other_data_is_refused_and_same_data_resumes(reference):
    from ltad.io import storage
    from ltad.training import identity

    ref = reference
    store = ref.cfg.run.storage_path
    assert any(line.startswith("phase1: done") and "phase1/loss" in line for line in ref.phase1_log)
    phase1 = ref.phase1_record
    assert phase1 and phase1["stage"] == "phase1" and len(phase1["fingerprint"]) == 16
    before = ref.before
    assert any("/ref-phase1/" in u and u.endswith("-final/model.pt") for u in before)

    # the same run name over other data: one sentence, before any stage (nothing new in storage)
    text = ref.refused
    assert "\n" not in text and text.startswith(f"{store}/ref-phase1 already holds a phase1 run")
    assert "(data.manifest_sha256 differs)" in text and "--set run.name=ref-2" in text
    assert ref.after_refused == before

    # ... and through the job entry point: exit 2, the sentence as one line on stderr
    assert ref.job_rc == 2
    err_lines = ref.job_stderr.strip().splitlines()
    assert err_lines[-1].startswith("jobs/train.py: error: ")
    assert "other inputs (data.manifest_sha256" in err_lines[-1]
    assert ref.after_job == before

    # the same data: phase 1 is resumed at its end (reused, not retrained: no step runs and its final
    # checkpoint is neither reported again nor rewritten), phase 2 + evaluation run
    phase1_files = {u: t for u, t in before.items() if "/ref-phase1/step-" in u}
    lines = ref.resume_log
    done = [line for line in lines if line.startswith("phase1: done")]
    assert len(done) == 1 and "step=4" in done[0], lines
    assert {u: t for u, t in _objects(store).items() if "/ref-phase1/step-" in u} == phase1_files
    assert any(line.startswith("phase2: done") and "phase2/loss" in line for line in lines), lines
    after = storage.list(store)
    assert any("/ref-phase2/" in u and u.endswith("-final/model.pt") for u in after)
    assert identity.read(f"{store}/ref-phase1") == phase1  # same commit: the record is untouched
    recorded = {s: identity.read(f"{store}/ref-{s}")["fingerprint"] for s in identity.STAGES}
    metrics = ref.metrics
    prov = metrics["provenance"]["identity"]
    assert {s: prov[s]["fingerprint"] for s in identity.STAGES} == recorded
    assert all(prov[s]["commits"] == [metrics["provenance"]["git_commit"]] for s in identity.STAGES)


@pytest.mark.soak
def test_worker_killed_mid_phase2_resumes_from_checkpoint(reference, s3_server, s3_shards):
    from ltad.training.checkpoint import load_model_state
    from ltad.training.pipeline import run_pipeline, stage_checkpoint

    ref, ref_metrics = reference.cfg, reference.metrics
    phase1 = stage_checkpoint(ref, "phase1")
    cfg = _config(reference.tmp, s3_shards, s3_server.bucket, "kill")
    phase2 = f"{cfg.run.storage_path}/kill-phase2"
    killer = Killer(phase2, "step-0000004")
    killer.start()
    tic = time.monotonic()
    try:  # same phase 1 as the reference: the comparison isolates phase 2's resume
        metrics = run_pipeline(cfg, stages=("phase2", "evaluate"), checkpoints={"phase1": phase1})
    finally:
        killer.done.set()
    killer.join()
    assert killer.killed is not None, "no Ray Train worker was found to kill"
    # resumed from step 4, not restarted: no checkpoint before step 8 was written after the kill
    rewritten = _rewritten_after(phase2, killer.killed_at)
    assert not any("step-0000004" in k for k in rewritten), rewritten
    assert any("step-0000012-final" in k for k in rewritten)
    assert metrics["n_evaluated"] == 12 and metrics["provenance"]["world_size"] == 2
    # the resumed model equals the uninterrupted one, so every metric does (well within 0.01)
    want = load_model_state(stage_checkpoint(ref, "phase2"))
    got = load_model_state(stage_checkpoint(cfg, "phase2"))
    assert set(got) == set(want)
    diff = max(float((got[k].double() - want[k].double()).abs().max()) for k in want if want[k].numel())
    gaps = {k: abs(metrics[k] - ref_metrics[k]) for k in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")}
    print(
        f"worker {killer.killed} killed; phase2 + evaluate took {time.monotonic() - tic:.0f} s; "
        f"max |diff| {diff:.3g}; metric gaps {gaps}"
    )
    assert diff <= 1e-5, diff
    assert all(g <= 0.01 for g in gaps.values()), gaps  # the bar; equal weights make them ~0
