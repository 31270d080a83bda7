"""spade_norm_act: SPADE (Park et al. 2019) -- parameter-free batch / instance norm, spatial modulation
norm(x) * (1 + gamma) + beta with per-pixel gamma/beta maps, then activation, gain and clamp -- in one apply pass.

Registration: the schemas live in csrc/ops/spade_norm_act.cpp (`spade_norm_act`, `spade_norm_act_backward`); the
statistics come from `upsample_norm_act_stats` with scale 1. This file adds the fake kernels, autograd (first order:
the fused `spade_norm_act_backward`; its own gradient: `backward_composite`, differentiable PyTorch ops, so double
backward works), the Triton variants and the public function.
"""
from __future__ import annotations

import torch

from vkernels import _backend
from vkernels._dtypes import acc_dtype
from vkernels.ops._norm_act import (NormActOps, StatsOfX, act_grad, add_stats_affine_, check_act, check_like_x,
                                    check_momentum_eps, check_nc, check_raw_x, check_running, check_x, double_backward,
                                    nc4, norm_stats, sum_to, update_running)
from vkernels.ops._layout import empty_in_format
from vkernels.reference.spade_norm_act import spade_norm_act as _reference

__all__ = ["spade_norm_act"]

_backend.register_op("spade_norm_act")
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
    check_x(op, x)
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
    check_momentum_eps(op, momentum, eps)
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
    ops = _ops(impl == "triton")
    args = (act, float(alpha), float(gain), None if clamp is None else float(clamp))
    if norm == "batch" and not training:
        mean, rstd = norm_stats(ops.stats, x, 1, "nearest", norm, running_mean, running_var, training, momentum, eps)
        return ops.apply(x, mean.expand(N, C), rstd.expand(N, C), gamma, beta, *args)
    y, mean, var = StatsOfX.apply(_SpadePlan(ops, N, C, norm == "instance", float(eps), args), x, gamma, beta)
    if norm == "batch":
        update_running(running_mean, running_var, mean, var, x, 1, momentum)
    return y


def _ops(tri):
    """The ops of one implementation (C++ or Triton); the fused training forward is C++ only."""
    v = torch.ops.vkernels
    if tri:
        return NormActOps(v.upsample_norm_act_stats_triton, v.spade_norm_act_triton, v.spade_norm_act_backward_triton)
    return NormActOps(v.upsample_norm_act_stats, v.spade_norm_act, v.spade_norm_act_backward,
                      train=v.spade_norm_act_train if FUSED_TRAIN else None)


# The fused CPU training forward (spade_norm_act_train); False selects the two-op path (stats, rsqrt, apply), kept
# for the GPU backends and as the comparison point of tests and benchmarks.
FUSED_TRAIN = True


class _SpadePlan:
    """StatsOfX plan of spade_norm_act (statistics of x itself: training batch norm, instance norm): params
    (gamma, beta) go to the kernels whole; no upsampling, so the statistics' term is affine in x (mult 1)."""
    n_big = 2

    def __init__(self, ops, N, C, per_sample, eps, args):
        self.ops, self.N, self.C, self.per_sample, self.eps, self.args = ops, N, C, per_sample, eps, args

    def forward(self, x, params, fused=True):
        if fused and self.ops.train is not None and x.device.type == "cpu":
            # One op: the C++ kernel normalises each statistics group while it is still cached (x read from DRAM
            # once); same bits as the two ops below, which stay the differentiable form (double backward).
            return self.ops.train(x, *params, self.per_sample, self.eps, *self.args)
        mean, var = self.ops.stats(x, 1, "nearest", self.per_sample)
        rstd = torch.rsqrt(var + self.eps)
        return self.apply(x, self.coefs(mean, rstd, ()), params), mean, var, rstd

    def coefs(self, mean, rstd, small):
        return mean.expand(self.N, self.C), rstd.expand(self.N, self.C)

    def apply(self, x, coefs, big):
        return self.ops.apply(x, *coefs, *big, *self.args)

    def backward(self, dy, x, mean, rstd, big, small, need):
        dx, dm, dr, dg, db = self.ops.backward(dy, x, *self.coefs(mean, rstd, ()), *big, *self.args,
                                               [need[0], need[0], need[0], need[1], need[2]])
        stats = (sum_to(dm, mean), sum_to(dr, rstd)) if need[0] else (None, None)
        return dx, (dg if need[1] else None, db if need[2] else None), *stats, ()

    def add_stats_(self, dx, x, mean, gmean, gvar):
        N, _, H, W = x.shape
        add_stats_affine_(dx, mean, gmean, gvar, x, H * W * (1 if self.per_sample else N), 1)


