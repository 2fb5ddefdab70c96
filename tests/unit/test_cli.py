"""One command surface: `ltad <cmd>` and the job files (jobs/*.py, tune/sweep.py) share parsers, defaults
and errors; `ltad --version`; bad locations fail before anything is written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ltad import cli
from ltad.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
JOBS = {
    "jobs/train.py": "train",
    "jobs/evaluate.py": "evaluate",
    "jobs/prepare.py": "prepare",
    "jobs/study.py": "study",
    "jobs/summary.py": "summary",
    "tune/sweep.py": "sweep",
}


def _job(path: str):
    spec = importlib.util.spec_from_file_location(f"_job_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _options(parser) -> dict[str, tuple]:
    return {
        a.option_strings[-1] if a.option_strings else a.dest: (a.dest, a.default, a.required, a.choices)
        for a in parser._actions
        if a.dest not in ("help",)
    }


def _subparser(name: str):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


@pytest.mark.parametrize(("path", "name"), sorted(JOBS.items()))
def test_job_files_take_exactly_the_commands_flags_and_defaults(path, name):
    job = _job(path)
    assert _options(job.build_parser()) == _options(_subparser(name))
    assert job.build_parser().prog == path


def test_every_command_is_on_the_ltad_cli():
    for name in ("sweep", "summary", "study", "config", "train", "prepare", "predict"):
        assert _subparser(name) is not None
    assert "--stages" in _options(_subparser("train"))


def test_version_comes_from_package_metadata(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ltad {cli.version()}"
    assert cli.version()


def test_prepare_without_a_split_or_profile_is_an_error_not_a_default_ratio(tmp_path, capsys):
    job = _job("jobs/prepare.py")
    base = ["--dataset", "folder", "--root", str(tmp_path), "--out", str(tmp_path / "out")]
    assert job.main(base) == 2
    assert "give --split FILE (from `ltad split`) or --profile" in capsys.readouterr().err
    assert cli.main(["prepare", *base, "--profile", "exp"]) == 2
    assert "ltad prepare: error: --ratio is required for profile 'exp'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", ["gs://b/x", "S3://b/x", "s3:/b/x", "s3://"])
def test_a_bad_out_uri_fails_before_anything_is_written(tmp_path, monkeypatch, capsys, bad):
    monkeypatch.chdir(tmp_path)
    args = ["prepare", "--dataset", "folder", "--root", str(tmp_path), "--out", bad, "--split", "s.json"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ltad prepare: error: --out '{bad}'") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_predict_rejects_a_remote_images_or_out_and_a_malformed_model(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # one local process: s3:// images need --workers
    base = ["predict", "--images", str(tmp_path), "--out", str(tmp_path / "o")]
    assert cli.main([*base, "--model", "s3:/b/model"]) == 2
    assert "--model 's3:/b/model' is not a valid S3 URI" in capsys.readouterr().err
    assert cli.main(["predict", "--model", str(tmp_path), "--images", "s3://b/i", "--out", "o"]) == 2
    assert (
        "--images 's3://b/i' is an S3 URI: that needs a Ray job, add --workers N" in capsys.readouterr().err
    )


def test_train_job_checks_stages_before_anything_else(capsys):
    assert _job("jobs/train.py").main(["--stages", "phase1,phase9"]) == 2
    assert "jobs/train.py: error: --stages 'phase9' is unknown" in capsys.readouterr().err
    assert cli.main(["train", "--stages", ","]) == 2
    assert "--stages is empty" in capsys.readouterr().err


def test_summary_needs_a_sweep_or_a_run(tmp_path, capsys):
    assert cli.main(["summary", "--out", str(tmp_path)]) == 2
    assert "give at least one --sweep or --run" in capsys.readouterr().err


def test_predict_downloads_an_s3_model_into_a_folder(tmp_path, monkeypatch):
    from ltad.commands.predict import download_model
    from ltad.io import storage

    objects = {
        "s3://b/run/model/weights.pt": b"w",
        "s3://b/run/model/config.yaml": b"c",
        "s3://b/run/model/export.json": b"{}",
    }
    monkeypatch.setattr(
        storage, "list", lambda prefix: sorted(u for u in objects if u.startswith(prefix + "/"))
    )
    monkeypatch.setattr(storage, "read_bytes", lambda u: objects[u])
    folder = download_model("s3://b/run/model/", tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "export.json", "weights.pt"]
    assert (folder / "weights.pt").read_bytes() == b"w"
    del objects["s3://b/run/model/weights.pt"]
    with pytest.raises(
        UserError,
        match="'s3://b/run/model' is not an exported ltad model: weights.pt \\(or model.onnx, model.xml\\) missing",
    ):
        download_model("s3://b/run/model", tmp_path / "again")
    objects["s3://b/run/model/model.onnx"] = b"o"  # an `ltad export --format onnx` folder
    folder = download_model("s3://b/run/model", tmp_path / "onnx")
    assert sorted(p.name for p in folder.iterdir()) == ["config.yaml", "export.json", "model.onnx"]
    del objects["s3://b/run/model/model.onnx"]
    objects["s3://b/run/model/model.xml"] = b"x"  # an `ltad export --format openvino` folder
    objects["s3://b/run/model/model.bin"] = b"b"
    folder = download_model("s3://b/run/model", tmp_path / "openvino")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml",
        "export.json",
        "model.bin",
        "model.xml",
    ]


def test_a_module_of_a_missing_extra_is_one_line_naming_the_extra(capsys):
    from argparse import Namespace

    from ltad.cli import run_parsed

    def needs_ray(args):
        raise ModuleNotFoundError("No module named 'ray'", name="ray")

    assert run_parsed(Namespace(_run=needs_ray, _prog="ltad train")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "ltad train: error: this command needs the 'train' extra (ray is not installed): pip install 'ltad[train]'"
    )


def test_a_missing_module_of_no_extra_keeps_its_traceback():
    from argparse import Namespace

    from ltad.cli import run_parsed

    def broken(args):
        raise ModuleNotFoundError("No module named 'nonexistent_pkg'", name="nonexistent_pkg")

    with pytest.raises(ModuleNotFoundError):
        run_parsed(Namespace(_run=broken, _prog="ltad x"))
