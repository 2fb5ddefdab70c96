"""Bad input through the real entry points (`ltad ...`, `python jobs/train.py ...`).

Most cases call the entry point's `main` in this process (a subprocess per case only added an
interpreter start and torch's import, ~4 s each); the cases in SUBPROCESS run the console script or job
file in a subprocess, as a user does, so the real process boundary (exit code, stderr) stays covered.
Every case must end with a non-zero exit, exactly one stderr line naming the thing and what was
expected, no traceback, and nothing left that looks complete (no split file, manifest.json,
metrics.json or scores.csv). Training cases fail in config validation, before Ray starts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.reliability.conftest import REPO, run_cli, run_in_process

pytestmark = pytest.mark.integration


@dataclass
class Case:
    args: list[str]
    expect: list[str]  # substrings of the one error line (case-insensitive)
    absent: list[Path] = field(default_factory=list)  # nothing partial left looking complete
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Ctx:
    tmp: Path
    root: Path  # the tiny synthetic dataset
    split: Path
    shards: Path  # prepared local shards
    export: Path  # a valid exported model (random weights)
    s3: object

    def copy_root(self) -> Path:
        dst = self.tmp / "data"
        shutil.copytree(self.root, dst)
        return dst

    def train_cfg(self, **sections) -> Path:
        """A valid train config YAML (tiny model, local data) with `sections` merged in."""
        from tests.integration.conftest import TINY_MODEL

        doc: dict = {"model": TINY_MODEL, "data": {"uri": str(self.shards)}, "run": {"name": "bad"}}
        for key, value in sections.items():
            doc[key] = {**doc.get(key, {}), **value}
        path = self.tmp / "cfg.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    def train(self, *extra: str, cfg: Path | None = None) -> Case:
        out = self.tmp / "out"
        args = ["jobs/train.py", "--config", str(cfg or self.train_cfg()), "--out", str(out), *extra]
        return Case(args, [], [out / "metrics.json", out / "model"])

    def prepare(self, root: Path, split: Path, out: str | None = None) -> Case:
        out = out or str(self.tmp / "shards")
        args = ["prepare", "--dataset", "synth", "--root", str(root), "--split", str(split), "--out", out]
        return Case(args, [], [] if out.startswith("s3://") else [Path(out) / "manifest.json"])

    def split_cmd(self, root: Path, *extra: str) -> Case:
        out = self.tmp / "split.json"
        args = ["split", "--dataset", "synth", "--root", str(root), "--out", str(out), *extra]
        return Case(args, [], [out])

    def predict(self, images: Path, model: Path | None = None, *extra: str) -> Case:
        out = self.tmp / "pred"
        args = ["predict", "--model", str(model or self.export), "--images", str(images), "--out", str(out)]
        return Case([*args, *extra], [], [out / "scores.csv"])


def _with(case: Case, *expect: str, env: dict[str, str] | None = None) -> Case:
    case.expect = list(expect)
    case.env = env or {}
    return case


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


# ---------------------------------------------------------------------------------------- the cases


def missing_root(c: Ctx) -> Case:
    return _with(c.split_cmd(c.tmp / "nowhere", "--profile", "exp", "--ratio", "10"), "nowhere")


def empty_class_folder(c: Ctx) -> Case:
    root = c.copy_root()
    cls = sorted(p.name for p in root.iterdir())[0]
    for f in (root / cls / "train" / "good").iterdir():
        f.unlink()
    return _with(c.split_cmd(root, "--profile", "exp", "--ratio", "10"), cls, "train")


def non_image_file(c: Ctx) -> Case:
    root = c.copy_root()
    bad = _first(root, "*/train/good/*.png")
    bad.write_text("this is not a PNG")
    return _with(c.prepare(root, c.split), bad.name, "cannot read image")


def mask_wrong_size(c: Ctx) -> Case:
    root = c.copy_root()
    mask = _first(root, "*/ground_truth/*/*.png")
    Image.fromarray(np.zeros((7, 9), np.uint8)).save(mask)
    return _with(c.prepare(root, c.split), mask.name, "9x7")


def split_names_missing_file(c: Ctx) -> Case:
    doc = json.loads(c.split.read_text())
    cls = next(iter(doc["train"]))
    doc["train"][cls][0] = f"{cls}/train/good/999.png"
    path = c.tmp / "split-missing.json"
    path.write_text(json.dumps(doc))
    return _with(c.prepare(c.root, path), "999.png", "split file")


def split_unknown_format(c: Ctx) -> Case:
    path = c.tmp / "split.csv"
    path.write_text("class;count\nfoo;3\n")
    return _with(c.prepare(c.root, path), "split.csv")


def split_wrong_format_tag(c: Ctx) -> Case:
    path = c.tmp / "split-v9.json"
    path.write_text(json.dumps({"format": "ltad-split/9", "train": {}}))
    return _with(c.prepare(c.root, path), "split-v9.json", "ltad-split/1")


def ratio_one(c: Ctx) -> Case:
    return _with(c.split_cmd(c.root, "--profile", "exp", "--ratio", "1"), "ratio", "> 1")


def ratio_below_one(c: Ctx) -> Case:
    return _with(c.split_cmd(c.root, "--profile", "step", "--ratio", "0.5"), "ratio", "> 1")


def ratio_not_a_number(c: Ctx) -> Case:
    return _with(c.split_cmd(c.root, "--profile", "exp", "--ratio", "ten"), "--ratio", "'ten'")


def ratio_nan(c: Ctx) -> Case:
    return _with(c.split_cmd(c.root, "--profile", "exp", "--ratio", "nan"), "ratio", "nan")


def unknown_profile(c: Ctx) -> Case:
    return _with(c.split_cmd(c.root, "--profile", "zipf", "--ratio", "10"), "--profile", "zipf")


def unknown_config_key(c: Ctx) -> Case:
    return _with(c.train(cfg=c.train_cfg(phase2={"stepz": 3})), "phase2.stepz", "unknown config key")


def wrong_type(c: Ctx) -> Case:
    return _with(c.train("--set", "phase2.steps=many"), "phase2.steps", "an int")


def unknown_zero_stage(c: Ctx) -> Case:
    return _with(c.train("--set", "scaling.zero_stage=4"), "scaling.zero_stage", "0, 1, 2, 3")


def prompt_length_zero(c: Ctx) -> Case:
    return _with(c.train("--set", "model.prompts.length=0"), "model.prompts.length", "[1, 32]")


def synthesis_ratio_one(c: Ctx) -> Case:
    return _with(c.train("--set", "phase2.synthesis_ratio=1.0"), "phase2.synthesis_ratio", "[0, 1)")


def synthesis_ratio_negative(c: Ctx) -> Case:
    return _with(c.train("--set", "phase2.synthesis_ratio=-0.1"), "phase2.synthesis_ratio", "[0, 1)")


def unknown_precision(c: Ctx) -> Case:
    return _with(c.train("--set", "scaling.precision=fp16"), "scaling.precision", "'bf16'")


def config_file_missing(c: Ctx) -> Case:
    return _with(c.train(cfg=c.tmp / "nope.yaml"), "nope.yaml", "does not exist")


def config_not_yaml(c: Ctx) -> Case:
    path = c.tmp / "broken.yaml"
    path.write_text("model: [unclosed\n")
    return _with(c.train(cfg=path), "broken.yaml", "not valid YAML")


def override_without_value(c: Ctx) -> Case:
    return _with(c.train("--set", "phase2.steps"), "phase2.steps", "key=value")


def unknown_stage(c: Ctx) -> Case:
    return _with(c.train("--stages", "phase1,phase3"), "phase3", "expected phase1, phase2, evaluate")


def negative_max_bad_samples(c: Ctx) -> Case:
    return _with(c.train("--set", "data.max_bad_samples=-1"), "data.max_bad_samples", ">= 0")


def unreachable_endpoint(c: Ctx) -> Case:
    from tools.services.ports import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    case = Case(["inspect", "s3://ltad-test/tiny"], [])
    return _with(case, endpoint, "cannot reach", env={"AWS_ENDPOINT_URL": endpoint})


def missing_bucket(c: Ctx) -> Case:
    return _with(Case(["inspect", "s3://no-such-bucket-rel/x"], []), "no-such-bucket-rel", "does not exist")


def wrong_credentials(c: Ctx) -> Case:
    case = c.prepare(c.root, c.split, out="s3://ltad-test/rel-wrong-creds")
    return _with(case, "rejected the credentials", env={"AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789"})


def no_manifest(c: Ctx) -> Case:
    empty = c.tmp / "empty-prefix"
    empty.mkdir()
    return _with(Case(["inspect", str(empty)], []), "manifest.json", "empty-prefix")


def prepare_zero_test_shard_samples(c: Ctx) -> Case:
    case = c.prepare(c.root, c.split)
    case.args += ["--test-shard-samples", "0"]
    return _with(case, "--test-shard-samples", ">= 1")


def predict_not_an_image(c: Ctx) -> Case:
    """Every image unreadable: exit 1 (one bad image among good ones is skipped: errors.csv, exit 0)."""
    images = c.tmp / "imgs"
    images.mkdir()
    (images / "fake.png").write_bytes(b"GIF89a but not really")
    return _with(c.predict(images), "fake.png", "cannot read image")


def predict_not_a_model(c: Ctx) -> Case:
    return _with(c.predict(c.root, c.tmp), str(c.tmp), "not an exported ltad model")


def predict_batch_size_zero(c: Ctx) -> Case:
    return _with(c.predict(c.root, None, "--batch-size", "0"), "--batch-size", ">= 1")


def prepare_unknown_scheme(c: Ctx) -> Case:
    """`gs://` is no local folder: one error naming the flag, nothing written under ./gs:/ (cwd = repo)."""
    case = c.prepare(c.root, c.split, out="gs://ltad-rel/x")
    case.absent = [REPO / "gs:"]
    return _with(case, "--out 'gs://ltad-rel/x'", "scheme 'gs' is not supported")


def prepare_s3_case_typo(c: Ctx) -> Case:
    case = c.prepare(c.root, c.split, out="S3://ltad-rel/x")
    case.absent = [REPO / "S3:"]
    return _with(case, "--out 'S3://ltad-rel/x'", "lower-case")


def predict_malformed_model_uri(c: Ctx) -> Case:
    return _with(c.predict(c.root, Path("s3:/ltad-rel/model")), "--model 's3:/ltad-rel/model'", "s3://bucket")


def train_unknown_set_key_lists_known_keys(c: Ctx) -> Case:
    return _with(c.train("--set", "phase2.lrr=1e-3"), "phase2.lrr", "known keys of phase2", "lr")


def incompatible_checkpoint(c: Ctx) -> Case:
    """Weights of one model size under a config of another: the mismatch is named, nothing scored."""
    model = c.tmp / "model"
    shutil.copytree(c.export, model)
    cfg = yaml.safe_load((model / "config.yaml").read_text())
    cfg["model"]["reconstruction"]["hidden"] = 64
    (model / "config.yaml").write_text(yaml.safe_dump(cfg))
    return _with(c.predict(c.root, model), "reconstruction", "shape")


CASES: dict[str, Callable[[Ctx], Case]] = {
    f.__name__: f
    for f in (
        missing_root,
        empty_class_folder,
        non_image_file,
        mask_wrong_size,
        split_names_missing_file,
        split_unknown_format,
        split_wrong_format_tag,
        ratio_one,
        ratio_below_one,
        ratio_not_a_number,
        ratio_nan,
        unknown_profile,
        unknown_config_key,
        wrong_type,
        unknown_zero_stage,
        prompt_length_zero,
        synthesis_ratio_one,
        synthesis_ratio_negative,
        unknown_precision,
        config_file_missing,
        config_not_yaml,
        override_without_value,
        unknown_stage,
        negative_max_bad_samples,
        unreachable_endpoint,
        missing_bucket,
        wrong_credentials,
        no_manifest,
        prepare_zero_test_shard_samples,
        predict_not_an_image,
        predict_not_a_model,
        predict_batch_size_zero,
        incompatible_checkpoint,
        prepare_unknown_scheme,
        prepare_s3_case_typo,
        predict_malformed_model_uri,
        train_unknown_set_key_lists_known_keys,
    )
}


@pytest.fixture(scope="session")
def export_dir(synth_root, tmp_path_factory) -> Path:
    """A valid exported model (tiny, untrained weights) for the predict cases."""
    from ltad.config import LTADConfig
    from ltad.inference.export import write_export
    from ltad.models.state import build_model
    from tests.integration.conftest import TINY_MODEL

    cfg = LTADConfig.from_dict({"model": TINY_MODEL})
    model = build_model(cfg, 3)
    model.cache_text()  # usable untrained: text cached, identity standardisation
    model.stats_ready.fill_(True)
    out = tmp_path_factory.mktemp("rel-export") / "model"
    from ltad.data.datasets import read_dataset

    classes = list(read_dataset("synth", synth_root).classes)
    return write_export(out, model, cfg, classes, np.array([0.0, 1.0]), 0.5, {})


SUBPROCESS = {"missing_root", "unknown_config_key", "wrong_credentials", "predict_not_an_image"}
"""One case per entry kind (split, jobs/train.py, prepare on S3, predict) through a real process."""


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_cleanly(
    name, tmp_path, synth_root, split_file, local_shards, export_dir, s3_server, capfd, monkeypatch
):
    ctx = Ctx(tmp_path, synth_root, split_file, local_shards, export_dir, s3_server)
    case = CASES[name](ctx)
    if name in SUBPROCESS:
        ran = run_cli(case.args, case.env)
    else:
        ran = run_in_process(case.args, case.env, capfd, monkeypatch)
    assert ran.rc != 0, ran
    assert "Traceback" not in ran.stderr, ran.stderr
    assert len(ran.error_lines) == 1 and ran.lines[-1] == ran.error_lines[0], ran.stderr
    line = ran.error_lines[0].lower()
    for word in case.expect:
        assert word.lower() in line, (word, ran.error_lines[0])
    for path in case.absent:
        assert not path.exists(), f"{path} left behind after a failed run"
    if name == "wrong_credentials":  # nothing written under the prefix with the bad key
        from ltad.io import storage

        assert storage.list("s3://ltad-test/rel-wrong-creds") == []
