"""Run identities on real Ray + DeepSpeed + SeaweedFS: one run name, two data sets.

Phase 1 of a tiny run is trained on `tiny_data`. The same run name over other data (same classes,
other images) is refused with one sentence before any stage runs, and nothing under the run's storage
changes; the same data resumes: phase 1's finished checkpoint is reused (not reported again, no file
of it rewritten), phase 2 and the evaluation run, and metrics.json records every stage's fingerprint.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import tiny_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def other_data(s3_server, tmp_path_factory) -> str:
    """Like `tiny_data` (3 classes, exp split) but other synthetic images (seed 1)."""
    from ltad.data.datasets import read_dataset
    from ltad.data.prepare import prepare
    from ltad.data.splits import make_split
    from ltad.data.synth import synthesize

    tmp = tmp_path_factory.mktemp("other-data")
    root = synthesize(tmp / "synth", classes=3, image_size=64, train_per_class=8, test_per_class=6, seed=1)
    split = make_split(read_dataset("synth", root), "exp", ratio=4, seed=0)
    uri = f"s3://{s3_server.bucket}/tiny-other"
    prepare("synth", root, split.save(tmp / "split.json"), uri, test_shard_samples=5, log=lambda _msg: None)
    return uri


def _objects(prefix: str) -> dict[str, str]:
    """Every object under an S3 prefix with its last-modified time (rewritten objects change it)."""
    from ltad.io import storage

    out = {}
    for uri in storage.list(prefix):
        bucket, key = storage.split_s3(uri)
        out[uri] = str(storage.client().head_object(Bucket=bucket, Key=key)["LastModified"])
    return out


def test_same_name_other_data_is_refused_and_same_data_resumes(
    ray_local, tiny_data, other_data, s3_server, tmp_path, capsys
):
    from ltad.io import storage
    from ltad.training import identity
    from ltad.training.identity import RunIdentityError
    from ltad.training.pipeline import run_pipeline

    store = f"s3://{s3_server.bucket}/ray-{tmp_path.name}"
    cfg = tiny_config(tmp_path, tiny_data, run={"storage_path": store, "name": "ident"})
    first: list[str] = []
    run_pipeline(cfg, stages=("phase1",), log=first.append)
    assert any(line.startswith("phase1: done") and "phase1/loss" in line for line in first), first
    phase1 = identity.read(f"{store}/ident-phase1")
    assert phase1 and phase1["stage"] == "phase1" and len(phase1["fingerprint"]) == 16
    before = _objects(store)
    assert any("/ident-phase1/" in u and u.endswith("-final/model.pt") for u in before)

    # the same run name over other data: one sentence, before any stage (nothing new in storage)
    other = cfg.with_overrides([f"data.uri={other_data}"])
    with pytest.raises(RunIdentityError) as err:
        run_pipeline(other)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{store}/ident-phase1 already holds a phase1 run")
    assert "(data.manifest_sha256 differs)" in text and "--set run.name=ident-2" in text
    assert _objects(store) == before

    # ... and through the job entry point: exit 2, the sentence as one line on stderr
    from jobs.train import main

    (tmp_path / "run.yaml").write_text(cfg.to_yaml())
    assert main(["--config", str(tmp_path / "run.yaml"), "--data", other_data]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert err_lines[-1].startswith("jobs/train.py: error: ")
    assert "other inputs (data.manifest_sha256" in err_lines[-1]
    assert _objects(store) == before

    # the same data: phase 1 is resumed at its end (reused, not retrained: no step runs and its final
    # checkpoint is neither reported again nor rewritten), phase 2 + evaluation run
    phase1_files = {u: t for u, t in before.items() if "/ident-phase1/step-" in u}
    lines: list[str] = []
    metrics = run_pipeline(cfg, log=lines.append)
    done = [line for line in lines if line.startswith("phase1: done")]
    assert len(done) == 1 and "step=4" in done[0], lines
    assert {u: t for u, t in _objects(store).items() if "/ident-phase1/step-" in u} == phase1_files
    assert any(line.startswith("phase2: done") and "phase2/loss" in line for line in lines), lines
    after = storage.list(store)
    assert any("/ident-phase2/" in u and u.endswith("-final/model.pt") for u in after)
    assert identity.read(f"{store}/ident-phase1") == phase1  # same commit: the record is untouched
    recorded = {s: identity.read(f"{store}/ident-{s}")["fingerprint"] for s in identity.STAGES}
    prov = metrics["provenance"]["identity"]
    assert {s: prov[s]["fingerprint"] for s in identity.STAGES} == recorded
    assert all(prov[s]["commits"] == [metrics["provenance"]["git_commit"]] for s in identity.STAGES)
