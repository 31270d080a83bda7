"""spade_norm_act: SPADE (Park et al. 2019) -- parameter-free batch / instance norm, spatial modulation
norm(x) * (1 + gamma) + beta with per-pixel gamma/beta maps, then activation, gain and clamp -- in one apply pass.

Registration: the schemas live in csrc/ops/upsample_norm_act.cpp (`spade_norm_act`, `spade_norm_act_backward`); the
statistics come from `upsample_norm_act_stats` with scale 1. This file adds the fake kernels, autograd (first order:
the fused `spade_norm_act_backward`; its own gradient: `backward_composite`, differentiable PyTorch ops, so double
backward works), the Triton variants and the public function.
"""
from __future__ import annotations

import torch

from vkernels import _backend
from vkernels.ops.upsample_norm_act import (_FLOAT_DTYPES, _empty_fmt, _nc4, act_grad, check_act, check_dy, check_nc,
                                           check_running, double_backward, norm_stats)
from vkernels.reference.spade_norm_act import spade_norm_act as _reference

__all__ = ["spade_norm_act"]

_INFO = _backend.register_op("spade_norm_act")
SPADE_NORMS = ("batch", "instance")


def spade_norm_act(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, norm: str = "batch",
                   running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                   training: bool = True, momentum: float = 0.1, eps: float = 1e-5, act: str = "lrelu",
                   alpha: float = 0.2, gain: float = 1.0, clamp: float | None = None,
                   impl: str = "auto") -> torch.Tensor:
    r"""y = clamp(act(norm(x) * (1 + gamma) + beta) * gain, -clamp, clamp), norm without affine parameters.

    The (1 + gamma) convention is SPADE's (NVlabs/SPADE, models/networks/normalization.py: `normalized * (1 +
    gamma) + beta`). Equals F.batch_norm / F.instance_norm -> * (1 + gamma) + beta -> activation -> gain -> clamp.

    Args:
        x: (N, C, H, W) float16/bfloat16/float32/float64, NCHW or channels_last (kept).
        gamma, beta: (N, C, H, W) modulation maps at x's resolution, x's dtype and device, any strides.
        norm: "batch" (statistics per channel over N, H, W) or "instance" (per (n, c) over H, W).
        running_mean, running_var, training, momentum, eps: as in nn.BatchNorm2d (norm="batch" only): updated in
            place when training, required when training=False.
        act, alpha, gain, clamp, impl: as in `vkernels.upsample_norm_act`.

    Returns:
        A tensor of x's shape, dtype and memory format. Differentiable (twice) w.r.t. x, gamma and beta.
        Backward saves x, gamma, beta and per-(n, c) statistics.
    """
    op = "spade_norm_act"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    for name, t in (("gamma", gamma), ("beta", beta)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != x.shape:
            raise ValueError(f"{op}: {name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"{op}: {name}.dtype ({t.dtype}) must equal x.dtype ({x.dtype})")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")
    if norm not in SPADE_NORMS:
        raise ValueError(f"{op}: norm must be one of {', '.join(SPADE_NORMS)}; got {norm!r}")
    check_act(op, act, alpha, gain, clamp)
    for name, val in (("momentum", momentum), ("eps", eps)):
        if not isinstance(val, (int, float)) or val < 0:
            raise ValueError(f"{op}: {name} must be a finite number >= 0, got {val!r}")
    check_running(op, norm, x, running_mean, running_var, training)
    N, C, H, W = x.shape
    if norm == "batch" and training and N * H * W == 1:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got x of shape "
                         f"{tuple(x.shape)}")
    if norm == "instance" and H * W == 1:
        raise ValueError(f"{op}: expected more than 1 spatial element for instance norm, got x of shape "
                         f"{tuple(x.shape)}")
    impl = _backend.resolve_impl(op, x, impl)
    if impl == "reference":
        return _reference(x, gamma, beta, norm, running_mean, running_var, training, momentum, eps, act, alpha,
                          gain, clamp)
    tri = impl == "triton"
    stats_op = torch.ops.vkernels.upsample_norm_act_stats_triton if tri else torch.ops.vkernels.upsample_norm_act_stats
    apply_op = torch.ops.vkernels.spade_norm_act_triton if tri else torch.ops.vkernels.spade_norm_act
    mean, rstd = norm_stats(stats_op, x, 1, "nearest", norm, running_mean, running_var, training, momentum, eps)
    return apply_op(x, mean.expand(N, C), rstd.expand(N, C), gamma, beta, act, float(alpha), float(gain),
                    None if clamp is None else float(clamp))


