"""Pseudo-anomalies that teach the semantic classifier what "abnormal" looks like without real defects.

Feature level (default; works on cached features): in one random rectangle of each map, patches are
either replaced by patches of another sample (preferably another class) or perturbed by noise scaled
to the feature norm. Image level (option, as DRAEM / CutPaste): a Perlin-noise region blended with
another image's texture, or a rectangle cut from the image and pasted elsewhere. All randomness comes
from torch's global generator, so a seeded run is reproducible.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rand_int(low: int, high: int) -> int:
    """Uniform int in [low, high]."""
    return int(torch.randint(low, high + 1, ()).item())


def _rect(h: int, w: int, min_frac: float, max_frac: float) -> tuple[int, int, int, int]:
    rh = _rand_int(max(1, round(h * min_frac)), max(1, round(h * max_frac)))
    rw = _rand_int(max(1, round(w * min_frac)), max(1, round(w * max_frac)))
    y, x = _rand_int(0, h - rh), _rand_int(0, w - rw)
    return y, x, rh, rw


def _donor(i: int, class_ids: torch.Tensor) -> int:
    """Another sample, of another class when the batch has one."""
    n = class_ids.shape[0]
    others = [j for j in range(n) if class_ids[j] != class_ids[i]] or [j for j in range(n) if j != i] or [i]
    return others[_rand_int(0, len(others) - 1)]


def feature_anomalies(
    patches: torch.Tensor, class_ids: torch.Tensor, max_frac: float = 0.5, noise: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """B x D x g x g -> (anomalous copy, mask B x g x g in {0, 1}); swap or perturb one rectangle each."""
    out = patches.clone()
    b, _, h, w = patches.shape
    mask = torch.zeros(b, h, w, dtype=patches.dtype, device=patches.device)
    for i in range(b):
        y, x, rh, rw = _rect(h, w, 1 / max(h, w), max_frac)
        region = out[i, :, y : y + rh, x : x + rw]
        if torch.rand(()) < 0.5:
            j = _donor(i, class_ids)
            sy, sx = _rand_int(0, h - rh), _rand_int(0, w - rw)
            region.copy_(patches[j, :, sy : sy + rh, sx : sx + rw])
        else:
            scale = region.norm(dim=0, keepdim=True) / math.sqrt(region.shape[0])
            region.add_(torch.randn_like(region) * scale * noise)
        mask[i, y : y + rh, x : x + rw] = 1
    return out, mask


def perlin_noise(h: int, w: int, res: int) -> torch.Tensor:
    """2-D gradient (Perlin) noise in about [-1, 1] on an h x w image with res x res cells."""
    angles = torch.rand(res + 1, res + 1) * 2 * math.pi
    grads = torch.stack([angles.cos(), angles.sin()], dim=-1)
    ys = torch.linspace(0, res, h + 1)[:-1].view(h, 1).expand(h, w)
    xs = torch.linspace(0, res, w + 1)[:-1].view(1, w).expand(h, w)
    y0, x0 = ys.floor().long().clamp(max=res - 1), xs.floor().long().clamp(max=res - 1)
    fy, fx = ys - y0, xs - x0

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = grads[y0 + dy, x0 + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: torch.Tensor) -> torch.Tensor:
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    uy, ux = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return (top * (1 - uy) + bottom * uy) * math.sqrt(2)


def perlin_anomalies(images: torch.Tensor, threshold: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM-style: blend a Perlin-shaped region with a (flipped) other image; -> images, masks B x H x W."""
    b, _, h, w = images.shape
    out, masks = images.clone(), torch.zeros(b, h, w, dtype=images.dtype, device=images.device)
    for i in range(b):
        mask = torch.zeros(h, w)
        while mask.sum() == 0:
            mask = (perlin_noise(h, w, 2 ** _rand_int(1, 3)) > threshold).float()
        mask = mask.to(images)
        source = images[(i + _rand_int(1, max(1, b - 1))) % b].flip(-1)
        alpha = 0.2 + 0.6 * torch.rand(()).item()
        blended = (1 - alpha) * images[i] + alpha * source
        out[i] = images[i] * (1 - mask) + blended * mask
        masks[i] = mask
    return out, masks


def cutpaste_anomalies(images: torch.Tensor, max_frac: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """CutPaste: copy a rectangle of the image to another place (colour jittered); -> images, masks."""
    b, _, h, w = images.shape
    out, masks = images.clone(), torch.zeros(b, h, w, dtype=images.dtype, device=images.device)
    for i in range(b):
        y, x, rh, rw = _rect(h, w, 0.05, max_frac)
        ty, tx = _rand_int(0, h - rh), _rand_int(0, w - rw)
        patch = images[i, :, y : y + rh, x : x + rw] * (0.8 + 0.4 * torch.rand(3, 1, 1, device=images.device))
        out[i, :, ty : ty + rh, tx : tx + rw] = patch.clamp(0, 1)
        masks[i, ty : ty + rh, tx : tx + rw] = 1
    return out, masks


def image_anomalies(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Half the batch Perlin, half CutPaste (random order); -> images, masks B x H x W."""
    use_perlin = torch.rand(images.shape[0]) < 0.5
    perlin, pmask = perlin_anomalies(images)
    cut, cmask = cutpaste_anomalies(images)
    sel = use_perlin.to(images.device).view(-1, 1, 1)
    return torch.where(sel.unsqueeze(1), perlin, cut), torch.where(sel, pmask, cmask)


def mask_to_grid(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Pixel masks B x H x W -> soft patch targets B x g x g (share of anomalous pixels per patch)."""
    return F.adaptive_avg_pool2d(masks.unsqueeze(1).float(), grid).squeeze(1)
