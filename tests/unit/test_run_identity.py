"""Run identities (ltad/training/identity.py): what each stage's fingerprint covers, and when a run
directory may be resumed or reused."""

from __future__ import annotations

import dataclasses

import pytest

from ltad.config import LTADConfig
from ltad.data.manifest import Manifest, ShardEntry, SplitProvenance
from ltad.errors import UserError
from ltad.training import identity
from ltad.training.identity import RunIdentityError, decide, stage_identities


def _manifest(sha: str = "a" * 64, seed: int = 0) -> Manifest:
    shard = ShardEntry("train/x-000000.tar", 2, 100, sha, {"x": 2})
    test = ShardEntry("test/x-000000.tar", 1, 50, "b" * 64, {"x": 1})
    return Manifest(
        dataset="synth",
        classes=("x",),
        split=SplitProvenance("c" * 64, "exp", 4.0, seed, ("x",)),
        shards={"train": (shard,), "test": (test,)},
        counts={"train": {"x": 2}, "test": {"x": 1}},
        image_sizes={"x": [[64, 64]]},
    )


def _cfg(*overrides: str) -> LTADConfig:
    return LTADConfig().with_overrides(["data.uri=s3://b/data", *overrides])


def _fps(cfg: LTADConfig, manifest: Manifest | None = None) -> dict[str, str]:
    return {s: i.fingerprint for s, i in stage_identities(cfg, manifest or _manifest()).items()}


def test_same_inputs_give_the_same_fingerprints():
    assert _fps(_cfg()) == _fps(_cfg())
    assert _fps(_cfg()) == _fps(LTADConfig.from_dict(_cfg().to_dict()))  # through the loop config
    assert len(set(_fps(_cfg()).values())) == 3


@pytest.mark.parametrize(
    "override",
    [
        "run.name=other",
        "run.output=s3://b/elsewhere",
        "run.storage_path=s3://b/ray2",
        "run.log_every=3",
        "run.checkpoint_every=7",
        "run.max_failures=5",
        "scaling.cpus_per_worker=3",
        "scaling.worker_start_timeout_s=30",
        "data.max_bad_samples=9",
        "data.uri=s3://copy/of/the/same/shards",
    ],
)
def test_where_and_how_often_change_no_fingerprint(override):
    assert _fps(_cfg(override)) == _fps(_cfg())


# (override, stages whose fingerprint changes): each change reaches its stage and those downstream
CHANGES = [
    ("phase1.steps=5", {"phase1", "phase2", "evaluate"}),
    ("phase1.lr=0.5", {"phase1", "phase2", "evaluate"}),
    ("run.seed=1", {"phase1", "phase2", "evaluate"}),
    ("model.prompts.length=8", {"phase1", "phase2", "evaluate"}),
    ("model.encoder.pretrained=none", {"phase1", "phase2", "evaluate"}),
    ("model.encoder.text_seed=3", {"phase1", "phase2", "evaluate"}),
    ("model.encoder.name=ViT-B-16", {"phase1", "phase2", "evaluate"}),
    ("data.batch_size=3", {"phase1", "phase2", "evaluate"}),
    ("data.class_balance=0.9", {"phase1", "phase2", "evaluate"}),
    ("data.use_feature_cache=false", {"phase1", "phase2", "evaluate"}),
    ("scaling.num_workers=4", {"phase1", "phase2", "evaluate"}),
    ("scaling.zero_stage=3", {"phase1", "phase2", "evaluate"}),
    ("scaling.precision=bf16", {"phase1", "phase2", "evaluate"}),
    ("phase2.synthesis_ratio=0.5", {"phase2", "evaluate"}),
    ("phase2.steps=9", {"phase2", "evaluate"}),
    ("model.score.fusion_lambda=0.5", {"evaluate"}),
    ("model.score.class_mode=oracle", {"evaluate"}),
    ("eval.pixel_bins=50", {"evaluate"}),
    ("eval.aupro_fpr_limit=0.1", {"evaluate"}),
]


@pytest.mark.parametrize(("override", "changed"), CHANGES)
def test_each_relevant_change_reaches_its_stage_and_downstream(override, changed):
    before, after = _fps(_cfg()), _fps(_cfg(override))
    assert {s for s in before if before[s] != after[s]} == changed


def test_other_data_changes_every_stage():
    base = _fps(_cfg())
    for other in (_manifest(sha="f" * 64), _manifest(seed=1)):
        after = _fps(_cfg(), other)
        assert all(base[s] != after[s] for s in base)


