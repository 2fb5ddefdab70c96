"""The typed config: defaults, YAML round trip, overrides and the messages users see."""

from __future__ import annotations

import pytest

from ltad.config import LTADConfig
from ltad.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = LTADConfig()
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
    assert LTADConfig.from_yaml(path) == cfg


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = LTADConfig().with_overrides(
        ["phase2.steps=7", "model.encoder.layers=[1, 2]", "scaling.use_gpu=true", "run.name=x"]
    )
    assert cfg.phase2.steps == 7
    assert cfg.model.encoder.layers == (1, 2)
    assert cfg.scaling.use_gpu is True
    assert cfg.run.name == "x"


def test_phase1_is_class_balanced_by_default_and_apart_from_phase2():
    cfg = LTADConfig()
    assert cfg.phase1.class_balance == 1.0 and cfg.data.class_balance == 0.5
    assert LTADConfig.from_dict({"phase1": {"class_balance": 0.5}}).data.class_balance == 0.5


def test_int_is_accepted_where_a_float_is_expected():
    assert LTADConfig.from_dict({"phase2": {"lr": 1}}).phase2.lr == 1.0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"model": {"foo": 1}}, "unknown config key 'model.foo'"),
        ({"bogus": {}}, "unknown config key 'bogus'"),
        ({"phase2": {"steps": "ten"}}, "'phase2.steps' must be an int"),
        ({"phase2": {"synthesis_ratio": 1.0}}, "'phase2.synthesis_ratio' must be in [0, 1)"),
        ({"phase2": {"synthesis_ratio": -0.1}}, "'phase2.synthesis_ratio'"),
        (
            {"data": {"batch_size": 2}, "phase2": {"synthesis_ratio": 0.75}},
            "'phase2.synthesis_ratio' must be small enough to leave a real sample in a batch of data.batch_size 2",
        ),
        ({"phase1": {"class_balance": 1.5}}, "'phase1.class_balance' must be in [0, 1]"),
        ({"model": {"prompts": {"length": 0}}}, "'model.prompts.length'"),
        ({"scaling": {"zero_stage": 4}}, "'scaling.zero_stage' must be one of 0, 1, 2, 3"),
        ({"scaling": {"precision": "fp16"}}, "'scaling.precision' must be one of 'fp32', 'bf16'"),
        ({"scaling": {"use_gpu": "yes"}}, "'scaling.use_gpu' must be true or false"),
        ({"model": {"encoder": {"layers": 3}}}, "'model.encoder.layers' must be a list"),
        ({"model": []}, "section 'model' must be a mapping"),
    ],
)
def test_bad_config_names_the_key(data, needle):
    with pytest.raises(ConfigError) as info:
        LTADConfig.from_dict(data)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("phase2.steps", "must look like key=value"),
        ("phase3.steps=1", "unknown config key 'phase3'"),
        ("model.encoder=1", "config key 'model.encoder' is a section, not a value"),
        ("phase2.lr.x=1", "config key 'phase2.lr' is a value, not a section"),
        ("phase2.lr=fast", "'phase2.lr' must be a number, got 'fast'"),
        ("phase2.steps=1.5", "'phase2.steps' must be an int, got '1.5'"),
        ("scaling.use_gpu=yes", "'scaling.use_gpu' must be true or false, got 'yes'"),
        ("scaling.use_gpu=1", "'scaling.use_gpu' must be true or false"),
        ("phase2.lr=nan", "'phase2.lr' must be a number"),
        ("phase2.steps=-1", "'phase2.steps' must be an int >= 1"),
    ],
)
def test_bad_override_names_the_key(override, needle):
    with pytest.raises(ConfigError) as info:
        LTADConfig().with_overrides([override])
    assert needle in str(info.value)


def test_missing_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        LTADConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        LTADConfig.from_yaml(bad)


def test_values_are_converted_by_the_declared_type():
    cfg = LTADConfig().with_overrides(
        [
            "phase2.lr=1e-3",
            "run.name=off",
            "phase1.steps=12",
            "scaling.use_gpu=False",
            "model.encoder.layers=1,3",
        ]
    )
    assert cfg.phase2.lr == 1e-3 and isinstance(cfg.phase2.lr, float)
    assert cfg.run.name == "off" and cfg.phase1.steps == 12 and cfg.scaling.use_gpu is False
    assert cfg.model.encoder.layers == (1, 3)
    assert LTADConfig().with_overrides(["run.name=123", "run.storage_path="]).run.name == "123"


def test_yaml_reads_exponent_floats_and_keeps_yes_no_on_off_as_strings(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "phase2:\n  lr: 1e-4\nphase1:\n  names_lr: 5E-3\nrun:\n  name: off\nscaling:\n  use_gpu: true\n"
    )
    cfg = LTADConfig.from_yaml(path)
    assert cfg.phase2.lr == 1e-4 and cfg.phase1.names_lr == 5e-3
    assert cfg.run.name == "off" and cfg.scaling.use_gpu is True
    path.write_text("scaling:\n  use_gpu: on\n")
    with pytest.raises(ConfigError, match="'scaling.use_gpu' must be true or false, got 'on'"):
        LTADConfig.from_yaml(path)
    path.write_text(cfg.to_yaml())
    assert LTADConfig.from_yaml(path) == cfg  # 'off' is quoted on the way out


def test_unknown_keys_list_the_known_keys_at_the_level_of_the_mistake():
    with pytest.raises(ConfigError) as info:
        LTADConfig().with_overrides(["phase2.lrr=1"])
    assert "unknown config key 'phase2.lrr'" in str(info.value)
    assert "known keys of phase2: steps, lr, weight_decay" in str(info.value)
    with pytest.raises(ConfigError) as info:
        LTADConfig().with_overrides(["phse2.lr=1"])
    assert "known keys at the top level: model, data, phase1, phase2, scaling, run, eval" in str(info.value)
    with pytest.raises(ConfigError) as info:
        LTADConfig.from_dict({"model": {"encoder": {"grd": 7}}})
    assert "known keys of model.encoder: name, pretrained, layers, grid" in str(info.value)


def test_config_show_prints_the_resolved_config(tmp_path, capsys):
    import yaml

    from ltad.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text("phase2:\n  lr: 1e-4\n")
    args = ["config", "show", "--config", str(path), "--set", "run.name=off", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["phase2"]["lr"] == 1e-4 and shown["run"]["name"] == "off"
    assert shown["run"]["output"] == str(tmp_path / "o") and shown["data"]["batch_size"] == 8
    assert LTADConfig.from_dict(shown).phase2.lr == 1e-4
    assert main(["config", "show", "--set", "phase2.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("ltad config: error: unknown config key 'phase2.lrr'")
        and "known keys of phase2" in err
    )
