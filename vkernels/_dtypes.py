"""The dtype rules every layer shares: which float dtypes the kernels take, and the type they accumulate in.

Not an op: vkernels.ops, vkernels.nn and vkernels.reference import it; it imports nothing of vkernels.
"""
from __future__ import annotations

import torch

# The floating dtypes every kernel accepts for its tensor inputs (C++, CUDA, Triton and the reference alike).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels accumulate in (and return statistics in) for inputs of `dtype`: float64 for float64, float32
    for everything else (the half types round too coarsely to sum in, and float32 suffices for float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
