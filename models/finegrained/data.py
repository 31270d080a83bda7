"""Offline data for the fine-grained models.

"covtex:<seed>": the synthetic texture task. Every class has zero mean and unit variance in every channel and the
same spatial smoothness; classes differ only in the correlations between channels (each class its own correlation
matrix R_k = D^-1/2 L L^T D^-1/2). First-order pooling of such images sees the same statistics for every class;
second-order pooling reads R_k off directly.
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


def load(name: str, size: int | None = None):
    """(x float32 (N, C, H, W), labels int64 (N,), number of classes)."""
    kind, _, arg = name.partition(":")
    if kind == "covtex":
        x, y = covariance_textures(int(arg or 0), size=size or 16)
        return x, y, int(y.max()) + 1
    x, y = C.load_images(name, size=size, channels=3)
    if y is None:
        raise SystemExit(f"--data {name}: this dataset has no labels; use covtex:<seed>, digits or synthetic:<seed>")
    return x, y, int(y.max()) + 1
