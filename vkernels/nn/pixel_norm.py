"""PixelNorm: vkernels.pixel_norm as a module (no parameters)."""
from __future__ import annotations

import torch

from vkernels.ops.pixel_norm import pixel_norm

__all__ = ["PixelNorm"]


class PixelNorm(torch.nn.Module):
    """y = x * rsqrt(mean(x^2, dim) + eps); StyleGAN's mapping-network input normalization."""

    def __init__(self, dim: int = 1, eps: float = 1e-8, impl: str = "auto"):
        super().__init__()
        self.dim, self.eps, self.impl = dim, eps, impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x, self.dim, self.eps, self.impl)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"
