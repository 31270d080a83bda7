"""upsample_norm_act: upsample -> batch / instance / adaptive-instance norm -> affine -> activation -> gain -> clamp,
in two kernel passes over the low-resolution input and one write of the output.

Registration: the schemas live in csrc/ops/upsample_norm_act.cpp. Two ops do the work (see ops/upsample_norm_act.h):
`upsample_norm_act_stats` (mean/var of the upsampled values, never writing them) and `upsample_norm_act` (the fused
apply). This file adds their fake kernels, autograd, Triton variants, and the public function, which turns norm,
running statistics and the affine convention into the per-(n, c) (mean, a, b) the apply kernel takes.

Backward: both ops save only x and per-(n, c) vectors (never the upsampled tensor). First order runs fused kernels
(`upsample_norm_act_backward`, `upsample_norm_act_stats_backward`: C++ in
csrc/ops/cpu/upsample_norm_act_backward_kernel.cpp, Triton in vkernels/triton/upsample_norm_act_backward.py) that
recompute the upsampled values from x on the fly. Those backward ops have their own autograd, whose formulas are the
differentiable composites below (`apply_backward_composite`, `stats_backward_composite`: upsampled values recomputed
transiently, the activation's derivative from bias_act's grad kernel), so double backward (gradgradcheck, R1) works
through them; the composites are also the tests' oracle. The one-node training autograd (StatsOfX), the
running-statistics update and the checks spade_norm_act shares with this op live in ops/_norm_act.py.
"""
from __future__ import annotations

import math
import numbers

import torch

from vkernels import _backend
from vkernels._dtypes import acc_dtype
from vkernels.ops._norm_act import (NormActOps, StatsOfX, act_grad, add_stats_affine_, check_act, check_like_x,
                                    check_momentum_eps, check_nc, check_param, check_raw_x, check_running,
                                    check_vectors, check_x, double_backward, ncv, norm_stats, sum_to, update_running)
from vkernels.ops._layout import empty_in_format
from vkernels.reference.upsample_norm_act import MODES, MODES_BY_NDIM, NORMS, combine_affine, upsample
from vkernels.reference.upsample_norm_act import upsample_norm_act as _reference

__all__ = ["upsample_norm_act"]

_backend.register_op("upsample_norm_act")


def upsample_norm_act(x: torch.Tensor, scale: int = 2, mode: str = "nearest", norm: str = "batch",
                      weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                      style_scale: torch.Tensor | None = None, style_bias: torch.Tensor | None = None,
                      running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                      training: bool = True, momentum: float = 0.1, eps: float = 1e-5, act: str = "lrelu",
                      alpha: float = 0.2, gain: float = 1.0, clamp: float | None = None,
                      impl: str = "auto") -> torch.Tensor:
    r"""y = clamp(act(norm(up(x)) * s + t) * gain, -clamp, clamp) with s = weight[c] * style_scale[n, c] and
    t = bias[c] + style_bias[n, c] (a missing term counts as 1 for s, 0 for t).

    Equals F.interpolate -> F.batch_norm / F.instance_norm (no affine) -> * s + t -> activation -> * gain -> clamp.

    Args:
        x: (N, C, H, W) or (N, C, D, H, W) float16/bfloat16/float32/float64; NCHW / NCDHW or channels_last /
            channels_last_3d (kept), other strides are read as is.
        scale: integer upsampling factor >= 1 (1 = no upsampling), applied to every spatial dimension (D, H, W).
        mode: "nearest" or, with align_corners=False as F.interpolate, "bilinear" (4-D x) / "trilinear" (5-D x).
        norm: "batch" (statistics per channel over N and the spatial dims), "instance" (per (n, c) over the spatial
            dims), "adain" (instance norm that requires style_scale and style_bias) or "none".
        weight, bias: optional per-channel affine, shape (C,), any float dtype on x's device.
        style_scale, style_bias: optional per-sample affine, shape (N, C) (AdaIN, conditional batch norm). The op
            multiplies by style_scale as given: modules that predict a residual scale pass 1 + delta themselves.
        running_mean, running_var: (C,) buffers for norm="batch", updated in place when training exactly as
            nn.BatchNorm2d / nn.BatchNorm3d do (running_var from the unbiased variance); required when training=False.
        training: batch statistics (True) or running statistics (False); only norm="batch" looks at it.
        momentum, eps: as in nn.BatchNorm2d.
        act, alpha: bias_act's activations ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus",
            "swish"); alpha is lrelu's slope.
        gain: output multiplier (1 by default here, unlike bias_act's sqrt(2) for lrelu).
        clamp: clamp the output to [-clamp, clamp]; None disables it.
        impl: "auto" | "cpu" | "cuda" | "triton" | "reference"; see `vkernels.resolve_impl`.

    Returns:
        (N, C, H*scale, W*scale) or (N, C, D*scale, H*scale, W*scale) in x's dtype and memory format (channels_last
        / channels_last_3d kept). Differentiable (twice) w.r.t.
        x, weight, bias, style_scale and style_bias. Backward saves x and per-(n, c) vectors only.
    """
    _check(x, scale, mode, norm, weight, bias, style_scale, style_bias, running_mean, running_var, training,
           momentum, eps, act, alpha, gain, clamp)
    impl = _backend.resolve_impl("upsample_norm_act", x, impl)
    if impl == "reference":
        return _reference(x, scale, mode, norm, weight, bias, style_scale, style_bias, running_mean, running_var,
                          training, momentum, eps, act, alpha, gain, clamp)
    ops = _ops(impl == "triton")
    N, C = x.shape[:2]
    if norm != "none" and (norm != "batch" or training):
        # Statistics of x itself: one autograd node (see StatsOfX), so the backward holds one x-sized dx.
        plan = _UpsamplePlan(ops, N, C, int(scale), mode, norm != "batch", float(eps),
                             (act, float(alpha), float(gain), None if clamp is None else float(clamp)))
        y, mean, var = StatsOfX.apply(plan, x, weight, bias, style_scale, style_bias)
        if norm == "batch":
            update_running(running_mean, running_var, mean, var, x, scale, momentum)
        return y
    ct = acc_dtype(x.dtype)
    mean, rstd = norm_stats(ops.stats, x, scale, mode, norm, running_mean, running_var, training, momentum, eps)
    s, t = combine_affine(weight, bias, style_scale, style_bias)
    a = rstd if s is None else (s.to(ct) if rstd is None else rstd * s.to(ct))
    a = torch.ones((), dtype=ct, device=x.device) if a is None else a
    b = torch.zeros((), dtype=ct, device=x.device) if t is None else t.to(ct)
    mean = torch.zeros((), dtype=ct, device=x.device) if mean is None else mean
    return ops.apply(x, mean.expand(N, C), a.expand(N, C), b.expand(N, C), int(scale), mode, act, float(alpha),
                    float(gain), None if clamp is None else float(clamp))


