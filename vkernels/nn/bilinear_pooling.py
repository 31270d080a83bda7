"""BilinearPooling: B-CNN pooling (vkernels.bilinear_pooling) as a module."""
from __future__ import annotations

import torch

from vkernels.ops.bilinear_pooling import bilinear_pooling

__all__ = ["BilinearPooling"]


class BilinearPooling(torch.nn.Module):
    """out = vkernels.bilinear_pooling(x, y, normalize, triu, eps=eps): (B, C1 C2) or (B, C(C+1)/2) per image.

    Args:
        normalize: None | "signed_sqrt_l2" (B-CNN's signed square root then L2, the usual choice before a linear
            classifier).
        triu: keep only the upper triangle incl. the diagonal (needs y None or C2 == C1).
        eps: the signed square root's epsilon (see vkernels.bilinear_pooling).
    """

    def __init__(self, normalize: str | None = "signed_sqrt_l2", triu: bool = False, eps: float = 1e-10,
                 impl: str = "auto"):
        super().__init__()
        self.normalize, self.triu, self.eps, self.impl = normalize, triu, eps, impl

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return bilinear_pooling(x, y, self.normalize, self.triu, eps=self.eps, impl=self.impl)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize!r}, triu={self.triu}, eps={self.eps:g}"