def test_a_supplied_upstream_fingerprint_replaces_the_configs():
    ids = stage_identities(_cfg(), _manifest(), upstream={"phase2": "0123456789abcdef"})
    assert ids["evaluate"].inputs["phase2.fingerprint"] == "0123456789abcdef"
    assert ids["evaluate"].fingerprint != _fps(_cfg())["evaluate"]
    assert ids["phase2"].fingerprint == _fps(_cfg())["phase2"]


def test_sweep_trials_share_the_phase1_identity_of_their_phase1_run(tmp_path):
    import yaml

    from ltad.sweep.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "levels": [{"profile": "exp", "ratio": 10, "data": "s3://b/exp10"}],
                "prompt_lengths": [2, 4],
                "synthesis_ratios": [0.0, 0.25],
                "root": "s3://b/sweeps/t",
            }
        )
    )
    space = load_space(path)
    manifest = _manifest()
    for trial in space.trials():
        own = stage_identities(space.run_config(trial), manifest)["phase1"]
        shared = stage_identities(space.run_config(trial, phase1=True), manifest)["phase1"]
        assert own == shared
    by_length = {
        t.params["model.prompts.length"]: stage_identities(space.run_config(t), manifest)["phase1"]
        for t in space.trials()
    }
    assert by_length[2].fingerprint != by_length[4].fingerprint


# ----------------------------------------------------------------------------- the decision


def _recorded(cfg: LTADConfig, stage: str = "phase1", commits=("c1",)) -> dict:
    return identity.record(stage_identities(cfg, _manifest())[stage], list(commits))


def test_decide_new_resume_mismatch_unrecorded():
    expected = stage_identities(_cfg(), _manifest())["phase1"]
    assert decide(None, False, expected, "c1").action == "new"
    assert decide(None, True, expected, "c1").action == "unrecorded"  # checkpoints, no identity
    assert decide({"junk": 1}, True, expected, "c1").action == "unrecorded"
    same = decide(_recorded(_cfg("run.name=x")), True, expected, "c1")
    assert same.ok and same.action == "resume" and same.warning is None
    other = decide(_recorded(_cfg("phase1.steps=5")), True, expected, "c1")
    assert not other.ok and other.action == "mismatch" and other.differs == ("phase1.steps",)
    data = identity.record(stage_identities(_cfg(), _manifest(sha="f" * 64))["phase1"], ["c1"])
    assert decide(data, True, expected, "c1").differs == ("data.manifest_sha256",)


def test_another_commit_resumes_with_a_warning_not_a_refusal():
    expected = stage_identities(_cfg(), _manifest())["phase1"]
    decision = decide(_recorded(_cfg(), commits=("c1",)), True, expected, "c2")
    assert decision.action == "resume" and "c1" in decision.warning and "c2" in decision.warning


def test_mismatch_message_is_one_sentence_naming_what_differs_and_the_way_out():
    expected = stage_identities(_cfg(), _manifest())["phase2"]
    recorded = _recorded(_cfg("phase2.steps=9", "phase2.lr=0.1"), stage="phase2")
    decision = decide(recorded, True, expected, "c1")
    text = identity.message(decision, "s3://b/ray/r-phase2", "phase2", "pass a new run.name")
    assert text == (
        "s3://b/ray/r-phase2 already holds a phase2 run made from other inputs "
        "(phase2.lr, phase2.steps differ): pass a new run.name"
    )
    assert "\n" not in text


def test_check_and_claim_in_a_run_directory(tmp_path):
    root = str(tmp_path / "r-phase1")
    ident = stage_identities(_cfg(), _manifest())["phase1"]
    remedy = "pass a new run.name"
    assert identity.claim(root, ident, "c1", stage="phase1", remedy=remedy).action == "new"
    assert (
        identity.read(root)["commits"] == ["c1"] and identity.read(root)["fingerprint"] == ident.fingerprint
    )
    logged: list[str] = []
    decision = identity.claim(root, ident, "c2", stage="phase1", remedy=remedy, log=logged.append)
    assert decision.action == "resume" and logged and identity.read(root)["commits"] == ["c1", "c2"]
    other = stage_identities(_cfg(), _manifest(sha="f" * 64))["phase1"]
    with pytest.raises(RunIdentityError, match=r"data.manifest_sha256 differs\): pass a new run.name$"):
        identity.check(root, other, "c2", stage="phase1", remedy=remedy)
    assert issubclass(RunIdentityError, UserError)
    legacy = tmp_path / "old-phase1"
    (legacy / "step-0000004-final").mkdir(parents=True)
    (legacy / "step-0000004-final" / "model.pt").write_bytes(b"x")
    with pytest.raises(RunIdentityError, match="without a valid ltad-identity.json"):
        identity.check(str(legacy), ident, "c1", stage="phase1", remedy=remedy)