def _ops(tri):
    """The ops of one implementation (C++ or Triton)."""
    names = ("upsample_norm_act_stats", "upsample_norm_act", "upsample_norm_act_backward",
             "upsample_norm_act_stats_backward")
    return NormActOps(*(getattr(torch.ops.vkernels, n + ("_triton" if tri else "")) for n in names))


class _UpsamplePlan:
    """StatsOfX plan of upsample_norm_act: params (weight, bias, style_scale, style_bias), all small."""
    n_big = 0

    def __init__(self, ops, N, C, scale, mode, per_sample, eps, args):
        self.ops, self.N, self.C, self.scale, self.mode, self.per_sample, self.eps, self.args = (
            ops, N, C, scale, mode, per_sample, eps, args)

    def forward(self, x, params, fused=True):  # no fused form: always the two ops
        mean, var = self.ops.stats(x, self.scale, self.mode, self.per_sample)
        rstd = torch.rsqrt(var + self.eps)
        return self.apply(x, self.coefs(mean, rstd, params), ()), mean, var, rstd

    def coefs(self, mean, rstd, small):
        s, t = combine_affine(*small)
        N, C = self.N, self.C
        a = rstd if s is None else rstd * s.to(rstd.dtype)
        b = torch.zeros((), dtype=rstd.dtype, device=rstd.device) if t is None else t.to(rstd.dtype)
        return mean.expand(N, C), a.expand(N, C), b.expand(N, C)

    def apply(self, x, coefs, big):
        return self.ops.apply(x, *coefs, self.scale, self.mode, *self.args)

    def backward(self, dy, x, mean, rstd, big, small, need):
        weight, bias, ss, sb = small
        need_s = need[1] or need[3]
        need_t = need[2] or need[4]
        coefs = self.coefs(mean, rstd, small)
        dx, dm, da, db = self.ops.backward(dy, x, *coefs, self.scale, self.mode, *self.args,
                                           [need[0], need[0], need[0] or need_s, need_t])
        gmean = grstd = None
        s, _ = combine_affine(weight, None, ss, None)
        if need[0]:
            gmean = sum_to(dm, mean)
            grstd = sum_to(da if s is None else da * s.to(da.dtype), rstd)
        gs = da * rstd.expand(self.N, self.C) if need_s else None  # d loss / d s, s = weight * style_scale
        gw = gss = gb = gsb = None
        if need[1]:
            gw = (gs if ss is None else gs * ss.to(gs.dtype)).sum(0).to(weight.dtype)
        if need[3]:
            gss = (gs if weight is None else gs * weight.to(gs.dtype)).to(ss.dtype)
        if need[2]:
            gb = db.sum(0).to(bias.dtype)
        if need[4]:
            gsb = db.to(sb.dtype)
        return dx, (), gmean, grstd, (gw, gb, gss, gsb)

    def add_stats_(self, dx, x, mean, gmean, gvar):
        N = x.shape[0]
        s = self.scale
        if s == 1 or self.mode == "nearest":
            if x.ndim == 4:
                H, W = x.shape[2:]
                K, mult = H * W * s * s * (1 if self.per_sample else N), s * s
            else:
                K, mult = math.prod(x.shape[2:]) * s ** 3 * (1 if self.per_sample else N), s ** 3
            add_stats_affine_(dx, mean, gmean, gvar, x, K, mult)
        else:
            # Bilinear / trilinear: A^T up(x) is a stencil of x, not pointwise; the stats backward kernel applies it
            # (one x-sized temporary, freed at once).
            dx.add_(self.ops.stats_backward(gmean, gvar, x, mean, s, self.mode, self.per_sample))


