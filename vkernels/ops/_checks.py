"""Argument checks that several public functions make with the same wording (tests match on the messages).

Not an op module: it exports nothing (vkernels.ops imports every module of the package and copies its __all__)."""
from __future__ import annotations

import torch

__all__: list[str] = []

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensors(op: str, **tensors) -> None:
    """TypeError naming the first argument (in the order given) that is not a tensor."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_float_pair(op: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """x a floating tensor the kernels take; y (named y) in x's dtype."""
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if y.dtype != x.dtype:
        raise TypeError(f"{op}: y.dtype ({y.dtype}) must equal x.dtype ({x.dtype})")


def check_devices(op: str, x: torch.Tensor, **tensors) -> None:
    """ValueError naming the first tensor (in the order given) that is not on x's device."""
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