def test_pipeline_identities_refuse_a_run_name_over_other_data_before_anything(tmp_path):
    cfg = _cfg(f"run.output={tmp_path / 'out'}", "run.name=r")
    first = identity.RunIdentities(cfg, _manifest(), "c1", stages=("phase1", "phase2", "evaluate"))
    first.claim("phase1")
    assert (tmp_path / "out" / "ray" / "r-phase1" / identity.FILE).is_file()
    again = identity.RunIdentities(cfg, _manifest(), "c1", stages=("phase1", "phase2", "evaluate"))
    assert again.claim("phase1").action == "resume"
    with pytest.raises(RunIdentityError) as err:
        identity.RunIdentities(cfg, _manifest(sha="f" * 64), "c1", stages=("phase1", "phase2", "evaluate"))
    assert "r-phase1 already holds a phase1 run made from other inputs (data.manifest_sha256 differs)" in str(
        err.value
    )
    assert "--set run.name=r-2" in str(err.value)
    # evaluating only: phase 2 is found by name, so it is checked too (nothing there yet: new)
    only = identity.RunIdentities(cfg, _manifest(), "c1", stages=("evaluate",))
    assert only.by_name == ["phase2"]
    # evaluate is never reused: its record is rewritten, and metrics.json gets every fingerprint
    only.claim("evaluate")
    prov = again.provenance()
    assert prov["phase1"] == {"fingerprint": again.identities["phase1"].fingerprint, "commits": ["c1"]}
    assert set(prov) == {"phase1", "phase2", "evaluate"}


def test_run_root_follows_ray_storage(tmp_path):
    cfg = _cfg("run.storage_path=s3://b/ray", "run.name=r")
    assert identity.run_root(cfg, "phase1") == "s3://b/ray/r-phase1"
    local = _cfg(f"run.output={tmp_path}", "run.storage_path=", "run.name=r")
    assert identity.run_root(local, "phase2") == str(tmp_path / "ray" / "r-phase2")


def test_checkpoint_root_of_a_local_and_an_s3_checkpoint():
    class FS:
        type_name = "s3"

    local = type("C", (), {"path": "/x/ray/r-phase2/step-0000004-final", "filesystem": None})()
    s3 = type("C", (), {"path": "b/ray/r-phase2/step-0000004-final", "filesystem": FS()})()
    assert identity.checkpoint_root(local) == "/x/ray/r-phase2"
    assert identity.checkpoint_root(s3) == "s3://b/ray/r-phase2"


def test_identity_is_frozen_and_inputs_are_flat():
    ident = stage_identities(_cfg(), _manifest())["phase2"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ident.fingerprint = "x"  # type: ignore[misc]
    assert all(not isinstance(v, dict) for v in ident.inputs.values())
    assert "phase1.fingerprint" in ident.inputs and "phase1.steps" in ident.inputs  # chain explained


def test_a_mismatch_names_the_inputs_behind_an_upstream_fingerprint():
    expected = stage_identities(_cfg(), _manifest())["evaluate"]
    recorded = _recorded(_cfg("phase2.steps=9"), stage="evaluate")
    assert decide(recorded, True, expected, "c1").differs == ("phase2.steps",)
    given = stage_identities(_cfg(), _manifest(), upstream={"phase2": "0" * 16})["evaluate"]
    assert decide(identity.record(given, ["c1"]), True, expected, "c1").differs == ("phase2.fingerprint",)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_weights_replaced_at_the_same_location_are_refused_naming_encoder_weights(where, tmp_path, request):
    """Same path or URI, other bytes: phase 1 (and everything after it) is another run."""
    from ltad.io import storage

    local = tmp_path / "clip.pt"
    local.write_bytes(b"weights v1")
    if where == "s3":
        server = request.getfixturevalue("s3_server")
        source = f"s3://{server.bucket}/ident-weights-{tmp_path.name}/clip.pt"
        storage.upload_file(local, source)
    else:
        source = str(local)
    cfg = _cfg(f"model.encoder.pretrained={source}")
    before = stage_identities(cfg, _manifest())
    assert before == stage_identities(cfg, _manifest())  # same bytes, same identity
    local.write_bytes(b"weights v2, replaced")
    if where == "s3":
        storage.upload_file(local, source)
    after = stage_identities(cfg, _manifest())
    assert after["phase1"].fingerprint != before["phase1"].fingerprint
    recorded = identity.record(before["phase1"], ["c1"])
    decision = decide(recorded, True, after["phase1"], "c1")
    assert decision.action == "mismatch" and decision.differs == ("encoder_weights.content",)
    line = identity.message(decision, "s3://b/ray/run-phase1", "phase1", "pass a new run.name")
    assert "\n" not in line and "encoder weights" in line
