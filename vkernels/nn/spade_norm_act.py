"""SPADE (Park et al. 2019): a small conv net maps the segmentation map to per-pixel (gamma, beta), applied to a
parameter-free normalization of x by vkernels.spade_norm_act (fused with the activation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vkernels.nn._norm_state import NormState
from vkernels.ops.spade_norm_act import spade_norm_act

__all__ = ["SPADE"]


class SPADE(NormState):
    """NVlabs/SPADE's `SPADE` layer (models/networks/normalization.py), its nonlinearity optionally fused:
    segmap -> nearest resize to x's size -> conv(label_nc, hidden, k) -> ReLU -> conv(hidden, norm_nc, k) twice
    (gamma, beta) -> act(norm(x) * (1 + gamma) + beta).

    Args:
        norm_nc: channels of x.  label_nc: channels of the segmentation map.  hidden: width of the shared conv.
        kernel_size: of the three convs (odd; "same" padding).
        norm: "batch" (with nn.BatchNorm2d's running statistics) or "instance".
        act, alpha, gain, clamp, impl: as in `vkernels.spade_norm_act` (act "linear" = the plain SPADE layer).
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, kernel_size: int = 3, norm: str = "batch",
                 momentum: float | None = 0.1, eps: float = 1e-5, act: str = "linear", alpha: float = 0.2,
                 gain: float = 1.0, clamp: float | None = None, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if norm not in ("batch", "instance"):
            raise ValueError(f"SPADE: norm must be 'batch' or 'instance', got {norm!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"SPADE: kernel_size must be odd, got {kernel_size}")
        self._init_state(norm_nc, norm, True, momentum, eps, device, dtype)
        self.act, self.alpha, self.gain, self.clamp, self.impl = act, alpha, gain, clamp, impl
        f = dict(device=device, dtype=dtype)
        pad = kernel_size // 2
        self.mlp_shared = torch.nn.Sequential(torch.nn.Conv2d(label_nc, hidden, kernel_size, padding=pad, **f),
                                              torch.nn.ReLU())
        self.mlp_gamma = torch.nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad, **f)
        self.mlp_beta = torch.nn.Conv2d(hidden, norm_nc, kernel_size, padding=pad, **f)

    def forward(self, x, segmap):
        segmap = F.interpolate(segmap.to(x.dtype), size=x.shape[2:], mode="nearest")
        h = self.mlp_shared(segmap)
        gamma, beta = self.mlp_gamma(h), self.mlp_beta(h)
        rm, rv, training, momentum = self._norm_args() if self.norm == "batch" else (None, None, True, 0.1)
        return spade_norm_act(x, gamma, beta, self.norm, rm, rv, training, momentum, self.eps, self.act, self.alpha,
                              self.gain, self.clamp, self.impl)
