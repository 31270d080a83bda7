"""Argument checks that several public functions make with the same wording (tests match on the messages).

Not an op module: it exports nothing (vkernels.ops imports every module of the package and copies its __all__)."""
from __future__ import annotations

import math
import numbers

import torch

from vkernels._dtypes import FLOAT_DTYPES
from vkernels.reference.bias_act import ACTIVATIONS

__all__: list[str] = []


def check_tensors(op: str, **tensors) -> None:
    """TypeError naming the first argument (in the order given) that is not a tensor."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_float_tensor(op: str, name: str, t) -> None:
    """t (the argument `name`) a tensor of a floating dtype the kernels take."""
    check_tensors(op, **{name: t})
    check_float_dtype(op, name, t)


def check_float_dtype(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_float_pair(op: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """x a floating tensor the kernels take; y (named y) in x's dtype."""
    check_float_dtype(op, "x", x)
    check_same_dtype(op, x, y=y)


def check_same_dtype(op: str, x: torch.Tensor, **tensors) -> None:
    """TypeError naming the first tensor (in the order given) whose dtype is not x's."""
    for name, t in tensors.items():
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name}.dtype ({t.dtype}) must equal x.dtype ({x.dtype})")


def check_devices(op: str, x: torch.Tensor, **tensors) -> None:
    """ValueError naming the first tensor (in the order given) that is not on x's device."""
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def check_act_args(op: str, act, alpha, gain, clamp) -> None:
    """The activation arguments of bias_act's convention (act a name in ACTIVATIONS; alpha, gain finite or None for
    the act's default; clamp None or >= 0)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
    for name, val in (("alpha", alpha), ("gain", gain)):
        if val is not None and (not isinstance(val, numbers.Real) or not math.isfinite(val)):
            raise ValueError(f"{op}: {name} must be a finite number or None, got {val!r}")
    if clamp is not None and (not isinstance(clamp, numbers.Real) or not clamp >= 0):
        raise ValueError(f"{op}: clamp must be None or a number >= 0, got {clamp!r}")


def is_int(v) -> bool:
    """An integer that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def parse_padding(padding) -> tuple[int, int, int, int]:
    """upfirdn2d's padding argument (an int, (px, py) or (x0, x1, y0, y1)) as (x0, x1, y0, y1)."""
    if is_int(padding):
        padding = (padding, padding)
    if not isinstance(padding, (list, tuple)) or len(padding) not in (2, 4) or not all(is_int(v) for v in padding):
        raise ValueError(f"upfirdn2d: padding must be an int, (px, py) or (x0, x1, y0, y1) of ints, got {padding!r}")
    if len(padding) == 2:
        padding = (padding[0], padding[0], padding[1], padding[1])
    return tuple(int(v) for v in padding)
