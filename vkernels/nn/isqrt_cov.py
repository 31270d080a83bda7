"""ISqrtCov: iSQRT-COV pooling (vkernels.isqrt_cov) as a module, with MPNCOV's optional 1x1 dimension reduction."""
from __future__ import annotations

import torch

from vkernels.ops.isqrt_cov import isqrt_cov

__all__ = ["ISqrtCov"]


class ISqrtCov(torch.nn.Module):
    """out = vkernels.isqrt_cov(reduce(x), iters, triu).

    Args:
        iters: Newton-Schulz iterations (the paper's 5).
        triu: output the upper triangle (B, d(d+1)/2) (MPNCOV's Triuvec), else (B, d, d).
        in_channels, reduced_dim: both set -> a 1x1 conv (no bias) + BatchNorm + ReLU from in_channels to
            reduced_dim first, as MPNCOV's `layer_reduce` (2048 -> 256 on ResNet-50). Off by default.
    """

    def __init__(self, iters: int = 5, triu: bool = True, in_channels: int | None = None,
                 reduced_dim: int | None = None, impl: str = "auto"):
        super().__init__()
        if (in_channels is None) != (reduced_dim is None):
            raise ValueError("ISqrtCov: in_channels and reduced_dim must be given together (the 1x1 reduction), "
                             f"got in_channels={in_channels!r}, reduced_dim={reduced_dim!r}")
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"ISqrtCov: iters must be an integer >= 1, got {iters!r}")
        self.iters, self.triu, self.impl = iters, triu, impl
        self.reduce = None
        if reduced_dim is not None:
            self.reduce = torch.nn.Sequential(
                torch.nn.Conv2d(in_channels, reduced_dim, 1, bias=False), torch.nn.BatchNorm2d(reduced_dim),
                torch.nn.ReLU(inplace=True))

    def output_dim(self, channels: int) -> int:
        d = self.reduce[0].out_channels if self.reduce is not None else channels
        return d * (d + 1) // 2 if self.triu else d * d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reduce is not None:
            x = self.reduce(x)
        return isqrt_cov(x, self.iters, self.triu, impl=self.impl)

    def extra_repr(self) -> str:
        return f"iters={self.iters}, triu={self.triu}"
