"""Units of the training side: DeepSpeed config and engine, storage wiring, export maths, reports, errors."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from torch import nn

from ltad.config import LTADConfig, ScalingConfig
from ltad.errors import ConfigError, DataError


def test_zero_configs_exist_for_every_stage_and_match_it():
    from ltad.training.engine import load_zero_config

    for stage in (0, 1, 2, 3):
        cfg = load_zero_config(stage)
        assert cfg["zero_optimization"]["stage"] == stage
        assert cfg["optimizer"]["params"]["torch_adam"] is True  # no JIT-compiled CPU Adam


def test_missing_zero_config_is_a_config_error(tmp_path):
    from ltad.training.engine import load_zero_config

    with pytest.raises(ConfigError, match=r"zero2\.json.*scaling.zero_stage=2 does not exist"):
        load_zero_config(2, tmp_path)
    (tmp_path / "zero1.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_zero_config(1, tmp_path)


def test_deepspeed_config_fills_run_values_and_precision(monkeypatch):
    from ltad.training import precision
    from ltad.training.engine import deepspeed_config, load_zero_config

    base = load_zero_config(2)
    cpu = deepspeed_config(base, ScalingConfig(), batch_size=6, lr=3e-4, weight_decay=0.01, grad_clip=0.5)
    assert cpu["train_micro_batch_size_per_gpu"] == 6 and cpu["gradient_clipping"] == 0.5
    assert cpu["optimizer"]["params"]["lr"] == 3e-4 and cpu["optimizer"]["params"]["weight_decay"] == 0.01
    assert "torch_autocast" not in cpu and "bf16" not in cpu
    bf16 = deepspeed_config(
        base, ScalingConfig(precision="bf16"), batch_size=6, lr=1, weight_decay=0, grad_clip=1
    )
    assert bf16["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    monkeypatch.setattr(precision, "bf16_supported", lambda: True)
    gpu = deepspeed_config(base, ScalingConfig(use_gpu=True), batch_size=6, lr=1, weight_decay=0, grad_clip=1)
    assert gpu["torch_autocast"]["dtype"] == "bfloat16"
    monkeypatch.setattr(precision, "bf16_supported", lambda: False)  # e.g. a V100 or T4
    old = deepspeed_config(base, ScalingConfig(use_gpu=True), batch_size=6, lr=1, weight_decay=0, grad_clip=1)
    assert old["torch_autocast"] == {"enabled": True, "dtype": "float16"}
    assert "lr" not in base["optimizer"]["params"]  # the file's dict is not mutated


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.names = nn.Parameter(torch.zeros(3, 4))
        self.body = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)

    def forward(self, batch):
        x = batch["x"]
        loss = (self.body(x) + self.names.sum() - x).pow(2).mean()
        return loss, {"mse": loss.item()}


def test_param_groups_split_by_prefix_and_skip_frozen():
    from ltad.training.engine import param_groups

    groups = param_groups(_Toy(), {"names": 1e-3})
    by_lr = {g.get("lr"): sum(p.numel() for p in g["params"]) for g in groups}
    assert by_lr == {1e-3: 12, None: 20}  # frozen Linear left out


def test_move_batch_casts_floats_to_fp32_and_keeps_the_rest():
    from ltad.training.engine import move_batch

    out = move_batch(
        {"p": torch.ones(2, dtype=torch.float16), "y": torch.tensor([1]), "key": ["a"]}, torch.device("cpu")
    )
    assert out["p"].dtype == torch.float32 and out["y"].dtype == torch.int64 and out["key"] == ["a"]


@pytest.fixture(scope="module")
def process_group():
    """One single-process gloo group for the module, as Ray Train creates one per worker (DeepSpeed
    keeps references to the group it first saw, so it is not torn down between engines)."""
    import os

    import torch.distributed as dist

    from tools.services.ports import free_port

    env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize(("stage", "precision"), [(0, "fp32"), (3, "fp32"), (2, "bf16")])
def test_engine_trains_and_consolidates_full_fp32_weights(process_group, stage, precision):
    """Real DeepSpeed on the CPU (ZeRO-3 partitions parameters; bf16 autocast keeps fp32 weights)."""
    from ltad.training.dist import init_distributed
    from ltad.training.engine import (
        build_engine,
        consolidated_state_dict,
        deepspeed_config,
        load_zero_config,
        param_groups,
    )

    init_distributed(False)
    torch.manual_seed(0)
    toy = _Toy()
    before = toy.body.weight.detach().clone()
    ds = deepspeed_config(
        load_zero_config(stage),
        ScalingConfig(precision=precision),
        batch_size=2,
        lr=1e-2,
        weight_decay=0,
        grad_clip=1,
    )
    engine = build_engine(toy, param_groups(toy, {"names": 1e-1}), ds)
    for _ in range(3):
        loss, _ = engine({"x": torch.randn(2, 4)})
        engine.backward(loss)
        engine.step()
    state = consolidated_state_dict(engine)
    assert state["body.weight"].shape == (4, 4) and state["names"].shape == (3, 4)
    assert state["body.weight"].dtype == torch.float32
    assert not torch.equal(state["body.weight"], before)  # trained
    assert torch.count_nonzero(state["names"]) > 0  # the names group got its gradient and lr


def test_study_optimiser_and_clipping_step_as_a_zero0_engine(process_group):
    """The study trainer's AdamW + clipping (ltad/study/trainer.py) against a real ZeRO-0 engine:
    two param groups, weight decay, gradients clipped every step; bit-for-bit equal weights."""
    import copy

    from ltad.study.trainer import clip_like_deepspeed, optimiser
    from ltad.training.dist import init_distributed
    from ltad.training.engine import build_engine, deepspeed_config, load_zero_config, param_groups

    init_distributed(False)
    cfg = LTADConfig.from_dict({"scaling": {"zero_stage": 0}})
    torch.manual_seed(0)
    toy, twin = _Toy(), None
    twin = copy.deepcopy(toy)
    batches = [{"x": 10 * torch.randn(2, 4)} for _ in range(4)]
    ds = deepspeed_config(
        load_zero_config(0), cfg.scaling, batch_size=2, lr=1e-2, weight_decay=0.05, grad_clip=0.5
    )
    engine = build_engine(toy, param_groups(toy, {"names": 1e-1}), ds)
    groups = param_groups(twin, {"names": 1e-1})
    opt, clip = optimiser(cfg, groups, lr=1e-2, weight_decay=0.05, grad_clip=0.5)
    assert clip == 0.5 and opt.defaults["weight_decay"] == 0.05 and opt.defaults["eps"] == 1e-8
    for batch in batches:
        loss, _ = engine(batch)
        engine.backward(loss)
        engine.step()
        loss, _ = twin(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert (
            float(torch.cat([p.grad.flatten() for p in twin.parameters() if p.grad is not None]).norm()) > 0.5
        )
        clip_like_deepspeed(list(twin.parameters()), clip)
        opt.step()
    for (name, a), b in zip(toy.named_parameters(), twin.parameters()):
        assert torch.equal(a.detach(), b.detach()), name


def test_param_groups_must_belong_to_the_module():
    from ltad.training.engine import build_engine

    with pytest.raises(ValueError, match="parameter group"):
        build_engine(_Toy(), [{"params": [nn.Parameter(torch.zeros(1))]}], {})


def test_storage_resolution_s3_and_local(monkeypatch, tmp_path):
    from ltad.training.ray_run import resolve_storage

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    path, fs = resolve_storage("s3://bucket/ray", "runs/x")
    assert path == "bucket/ray" and fs is not None and fs.type_name == "s3"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert resolve_storage("s3://bucket/ray", "runs/x") == ("s3://bucket/ray", None)  # real AWS: Ray's own
    path, fs = resolve_storage("", str(tmp_path / "out"))
    assert path == str(tmp_path / "out" / "ray") and fs is None


def test_normalise_maps_threshold_to_half_and_clips():
    from ltad.inference.export import normalise

    norm = {"threshold": 2.0, "min": 0.0, "max": 10.0}
    out = normalise(np.array([-5.0, 0.0, 1.0, 2.0, 6.0, 10.0, 20.0]), norm)
    assert np.allclose(out, [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


def test_exactly_once_check_names_the_problem():
    from ltad.eval.outputs import ScoredSample, check_exactly_once

    def samples(keys: str) -> list[ScoredSample]:
        return [ScoredSample(k, 0, 0, 0.0, 0) for k in keys]

    check_exactly_once(samples("abc"), 3)
    with pytest.raises(DataError, match=r"scored 3 samples \(2 distinct\) but the manifest lists 3"):
        check_exactly_once(samples("abb"), 3)
    with pytest.raises(DataError, match="scored 2 samples"):
        check_exactly_once(samples("ab"), 3)


def _metrics():
    from ltad.eval.aggregate import aggregate

    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 9)
    ids = np.repeat([0, 1, 2], 6)
    scores = labels + rng.normal(0, 0.5, 18)
    pixel = {"a": {"pixel_AUROC": 0.9, "pixel_AUPRO": 0.7}, "b": {"pixel_AUROC": 0.8, "pixel_AUPRO": 0.6}}
    m = aggregate(scores, labels, ids, ["a", "b", "c"], {"a": 10, "b": 5, "c": 1}, pixel)
    m.update(
        n_evaluated=18,
        class_prediction_accuracy=0.5,
        threshold={"image_score": 0.5, "rule": "F1-max"},
        provenance={
            "dataset": "synth",
            "split": {"profile": "exp", "ratio": 10.0, "seed": 0},
            "split_sha256": "ab" * 32,
            "seed": 0,
            "git_commit": "abc",
            "weights": {"image": "x", "text": "random", "real_clip": False},
        },
    )
    return m


def test_tables_list_classes_head_first_then_groups_gap_mean():
    from ltad.eval.report import markdown_table, text_table

    text = text_table(_metrics())
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["class", "group", "train"]
    assert [ln.split()[0] for ln in lines[2:]] == [
        "a",
        "b",
        "c",
        "[head]",
        "[medium]",
        "[tail]",
        "[head",
        "[mean]",
    ]
    assert "n/a" in text  # class c has no pixel metrics: undefined, not 0
    assert markdown_table(_metrics()).count("\n") == 1 + 3 + 5


def test_report_says_when_no_real_clip_weights(tmp_path):
    from ltad.eval.report import write_report

    path = write_report(tmp_path / "report.md", _metrics(), {"a": "overlays/a.png"})
    text = path.read_text()
    assert "No real CLIP weights were used" in text and "![a](overlays/a.png)" in text


def test_fingerprint_changes_with_encoder_and_shards():
    from types import SimpleNamespace

    from ltad.config import EncoderConfig
    from ltad.training.feature_cache import fingerprint

    entry = SimpleNamespace(name="train/a-000000.tar", sha256="1")
    man = SimpleNamespace(shards={"train": [entry], "test": []})
    other = SimpleNamespace(shards={"train": [SimpleNamespace(name=entry.name, sha256="2")], "test": []})
    base = fingerprint(EncoderConfig(), man)
    assert base == fingerprint(EncoderConfig(), man) and len(base) == 16
    assert base != fingerprint(EncoderConfig(grid=7), man)
    assert base != fingerprint(EncoderConfig(), other)


def test_load_config_overrides_and_flags(tmp_path):
    from ltad.config import load_run_config

    path = tmp_path / "c.yaml"
    path.write_text("phase1:\n  steps: 7\n")
    cfg = load_run_config(str(path), data="s3://b/p", output="runs/o", overrides=["phase2.steps=3"])
    assert (cfg.phase1.steps, cfg.phase2.steps, cfg.data.uri, cfg.run.output) == (7, 3, "s3://b/p", "runs/o")
    with pytest.raises(ConfigError, match="unknown config key 'phase2.nope'"):
        load_run_config(None, overrides=["phase2.nope=1"])


def test_shipped_run_configs_are_valid():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    for name in ("demo", "mvtec", "visa"):
        cfg = LTADConfig.from_yaml(configs / f"{name}.yaml")
        assert cfg.scaling.zero_stage in (0, 1, 2, 3)
    assert "AWS_SECRET_ACCESS_KEY" not in "".join(p.read_text() for p in configs.glob("*.yaml"))


def test_jobs_report_bad_input_in_one_line(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("train_job", root / "jobs" / "train.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert f"config file '{tmp_path / 'missing.yaml'}' does not exist" in capsys.readouterr().err
    assert job.main(["--stages", "phase9"]) == 2
    assert "--stages 'phase9' is unknown" in capsys.readouterr().err


def test_stage_checkpoint_without_a_finished_run_is_a_config_error(tmp_path):
    from ltad.training.pipeline import stage_checkpoint

    cfg = LTADConfig.from_dict({"run": {"output": str(tmp_path), "name": "none"}})
    with pytest.raises(ConfigError, match="no finished phase2 checkpoint under"):
        stage_checkpoint(cfg, "phase2")


def test_the_commit_is_read_from_head_and_refs_when_git_cannot_run(tmp_path):
    """What `ray job submit --working-dir .` uploads of .git (.rayignore): HEAD and the refs, no objects."""
    from ltad.training.inputs import commit_from_refs

    sha = "0123456789abcdef0123456789abcdef01234567"
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert commit_from_refs(git) is None  # the branch has no commit yet
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{sha} refs/heads/main\n")
    assert commit_from_refs(git) == sha
    other = "f" * 40
    (git / "refs" / "heads" / "main").write_text(other + "\n")  # a loose ref wins over packed-refs
    assert commit_from_refs(git) == other
    (git / "HEAD").write_text(sha + "\n")  # detached
    assert commit_from_refs(git) == sha
    (git / "HEAD").write_text("not a ref\n")
    assert commit_from_refs(git) is None
    assert commit_from_refs(tmp_path / "nowhere") is None


def test_rayignore_uploads_head_and_refs_but_no_objects_config_or_index():
    """The working-dir package `ray job submit` builds from this checkout (Ray's default excludes, .git
    among them, plus .gitignore and .rayignore) carries HEAD and the refs through .ltad-git, nothing else
    of .git."""
    import logging
    import tempfile
    import zipfile
    from pathlib import Path

    from ray._private.ray_constants import get_runtime_env_default_excludes
    from ray._private.runtime_env.packaging import _zip_files

    from ltad.training.inputs import commit_from_refs

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").is_dir():
        pytest.skip("not a git checkout")
    excludes = get_runtime_env_default_excludes()
    assert ".git" in excludes  # why the link exists
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "pkg.zip"
        _zip_files(str(root), excludes, str(out), include_gitignore=True, logger=logging.getLogger("t"))
        with zipfile.ZipFile(out) as z:
            names = [n for n in z.namelist() if n.startswith((".git/", ".ltad-git/"))]
            z.extractall(Path(d) / "job", members=names)
        found = commit_from_refs(Path(d) / "job" / ".ltad-git")
    assert ".ltad-git/HEAD" in names and not [n for n in names if n.startswith(".git/")]
    bad = (".ltad-git/objects", ".ltad-git/config", ".ltad-git/index", ".ltad-git/logs", ".ltad-git/hooks")
    assert not [n for n in names if n.startswith(bad)]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    assert found == head  # what the job reads is the checkout's commit
