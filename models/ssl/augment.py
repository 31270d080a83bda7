"""Augmentations on batched tensors, in torch only (no torchvision), every draw from an explicit torch.Generator.

Drawing from a generator seeded per (seed, step, rank) instead of the global RNG is what makes a resumed run repeat
the uninterrupted one bit-exactly without saving any augmentation state. Parameters are drawn on the CPU (a handful
of numbers per sample) and the pixel work runs on the images' device.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _u(n, lo, hi, g):
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def random_resized_crop_flip(x: torch.Tensor, g: torch.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                             flip_p: float = 0.5, size: int | None = None) -> torch.Tensor:
    """RandomResizedCrop + RandomHorizontalFlip for a batch: one crop box per sample, resampled bilinearly.

    x: (N, C, H, W). Box area = s * H * W with s ~ U(scale), aspect ratio r log-uniform in `ratio`, clipped to the
    image (torchvision retries up to 10 times and then falls back to a centre crop; clipping is simpler and keeps one
    draw per sample). The crop and the flip are one affine grid, so each sample costs a single grid_sample.
    """
    n, _, h, w = x.shape
    size = size or h
    s = _u(n, *scale, g)
    r = torch.exp(_u(n, math.log(ratio[0]), math.log(ratio[1]), g))
    cw = torch.sqrt(s * r).clamp(max=1.0)        # crop width / image width
    ch = torch.sqrt(s / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * (1 - cw)  # centre in [-1, 1] coords
    cy = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * (1 - ch)
    flip = torch.where(torch.rand(n, generator=g) < flip_p, -1.0, 1.0).double()
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = cy
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, (n, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def color_jitter(x: torch.Tensor, g: torch.Generator, brightness=0.4, contrast=0.4, saturation=0.4, p=0.8,
                 grayscale_p=0.2) -> torch.Tensor:
    """MoCo v2's ColorJitter(0.4, 0.4, 0.4) with probability p, then RandomGrayscale(grayscale_p), on x in [-1, 1].

    Brightness scales, contrast blends with the per-image mean grey, saturation blends with the per-pixel grey
    (torchvision's definitions; hue is left out: it needs an RGB<->HSV round trip for little gain at these sizes).
    Factors are drawn for every sample; samples not selected by p get factor 1. The order is fixed (torchvision
    permutes it per call).
    """
    n, c = x.shape[:2]
    on = (torch.rand(n, generator=g) < p).double()
    b = 1 + on * _u(n, -brightness, brightness, g)
    ct = 1 + on * _u(n, -contrast, contrast, g)
    sat = 1 + on * _u(n, -saturation, saturation, g)
    gray_on = torch.rand(n, generator=g) < grayscale_p
    dev, dt = x.device, x.dtype

    def col(v):
        return v.to(device=dev, dtype=dt).view(n, 1, 1, 1)

    y = (x + 1) * 0.5
    y = (y * col(b)).clamp(0, 1)
    grey = _grey(y)
    y = ((y - grey.mean((2, 3), keepdim=True)) * col(ct) + grey.mean((2, 3), keepdim=True)).clamp(0, 1)
    if c == 3:
        grey = _grey(y)
        y = ((y - grey) * col(sat) + grey).clamp(0, 1)
        y = torch.where(gray_on.to(dev).view(n, 1, 1, 1), _grey(y).expand_as(y), y)
    return y * 2 - 1


def _grey(y):
    if y.shape[1] != 3:
        return y.mean(1, keepdim=True)
    w = torch.tensor([0.299, 0.587, 0.114], device=y.device, dtype=y.dtype).view(1, 3, 1, 1)
    return (y * w).sum(1, keepdim=True)


def augment_images(x: torch.Tensor, g: torch.Generator, crop_scale=(0.2, 1.0)) -> torch.Tensor:
    """One MoCo v2-style view (crop+flip, colour jitter, grayscale; no blur: the images here are 8-32 pixels)."""
    return color_jitter(random_resized_crop_flip(x, g, scale=crop_scale), g)


def augment_signal(x: torch.Tensor, g: torch.Generator, crop=(0.6, 1.0), gain=(0.7, 1.3), noise=0.05) -> torch.Tensor:
    """A view of a 1-D signal batch x (N, C, L): random temporal crop resampled to L, random gain, additive noise."""
    n, _, length = x.shape
    frac = _u(n, *crop, g)
    start = torch.rand(n, generator=g, dtype=torch.float64) * (1 - frac)
    t = torch.linspace(0, 1, length, dtype=torch.float64)
    pos = (start[:, None] + frac[:, None] * t[None]) * 2 - 1            # [-1, 1] coords in the input
    grid = torch.stack([pos, torch.zeros_like(pos)], -1).unsqueeze(1)  # (N, 1, L, 2): a 1-pixel-high image
    grid = grid.to(device=x.device, dtype=x.dtype)
    y = F.grid_sample(x.unsqueeze(2), grid, mode="bilinear", padding_mode="border", align_corners=True).squeeze(2)
    gn = _u(n, *gain, g).to(device=x.device, dtype=x.dtype).view(n, 1, 1)
    eps = torch.randn(y.shape, generator=g, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    return y * gn + noise * eps