def _check(x, scale, mode, norm, weight, bias, style_scale, style_bias, running_mean, running_var, training,
           momentum, eps, act, alpha, gain, clamp, op="upsample_norm_act"):
    check_x(op, x, volumes=True)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Integral) or scale < 1:
        raise ValueError(f"{op}: scale must be an integer >= 1, got {scale!r}")
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode not in MODES_BY_NDIM[x.ndim]:
        raise ValueError(f"{op}: mode {mode!r} needs {'5' if mode == 'trilinear' else '4'}-D x; for "
                         f"{x.ndim}-D x of shape {tuple(x.shape)} mode must be one of "
                         f"{', '.join(MODES_BY_NDIM[x.ndim])}")
    if norm not in NORMS:
        raise ValueError(f"{op}: norm must be one of {', '.join(NORMS)}; got {norm!r}")
    check_act(op, act, alpha, gain, clamp)
    check_momentum_eps(op, momentum, eps)
    N, C = x.shape[:2]
    for name, v, shape in (("weight", weight, (C,)), ("bias", bias, (C,)), ("style_scale", style_scale, (N, C)),
                           ("style_bias", style_bias, (N, C))):
        check_param(op, name, v, shape, x)
    if norm == "adain" and (style_scale is None or style_bias is None):
        raise ValueError(f"{op}: norm='adain' needs style_scale and style_bias of shape ({N}, {C})")
    check_running(op, norm, x, running_mean, running_var, training)
    out = [d * scale for d in x.shape[2:]]
    spatial = math.prod(out)
    out_text = "x".join(map(str, out))
    # The errors F.batch_norm / F.instance_norm raise for the same input.
    if norm == "batch" and training and N * spatial == 1:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got x of shape "
                         f"{tuple(x.shape)} (upsampled to {out_text})")
    if norm in ("instance", "adain") and spatial == 1:
        raise ValueError(f"{op}: expected more than 1 spatial element for instance norm, got x of shape "
                         f"{tuple(x.shape)} (upsampled to {out_text})")


# --------------------------------------------------------------------------------------------------------------------
# autograd: formulas in differentiable torch ops (so they have their own gradients)
# --------------------------------------------------------------------------------------------------------------------
def upsample_adjoint(du, scale, mode, *sizes):
    """Transpose of `upsample` (d up(x) -> d x); sizes: x's spatial sizes (H, W) or (D, H, W)."""
    if scale == 1:
        return du
    N, C = du.shape[:2]
    if mode == "nearest":
        split = [v for d in sizes for v in (d, scale)]
        return du.reshape(N, C, *split).sum(tuple(range(3, 3 + 2 * len(sizes), 2)))
    for k, size in enumerate(sizes):
        du = _linear_adjoint_1d(du, 2 + k, size, scale)
    return du


