"""RandomMaclaurinPooling: Random Maclaurin bilinear pooling with fixed Rademacher projections as buffers."""
from __future__ import annotations

import torch

from vkernels.ops.random_maclaurin_pooling import random_maclaurin_pooling

__all__ = ["RandomMaclaurinPooling"]


class RandomMaclaurinPooling(torch.nn.Module):
    """out = vkernels.random_maclaurin_pooling(x, y, w1, w2, sum_pool) with w1 (D, C1), w2 (D, C2) drawn once
    from {+1, -1} (Rademacher, as in Gao et al.) and kept as buffers (state_dict, .to()). forward(x, y=None): y
    defaults to x. seed: a private generator (None: torch's global RNG). route, impl, save_projections: as in the
    function (save_projections=None keeps the project route's W1 X, W2 Y for the backward within the memory cap of
    vkernels.ops.random_maclaurin_pooling.saves_projections; False always recomputes them; an attribute, so it can be
    changed on a built module).

    Scale: out = phi / sqrt(D) summed over locations (not averaged over HW), as Gao et al.'s Random Maclaurin map;
    ports that average over locations differ by a factor 1 / (H W)."""

    def __init__(self, input_dim1: int, input_dim2: int, output_dim: int, sum_pool: bool = True,
                 seed: int | None = None, route: str = "auto", impl: str = "auto",
                 save_projections: bool | None = None):
        super().__init__()
        for name, v in (("input_dim1", input_dim1), ("input_dim2", input_dim2), ("output_dim", output_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"RandomMaclaurinPooling: {name} must be an int >= 1, got {v!r}")
        self.input_dim1, self.input_dim2, self.output_dim = input_dim1, input_dim2, output_dim
        self.sum_pool, self.route, self.impl = sum_pool, route, impl
        self.save_projections = save_projections
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        self.register_buffer("w1", (2 * torch.randint(0, 2, (output_dim, input_dim1), generator=gen) - 1).float())
        self.register_buffer("w2", (2 * torch.randint(0, 2, (output_dim, input_dim2), generator=gen) - 1).float())

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return random_maclaurin_pooling(x, x if y is None else y, self.w1, self.w2, self.sum_pool, self.route,
                                        impl=self.impl, save_projections=self.save_projections)

    def extra_repr(self) -> str:
        return (f"input_dim1={self.input_dim1}, input_dim2={self.input_dim2}, output_dim={self.output_dim}, "
                f"sum_pool={self.sum_pool}, route={self.route!r}")
