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
        ("model.encoder=1", "unknown config key 'model.encoder'"),
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
