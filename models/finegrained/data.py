"""Offline data for the fine-grained models.

"covtex:<seed>": the synthetic texture task. Every class has zero mean and unit variance in every channel and the
same spatial smoothness; classes differ only in the correlations between channels (each class its own correlation
matrix R_k = D^-1/2 L L^T D^-1/2). First-order pooling of such images sees the same statistics for every class;
second-order pooling reads R_k off directly.
"covpatch:<seed>": the same textures, but only a square part (half the image side, at a random place) carries the
class's correlations; the rest is one class-independent texture. Whole-image pooling sees the class signal diluted
by 3/4 of background; a model that finds the part and zooms in sees it undiluted (models.finegrained.archs.RACNN).
Anything else goes to models._common.load_images ("digits", "faces", "synthetic:<seed>").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models import _common as C


def covariance_textures(seed: int = 0, n: int = 1024, classes: int = 4, channels: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    mix = []
    for _ in range(classes):
        L = torch.randn(channels, channels, generator=g)
        R = L @ L.T
        d = R.diagonal().rsqrt()
        R = d[:, None] * R * d[None, :]  # unit diagonal: the same per-channel variance in every class
        mix.append(torch.linalg.cholesky(R + 1e-4 * torch.eye(channels)))
    y = torch.arange(n) % classes
    noise = torch.randn(n, channels, size, size, generator=g)
    # The same mild spatial blur for every class (texture, not pixel noise), applied per channel before mixing.
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3)
    noise = F.conv2d(F.pad(noise, (1, 1, 1, 1), mode="circular"), k, groups=channels)
    noise = noise / noise.std((0, 2, 3), keepdim=True)
    Ls = torch.stack(mix)[y]  # (n, c, c)
    x = torch.einsum("nij,njhw->nihw", Ls, noise)
    perm = torch.randperm(n, generator=g)
    return x[perm].contiguous(), y[perm].contiguous()


def covariance_patches(seed: int = 0, n: int = 1024, classes: int = 4, channels: int = 3, size: int = 16,
                       return_parts: bool = False):
    """Background: class-independent texture with a shared random correlation; a (size/2)^2 part at a random place:
    the class's texture (covariance_textures). Per-channel mean 0 and variance 1 everywhere, as there.
    return_parts: also the parts as (n, 3) int64 rows (top, left, side) in pixels."""
    fg, y = covariance_textures(seed, n, classes, channels, size)
    bg, _ = covariance_textures(seed + 7919, n, 1, channels, size)  # one class: one shared correlation
    g = torch.Generator().manual_seed(seed + 104729)
    p = max(1, size // 2)
    top = torch.randint(0, size - p + 1, (n,), generator=g)
    left = torch.randint(0, size - p + 1, (n,), generator=g)
    rows = torch.arange(size)
    inside = ((rows[None, :] >= top[:, None]) & (rows[None, :] < top[:, None] + p))  # (n, size) rows in the part
    cols = ((rows[None, :] >= left[:, None]) & (rows[None, :] < left[:, None] + p))
    mask = (inside[:, :, None] & cols[:, None, :])[:, None]  # (n, 1, size, size)
    x = torch.where(mask, fg, bg).contiguous()
    if return_parts:
        return x, y, torch.stack([top, left, torch.full_like(top, p)], 1)
    return x, y


def parts(name: str, size: int | None = None):
    """The parts of "covpatch:<seed>" as (N, 3) rows (top, left, side) in pixels, in load()'s order; None for other
    data."""
    kind, _, arg = name.partition(":")
    return covariance_patches(int(arg or 0), size=size or 16, return_parts=True)[2] if kind == "covpatch" else None


def part_cover(boxes: torch.Tensor, parts: torch.Tensor, size: int) -> dict:
    """How well (B, 4) boxes (x0, y0, x1, y1 in [0, 1]) find the parts: mean fraction of each part's area inside its
    box, the boxes' mean area (fraction of the image), and the mean cover of boxes of the same sizes at uniformly
    random places (fixed seed): the level a box that ignores the image reaches."""
    def cover(b):
        top, left, side = parts.to(b).unbind(1)
        ix = (torch.minimum(b[:, 2] * size, left + side) - torch.maximum(b[:, 0] * size, left)).clamp_min(0)
        iy = (torch.minimum(b[:, 3] * size, top + side) - torch.maximum(b[:, 1] * size, top)).clamp_min(0)
        return (ix * iy / side ** 2).mean().item()

    wh = boxes[:, 2:] - boxes[:, :2]
    lo = torch.rand(wh.shape, generator=torch.Generator().manual_seed(0)) * (1 - wh)
    return {"part_cover": cover(boxes), "box_area": (wh[:, 0] * wh[:, 1]).mean().item(),
            "part_cover_random_box": cover(torch.cat([lo, lo + wh], 1))}


def load(name: str, size: int | None = None):
    """(x float32 (N, C, H, W), labels int64 (N,), number of classes)."""
    kind, _, arg = name.partition(":")
    if kind in ("covtex", "covpatch"):
        make = covariance_textures if kind == "covtex" else covariance_patches
        x, y = make(int(arg or 0), size=size or 16)
        return x, y, int(y.max()) + 1
    x, y = C.load_images(name, size=size, channels=3)
    if y is None:
        raise SystemExit(f"--data {name}: this dataset has no labels; use covtex:<seed>, covpatch:<seed>, digits or "
                         "synthetic:<seed>")
    return x, y, int(y.max()) + 1
