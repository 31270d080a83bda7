"""The output memory-format rule every kernel follows (channels_last in, channels_last out; otherwise contiguous),
for the fake kernels and Python launchers that allocate outputs the way the C++ kernels do.

Not an op module: it exports nothing (vkernels.ops imports every module of the package and copies its __all__).
"""
from __future__ import annotations

import torch

__all__: list[str] = []


def out_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last (5-D x: channels_last_3d) when x is stored so (and not also contiguous), else
    contiguous_format."""
    cl = torch.channels_last_3d if x.ndim == 5 else torch.channels_last
    if not x.is_contiguous() and x.is_contiguous(memory_format=cl):
        return cl
    return torch.contiguous_format


def empty_in_format(x: torch.Tensor, shape) -> torch.Tensor:
    """An empty tensor of `shape` in x's dtype, device and memory format (see out_format)."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=out_format(x))