def backward_composite(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, mask):
    """(dx, dm, dr, dgamma, dbeta) of spade_norm_act in differentiable torch ops (None where mask is False): the
    reference for the fused `spade_norm_act_backward` and the formula its own (second-order) gradient comes from."""
    ct = m.dtype
    xc = x.to(ct) - _nc4(m)
    xn = xc * _nc4(r)
    g1 = 1 + gamma.to(ct)
    dz = act_grad(dy.to(ct), xn * g1 + beta.to(ct), act, alpha, gain, clamp)
    dxn = dz * g1
    dx = (dxn * _nc4(r)).to(x.dtype) if mask[0] else None
    dm = -(dxn.sum((2, 3)) * r) if mask[1] else None
    dr = (dxn * xc).sum((2, 3)) if mask[2] else None
    dgamma = (dz * xn).to(gamma.dtype) if mask[3] else None
    dbeta = dz.to(beta.dtype) if mask[4] else None
    return dx, dm, dr, dgamma, dbeta


def _register(name: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{name}")
    def _fake(x, m, r, gamma, beta, act, alpha, gain, clamp):
        return _empty_fmt(x, x.shape)

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, mask):
        nc = tuple(x.shape[:2])
        full = [_empty_fmt(x, x.shape) if k else x.new_empty(0) for k in (mask[0], mask[3], mask[4])]
        return full[0], *(m.new_empty(nc) if k else m.new_empty(0) for k in mask[1:3]), full[1], full[2]

    def setup(ctx, inputs, output):
        x, m, r, gamma, beta, act, alpha, gain, clamp = inputs
        ctx.args = (act, alpha, gain, clamp)
        ctx.save_for_backward(x, m, r, gamma, beta)

    def backward(ctx, dy):
        need = list(ctx.needs_input_grad[:5])
        outs = bwd_op(dy, *ctx.saved_tensors, *ctx.args, need)
        return *(o if k else None for o, k in zip(outs, need)), None, None, None, None

    def setup_bwd(ctx, inputs, output):
        dy, x, m, r, gamma, beta, *args, mask = inputs
        ctx.args = (*args, list(mask))
        ctx.save_for_backward(dy, x, m, r, gamma, beta)

    def backward_bwd(ctx, *gouts):
        grads = double_backward(backward_composite, ctx.saved_tensors, ctx.args, gouts, ctx.needs_input_grad[:6])
        return *grads, None, None, None, None, None

    torch.library.register_autograd(f"vkernels::{bwd}", backward_bwd, setup_context=setup_bwd)
    torch.library.register_autograd(f"vkernels::{name}", backward, setup_context=setup)


def _define_triton() -> None:
    def fwd(x, m, r, gamma, beta, act, alpha, gain, clamp):
        from vkernels.triton import upsample_norm_act as tk
        op = "spade_norm_act"
        if x.ndim != 4 or x.dtype not in _FLOAT_DTYPES:
            raise RuntimeError(f"{op}: x must be a 4-D float tensor, got shape {tuple(x.shape)}, dtype {x.dtype}")
        for name, t in (("gamma", gamma), ("beta", beta)):
            if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
                raise RuntimeError(f"{op}: {name} must match x's shape, dtype and device")
        check_act(op, act, alpha, gain, clamp)
        check_nc(op, x, (("mean", m), ("rstd", r)))
        return tk.spade(x, m, r, gamma, beta, act, alpha, gain, clamp)

    def bwd(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, mask):
        from vkernels.triton import norm_act_backward as tb
        op = "spade_norm_act_backward"
        if x.ndim != 4 or x.dtype not in _FLOAT_DTYPES:
            raise RuntimeError(f"{op}: x must be a 4-D float tensor, got shape {tuple(x.shape)}, dtype {x.dtype}")
        for name, t in (("gamma", gamma), ("beta", beta)):
            if t.shape != x.shape or t.dtype != x.dtype or t.device != x.device:
                raise RuntimeError(f"{op}: {name} must match x's shape, dtype and device")
        check_dy(op, dy, x, x.shape)
        check_act(op, act, alpha, gain, clamp)
        check_nc(op, x, (("mean", m), ("rstd", r)))
        return tb.spade_backward(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, list(mask))

    _backend.define_triton_variant("spade_norm_act", fwd)
    _backend.define_triton_variant("spade_norm_act_backward", bwd)


if _backend.has_op("spade_norm_act"):
    _register("spade_norm_act", "spade_norm_act_backward")
    if _backend.HAS_TRITON:
        _define_triton()
        _register("spade_norm_act_triton", "spade_norm_act_backward_triton")