def _linear_adjoint_1d(g, dim, size, s):
    # Transpose of 1-D linear interpolation (align_corners=False) by an integer factor along `dim`, as two
    # index_adds: differentiable (so double backward works) and shape-polymorphic (aten's
    # upsample_bilinear2d_backward fails under dynamic-shape tracing).
    o = torch.arange(size * s, device=g.device, dtype=g.dtype)
    src = ((o + 0.5) / s - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(size - 1)
    l1 = (src - i0).clamp(0, 1)
    i1 = (i0 + 1).clamp_max(size - 1)
    view = [1] * g.ndim
    view[dim] = -1
    l1 = l1.reshape(view)
    shape = list(g.shape)
    shape[dim] = size
    out = g.new_zeros(shape)
    return out.index_add(dim, i0, g * (1 - l1)).index_add(dim, i1, g * l1)


def apply_backward_composite(dy, x, m, a, b, scale, mode, act, alpha, gain, clamp, mask):
    """(dx, dm, da, db) of upsample_norm_act in differentiable torch ops (None where mask is False): the reference
    for the fused `upsample_norm_act_backward` and the formula its own (second-order) gradient comes from."""
    nd = x.ndim
    sp = tuple(range(2, nd))
    xc = upsample(x.to(m.dtype), scale, mode) - ncv(m, nd)
    dz = act_grad(dy.to(m.dtype), xc * ncv(a, nd) + ncv(b, nd), act, alpha, gain, clamp)
    dx = upsample_adjoint(dz * ncv(a, nd), scale, mode, *x.shape[2:]).to(x.dtype) if mask[0] else None
    db = dz.sum(sp) if mask[3] or mask[1] else None
    dm = -(db * a) if mask[1] else None
    da = (dz * xc).sum(sp) if mask[2] else None
    return dx, dm, da, db if mask[3] else None


def stats_backward_composite(gmean, gvar, x, mean, scale, mode, per_sample):
    """dx of upsample_norm_act_stats given the gradients of (mean, var), in differentiable torch ops; `mean` is the
    op's mean output (its own dependence on x reaches x through its graph, not through this formula)."""
    ct = mean.dtype
    N, C = x.shape[:2]
    nd = x.ndim
    u = upsample(x.to(ct), scale, mode)
    K = u.numel() // (N * C if per_sample else C)
    view = (lambda v: ncv(v, nd)) if per_sample else (lambda v: v.reshape((1, -1) + (1,) * (nd - 2)))
    du = view(gmean) / K + view(gvar) * (2.0 / K) * (u - view(mean))
    return upsample_adjoint(du, scale, mode, *x.shape[2:]).to(x.dtype)


def _register(stats: str, apply: str, stats_bwd: str, apply_bwd: str) -> None:
    stats_bwd_op = getattr(torch.ops.vkernels, stats_bwd).default
    apply_bwd_op = getattr(torch.ops.vkernels, apply_bwd).default

    @torch.library.register_fake(f"vkernels::{stats}")
    def _fake_stats(x, scale, mode, per_sample):
        ct = acc_dtype(x.dtype)
        shape = tuple(x.shape[:2]) if per_sample else (x.shape[1],)
        return x.new_empty(shape, dtype=ct), x.new_empty(shape, dtype=ct)

    @torch.library.register_fake(f"vkernels::{apply}")
    def _fake_apply(x, m, a, b, scale, mode, act, alpha, gain, clamp):
        return empty_in_format(x, (*x.shape[:2], *(d * scale for d in x.shape[2:])))

    @torch.library.register_fake(f"vkernels::{stats_bwd}")
    def _fake_stats_bwd(gmean, gvar, x, mean, scale, mode, per_sample):
        return empty_in_format(x, x.shape)

    @torch.library.register_fake(f"vkernels::{apply_bwd}")
    def _fake_apply_bwd(dy, x, m, a, b, scale, mode, act, alpha, gain, clamp, mask):
        nc = tuple(x.shape[:2])
        return (empty_in_format(x, x.shape) if mask[0] else x.new_empty(0),
                *(m.new_empty(nc) if k else m.new_empty(0) for k in mask[1:]))

    def setup_stats(ctx, inputs, output):
        x, scale, mode, per_sample = inputs
        ctx.args = (scale, mode, per_sample)
        ctx.save_for_backward(x, output[0])

    def backward_stats(ctx, gmean, gvar):
        x, mean = ctx.saved_tensors
        gmean = torch.zeros_like(mean) if gmean is None else gmean
        gvar = torch.zeros_like(mean) if gvar is None else gvar
        return stats_bwd_op(gmean, gvar, x, mean, *ctx.args), None, None, None

    def setup_stats_bwd(ctx, inputs, output):
        gmean, gvar, x, mean, scale, mode, per_sample = inputs
        ctx.args = (scale, mode, per_sample)
        ctx.save_for_backward(gmean, gvar, x, mean)

    def backward_stats_bwd(ctx, gdx):
        grads = double_backward(lambda *a: (stats_backward_composite(*a),), ctx.saved_tensors, ctx.args, (gdx,),
                                ctx.needs_input_grad[:4])
        return *grads, None, None, None

    def setup_apply(ctx, inputs, output):
        x, m, a, b, scale, mode, act, alpha, gain, clamp = inputs
        ctx.args = (scale, mode, act, alpha, gain, clamp)
        ctx.save_for_backward(x, m, a, b)

    def backward_apply(ctx, dy):
        x, m, a, b = ctx.saved_tensors
        need = list(ctx.needs_input_grad[:4])
        outs = apply_bwd_op(dy, x, m, a, b, *ctx.args, need)
        return *(o if n else None for o, n in zip(outs, need)), None, None, None, None, None, None

    def setup_apply_bwd(ctx, inputs, output):
        dy, x, m, a, b, *args, mask = inputs
        ctx.args = (*args, list(mask))
        ctx.save_for_backward(dy, x, m, a, b)

    def backward_apply_bwd(ctx, *gouts):
        grads = double_backward(apply_backward_composite, ctx.saved_tensors, ctx.args, gouts,
                                ctx.needs_input_grad[:5])
        return *grads, None, None, None, None, None, None, None

    torch.library.register_autograd(f"vkernels::{stats_bwd}", backward_stats_bwd, setup_context=setup_stats_bwd)
    torch.library.register_autograd(f"vkernels::{apply_bwd}", backward_apply_bwd, setup_context=setup_apply_bwd)
    torch.library.register_autograd(f"vkernels::{stats}", backward_stats, setup_context=setup_stats)
    torch.library.register_autograd(f"vkernels::{apply}", backward_apply, setup_context=setup_apply)


def _triton_launchers():
    """The Triton variants of the four ops (same schemas). Each checks what the C++ op checks to stay in bounds (the
    tensors' shapes, dtypes, devices; scale, mode), with the C++ wording; rules on the user's arguments (act, alpha,
    gain, clamp, ...) are the public function's, which every backend passes through."""
    def stats(x, scale, mode, per_sample):
        from vkernels.triton import upsample_norm_act as kernels  # on the first call: importing Triton is slow
        _check_raw("upsample_norm_act_stats", x, scale, mode)
        return kernels.stats(x, scale, mode, per_sample)

    def apply(x, m, a, b, scale, mode, act, alpha, gain, clamp):
        from vkernels.triton import upsample_norm_act as kernels
        _check_raw("upsample_norm_act", x, scale, mode)
        check_nc("upsample_norm_act", x, (("mean", m), ("a", a), ("b", b)))
        return kernels.apply(x, m, a, b, scale, mode, act, alpha, gain, clamp)

    def stats_bwd(gmean, gvar, x, mean, scale, mode, per_sample):
        from vkernels.triton import upsample_norm_act_backward as backward_kernels
        op = "upsample_norm_act_stats_backward"
        _check_raw(op, x, scale, mode)
        shape = tuple(x.shape[:2]) if per_sample else (x.shape[1],)
        check_vectors(op, x, shape, f"{list(shape)} (per_sample={per_sample})",
                      (("gmean", gmean), ("gvar", gvar), ("mean", mean)))
        return backward_kernels.stats_backward(gmean, gvar, x, mean, scale, mode, per_sample)

    def apply_bwd(dy, x, m, a, b, scale, mode, act, alpha, gain, clamp, mask):
        from vkernels.triton import upsample_norm_act_backward as backward_kernels
        op = "upsample_norm_act_backward"
        _check_raw(op, x, scale, mode)
        check_nc(op, x, (("mean", m), ("a", a), ("b", b)))
        check_like_x(op, x, (("dy", dy),), (*x.shape[:2], *(d * scale for d in x.shape[2:])))
        return backward_kernels.apply_backward(dy, x, m, a, b, scale, mode, act, alpha, gain, clamp, list(mask))

    return stats, apply, stats_bwd, apply_bwd


def _check_raw(op, x, scale, mode):
    check_raw_x(op, x, volumes=True)
    if scale < 1:
        raise RuntimeError(f"{op}: scale must be an integer >= 1, got {scale}")
    if x.ndim == 5 and mode not in MODES_BY_NDIM[5]:
        raise RuntimeError(f"{op}: mode must be 'nearest' or 'trilinear' for 5-D x, got '{mode}'")
    if x.ndim == 4 and mode not in MODES_BY_NDIM[4]:
        raise RuntimeError(f"{op}: mode must be 'nearest' or 'bilinear', got '{mode}'")


_backend.register_backends(_register, ("upsample_norm_act_stats", "upsample_norm_act",
                                       "upsample_norm_act_stats_backward", "upsample_norm_act_backward"),
                           _triton_launchers)