def backward_composite(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, mask):
    """(dx, dm, dr, dgamma, dbeta) of spade_norm_act in differentiable torch ops (None where mask is False): the
    reference for the fused `spade_norm_act_backward` and the formula its own (second-order) gradient comes from."""
    ct = m.dtype
    xc = x.to(ct) - nc4(m)
    xn = xc * nc4(r)
    g1 = 1 + gamma.to(ct)
    dz = act_grad(dy.to(ct), xn * g1 + beta.to(ct), act, alpha, gain, clamp)
    dxn = dz * g1
    dx = (dxn * nc4(r)).to(x.dtype) if mask[0] else None
    dm = -(dxn.sum((2, 3)) * r) if mask[1] else None
    dr = (dxn * xc).sum((2, 3)) if mask[2] else None
    dgamma = (dz * xn).to(gamma.dtype) if mask[3] else None
    dbeta = dz.to(beta.dtype) if mask[4] else None
    return dx, dm, dr, dgamma, dbeta


def _register(name: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{name}")
    def _fake(x, m, r, gamma, beta, act, alpha, gain, clamp):
        return empty_in_format(x, x.shape)

    if name == "spade_norm_act":
        @torch.library.register_fake("vkernels::spade_norm_act_train")
        def _fake_train(x, gamma, beta, per_sample, eps, act, alpha, gain, clamp):
            ct = acc_dtype(x.dtype)
            shape = tuple(x.shape[:2]) if per_sample else (x.shape[1],)
            return empty_in_format(x, x.shape), *(x.new_empty(shape, dtype=ct) for _ in range(3))

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, mask):
        nc = tuple(x.shape[:2])
        full = [empty_in_format(x, x.shape) if k else x.new_empty(0) for k in (mask[0], mask[3], mask[4])]
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


def _check_raw(op, x, m, r, gamma, beta):
    check_raw_x(op, x)
    check_nc(op, x, (("mean", m), ("rstd", r)))
    check_like_x(op, x, (("gamma", gamma), ("beta", beta)))


def _triton_launchers():
    """The Triton variants of spade_norm_act and its backward (same schemas). Each checks what the C++ op checks to
    stay in bounds (the tensors' shapes, dtypes, devices), with the C++ wording; rules on the user's arguments (act,
    alpha, gain, clamp, ...) are the public function's, which every backend passes through."""
    def forward(x, m, r, gamma, beta, act, alpha, gain, clamp):
        from vkernels.triton import spade_norm_act as kernels  # on the first call: importing Triton is slow
        _check_raw("spade_norm_act", x, m, r, gamma, beta)
        return kernels.spade(x, m, r, gamma, beta, act, alpha, gain, clamp)

    def backward(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, mask):
        from vkernels.triton import spade_norm_act as kernels
        op = "spade_norm_act_backward"
        _check_raw(op, x, m, r, gamma, beta)
        check_like_x(op, x, (("dy", dy),), x.shape)
        return kernels.spade_backward(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, list(mask))

    return forward, backward


_backend.register_backends(_register, ("spade_norm_act", "spade_norm_act_backward"), _triton_launchers)
