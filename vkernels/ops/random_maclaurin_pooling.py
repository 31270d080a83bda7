"""random_maclaurin_pooling: Random Maclaurin bilinear pooling (Gao et al., CVPR 2016), by the cheaper of two
GEMM routes.

No custom kernel: both routes are GEMMs plus one multiply-and-row-sum, which torch already runs at GEMM speed, so
this op is a composite of torch ops (autograd, torch.compile and every device come with it).
"""
from __future__ import annotations

import math

import torch

__all__ = ["random_maclaurin_pooling"]

_NAME = "random_maclaurin_pooling"
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ROUTES = ("auto", "gram", "project")


def random_maclaurin_pooling(x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                             sum_pool: bool = True, route: str = "auto") -> torch.Tensor:
    r"""out[b, d] = (1 / sqrt(D)) sum_l (w1_d . x_l)(w2_d . y_l): degree-2 Random Maclaurin features of x_l (x) y_l.

    With Rademacher (+1/-1) rows w1_d, w2_d, <phi(a, b), phi(c, e)> is an unbiased estimate of <a, c><b, e> (the
    1/sqrt(D) makes the estimate an average over the D features; Gao et al. write the same map with this factor).

    Routes for sum_pool=True (results agree to rounding; "auto" picks by the FLOP count of each):
      "gram":    G_b = X_b Y_b^T, out[b, d] = w1_d^T G_b w2_d = rowsum((W1 G_b) * W2): 2 HW C1 C2 + 2 D C1 C2 FLOPs.
      "project": P1 = W1 X_b, P2 = W2 Y_b, out = rowsum(P1 * P2): 2 HW D (C1 + C2) FLOPs, and B D HW memory.
    sum_pool=False always projects (the per-location output is (B, D, H, W) anyway).

    Args:
        x: (B, C1, H, W) float16/bfloat16/float32/float64; y: (B, C2, H, W), same dtype/device/B/H/W (may be x).
        w1: (D, C1), w2: (D, C2) projections (any float dtype; used in fp32, fp64 for fp64 inputs).
        sum_pool: sum over locations -> (B, D); else (B, D, H, W).
        route: "auto" | "gram" | "project".

    Returns: x's dtype, computed in fp32 (fp64 for fp64). Differentiable w.r.t. x, y, w1 and w2.
    """
    _check(x, y, w1, w2, route)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    D, C1, C2 = w1.shape[0], x.shape[1], y.shape[1]
    HW = x.shape[2] * x.shape[3]
    W1, W2 = w1.to(acc), w2.to(acc)
    X, Y = x.to(acc).flatten(2), y.to(acc).flatten(2)
    scale = 1.0 / math.sqrt(D)
    if not sum_pool:
        out = torch.matmul(W1, X) * torch.matmul(W2, Y) * scale
        return out.reshape(x.shape[0], D, x.shape[2], x.shape[3]).to(x.dtype)
    if route == "auto":
        route = "gram" if choose_gram(HW, C1, C2, D) else "project"
    if route == "gram":
        G = torch.bmm(X, Y.transpose(1, 2))  # (B, C1, C2)
        out = (torch.matmul(W1, G) * W2).sum(-1)  # (B, D, C2) -> (B, D)
    else:
        out = (torch.matmul(W1, X) * torch.matmul(W2, Y)).sum(-1)  # (B, D, HW) -> (B, D)
    return (out * scale).to(x.dtype)


def choose_gram(HW: int, C1: int, C2: int, D: int) -> bool:
    """The Gram route when its FLOPs, HW C1 C2 + D C1 C2, are below the projection's, HW D (C1 + C2)."""
    return (HW + D) * C1 * C2 < HW * D * (C1 + C2)


def _check(x, y, w1, w2, route):
    for name, t in (("x", x), ("y", y), ("w1", w1), ("w2", w2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_NAME}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{_NAME}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if y.dtype != x.dtype:
        raise TypeError(f"{_NAME}: y.dtype ({y.dtype}) must equal x.dtype ({x.dtype})")
    for name, w in (("w1", w1), ("w2", w2)):
        if w.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{_NAME}: {name} must be a float tensor, got {w.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{_NAME}: x must have shape (B, C1, H, W), got {tuple(x.shape)}")
    if y.ndim != 4 or (y.shape[0], y.shape[2], y.shape[3]) != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(f"{_NAME}: y must have shape (B, C2, H, W) with x's (B, H, W) = "
                         f"{(x.shape[0], x.shape[2], x.shape[3])}, got {tuple(y.shape)}")
    if w1.ndim != 2 or w1.shape[1] != x.shape[1] or w1.shape[0] < 1:
        raise ValueError(f"{_NAME}: w1 must have shape (D, {x.shape[1]}) with D >= 1, got {tuple(w1.shape)}")
    if w2.ndim != 2 or w2.shape != (w1.shape[0], y.shape[1]):
        raise ValueError(f"{_NAME}: w2 must have shape ({w1.shape[0]}, {y.shape[1]}) (D from w1, C2 from y), got "
                         f"{tuple(w2.shape)}")
    for name, t in (("y", y), ("w1", w1), ("w2", w2)):
        if t.device != x.device:
            raise ValueError(f"{_NAME}: {name} is on {t.device} but x is on {x.device}")
    if route not in _ROUTES:
        raise ValueError(f"{_NAME}: route must be one of {', '.join(_ROUTES)}; got {route!r}")
