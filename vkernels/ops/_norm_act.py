"""What the fused norm + activation ops (upsample_norm_act, spade_norm_act) share: the one-node autograd of a norm
whose statistics are of x itself (StatsOfX and the backend ops a plan runs, NormActOps), the running-statistics
update, the double-backward helper their backward ops use, and the argument checks they make with the same wording.

Not an op module: it exports nothing (vkernels.ops imports every module of the package and copies its __all__).
"""
from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch

from vkernels._dtypes import FLOAT_DTYPES, acc_dtype
from vkernels.reference.bias_act import ACTIVATIONS

__all__: list[str] = []


# --------------------------------------------------------------------------------------------------------------------
# one autograd node for a norm whose statistics are of x itself
# --------------------------------------------------------------------------------------------------------------------
class NormActOps(NamedTuple):
    """The torch.ops of one backend (C++ or Triton) that a StatsOfX plan runs."""
    stats: Any  # upsample_norm_act_stats: (x, scale, mode, per_sample) -> (mean, var)
    apply: Any  # the op's fused apply
    backward: Any  # the apply's fused backward
    stats_backward: Any = None  # upsample_norm_act_stats_backward: the statistics' adjoint where it is a stencil
    train: Any = None  # a one-op training forward -> (y, mean, var, rstd), where a backend has one


class StatsOfX(torch.autograd.Function):
    """A fused norm op whose statistics are of x itself (training batch norm, instance / AdaIN norm) as ONE autograd
    node: forward `plan.forward(x, params, fused) -> (y, mean, var, rstd)` (fused=False: the differentiable
    two-op form, which a plan may replace by one non-differentiable op otherwise); mean, var are for the running
    statistics only (not differentiable).

    As two nodes (stats op, apply op) autograd receives two x-sized gradients for x, the apply backward's and the
    stats backward's, and holds both (and then their sum). Here the fused apply backward runs first; the chain rule
    through its per-(n, c) coefficients (mean, rstd and the small affine params combined) gives the gradients of
    mean and rstd, hence gvar = grstd * -rstd^3 / 2, and `plan.add_stats_` adds the statistics' term A^T (gmean / K +
    2 gvar / K * (up(x) - mean)) to the apply backward's dx in place, so dx is one buffer. Higher orders: a backward
    that builds a graph re-runs the two-node forward and differentiates it (its own gradients are the ops'
    composites), so gradgradcheck / R1 see exactly the two-node formulas.

    A plan provides: n_big (how many leading params go to the kernels as x-sized tensors, e.g. SPADE's gamma/beta;
    the rest are small ones coefs() turns into per-(n, c) vectors), forward,
    backward(dy, x, mean, rstd, big, small, need) -> (dx, dbig, gmean, grstd, dsmall) (the apply backward and the
    chain rule through coefs written out by hand: dynamo cannot trace torch.autograd.grad inside a backward) and
    add_stats_(dx, x, mean, gmean, gvar)."""

    @staticmethod
    def forward(ctx, plan, x, *params):
        y, mean, var, rstd = plan.forward(x, params)
        ctx.save_for_backward(x, mean, rstd, *params)
        ctx.plan = plan
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _gmean, _gvar):
        x, mean, rstd, *params = ctx.saved_tensors
        plan = ctx.plan
        need = ctx.needs_input_grad[1:]
        if torch.is_grad_enabled():  # create_graph: differentiate the two-node graph instead
            with torch.enable_grad():
                leaves = [None if t is None else grad_leaf(t, n) for t, n in zip((x, *params), need)]
                y = plan.forward(leaves[0], leaves[1:], fused=False)[0]
                wrt = [lf for lf, n in zip(leaves, need) if n]
                res = iter(torch.autograd.grad(y, wrt, dy, create_graph=True, allow_unused=True))
            return None, *[next(res) if n else None for n in need]
        nb = plan.n_big
        dx, dbig, gmean, grstd, gsmall = plan.backward(dy, x, mean, rstd, params[:nb], params[nb:], need)
        if need[0] and x.numel() > 0:
            gvar = grstd * rstd.pow(3) * -0.5
            plan.add_stats_(dx, x, mean, gmean, gvar)
        return (None, dx if need[0] else None, *dbig, *gsmall)


def sum_to(g, like):
    """g (N, C) summed to like's shape ((C,) or (N, C)) and dtype."""
    return (g.sum(0) if like.ndim == 1 else g).to(like.dtype)


def add_stats_affine_(dx, mean, gmean, gvar, x, K, mult):
    """dx += mult * (gmean / K + 2 gvar / K * (x - mean)), per (n, c): the statistics' gradient when the adjoint of
    the upsampling maps an affine function of up(x) to mult times the same function of x (nearest: mult = s^2;
    no upsampling: 1). Two in-place passes over dx, no x-sized temporary."""
    N, C = x.shape[:2]
    c2 = (gvar * (2.0 * mult / K)).expand(N, C)
    c0 = (gmean * (mult / K)).expand(N, C) - c2 * mean.expand(N, C)
    dx.addcmul_(x, ncv(c2, x.ndim)).add_(ncv(c0, x.ndim))


def update_running(running_mean, running_var, mean, var, x, scale, momentum):
    """nn.BatchNorm2d's (3d's for 5-D x) in-place running-statistics update from a batch's (mean, biased var) of
    up(x)."""
    if running_mean is None or x.numel() == 0:  # F.batch_norm skips empty batches too
        return
    n = x.shape[0] * math.prod(x.shape[2:]) * scale ** (x.ndim - 2)
    with torch.no_grad():
        running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
        running_var.mul_(1 - momentum).add_((var.detach() * (n / (n - 1))).to(running_var.dtype), alpha=momentum)


def norm_stats(stats_op, x, scale, mode, norm, running_mean, running_var, training, momentum, eps):
    """(mean, rstd) of the normalization, shape (C,) or (N, C) in the compute type, or (None, None) for norm none.
    Updates the running statistics of a training batch norm in place, as nn.BatchNorm2d does."""
    ct = acc_dtype(x.dtype)
    if norm == "none":
        return None, None
    if norm == "batch" and not training:
        return running_mean.detach().to(ct), torch.rsqrt(running_var.detach().to(ct) + eps)
    mean, var = stats_op(x, int(scale), mode, norm != "batch")
    if norm == "batch":
        update_running(running_mean, running_var, mean, var, x, scale, momentum)
    return mean, torch.rsqrt(var + eps)


# --------------------------------------------------------------------------------------------------------------------
# autograd helpers: formulas in differentiable torch ops
# --------------------------------------------------------------------------------------------------------------------
def act_grad(dy, z, act, alpha, gain, clamp):
    """dL/dz of clamp(act(z) * gain): bias_act's own gradient kernel (x-ref form), itself differentiable."""
    return torch.ops.vkernels.bias_act_grad(dy, z, None, 1, act, alpha, gain, clamp, False, 1)


def nc4(v):
    """A per-(n, c) vector (N, C) as (N, C, 1, 1), to broadcast over H, W."""
    return v[:, :, None, None]


def ncv(v, ndim):
    """A per-(n, c) vector (N, C) as (N, C, 1, ..., 1) of ndim dims, to broadcast over the spatial dims."""
    return v.reshape(tuple(v.shape) + (1,) * (ndim - 2))


def grad_leaf(t, need):
    """The composite's input for saved tensor t: a fresh view of t when its gradient is needed (differentiating
    w.r.t. the view gives the partial derivative through this formula only, while higher orders still flow into t's
    own graph), else t detached."""
    if not need:
        return t.detach()
    return t.view_as(t) if t.requires_grad else t.detach().requires_grad_()


def double_backward(composite, tensors, args, grads, needs):
    """Gradients of the fused backward op (the composite's outputs paired with `grads`) w.r.t. `tensors` through
    the composite's autograd, any order (create_graph when the caller's backward builds a graph)."""
    create_graph = torch.is_grad_enabled()  # True inside a create_graph=True backward
    if not any(needs):
        return [None] * len(tensors)
    with torch.enable_grad():
        leaves = [grad_leaf(t, n) for t, n in zip(tensors, needs)]
        outs = composite(*leaves, *args)
        pairs = [(o, g) for o, g in zip(outs, grads) if o is not None and g is not None and g.numel() > 0]
        wrt = [lf for lf, n in zip(leaves, needs) if n]
        if not pairs:
            return [None] * len(tensors)
        res = iter(torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], create_graph=create_graph,
                                       allow_unused=True))
    return [next(res) if n else None for n in needs]


# --------------------------------------------------------------------------------------------------------------------
# argument checks of the public functions (ValueError / TypeError naming the argument)
# --------------------------------------------------------------------------------------------------------------------
def check_x(op, x, volumes=False):
    """x of a public function: 4-D (N, C, H, W), or also 5-D (N, C, D, H, W) when `volumes`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    _check_x_rank_dtype(op, x, volumes, ValueError, TypeError, tuple)


def _check_x_rank_dtype(op, x, volumes, rank_error, dtype_error, shape_text):
    """x's rank and dtype rules, stated once for the public functions' checks and the raw ops' (which raise as
    TORCH_CHECK does and print the shape as C++ does: `shape_text` list)."""
    if volumes and x.ndim not in (4, 5):
        raise rank_error(f"{op}: x must be 4-D (N, C, H, W) or 5-D (N, C, D, H, W), got shape {shape_text(x.shape)}")
    if not volumes and x.ndim != 4:
        raise rank_error(f"{op}: x must be 4-D (N, C, H, W), got shape {shape_text(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise dtype_error(f"{op}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")


def check_act(op, act, alpha, gain, clamp):
    if act not in ACTIVATIONS:
        raise ValueError(f"{op}: act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
    for name, val in (("alpha", alpha), ("gain", gain)):
        if not isinstance(val, numbers.Real) or not math.isfinite(val):
            raise ValueError(f"{op}: {name} must be a finite number, got {val!r}")
    if clamp is not None and (not isinstance(clamp, numbers.Real) or not clamp >= 0):
        raise ValueError(f"{op}: clamp must be None or a number >= 0, got {clamp!r}")


def check_momentum_eps(op, momentum, eps):
    for name, val in (("momentum", momentum), ("eps", eps)):
        if not isinstance(val, numbers.Real) or not math.isfinite(val) or val < 0:
            raise ValueError(f"{op}: {name} must be a finite number >= 0, got {val!r}")


def check_param(op, name, v, shape, x):
    if v is None:
        return
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(v).__name__}")
    if tuple(v.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(v.shape)}")
    if v.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a floating tensor, got {v.dtype}")
    if v.device != x.device:
        raise ValueError(f"{op}: {name} is on {v.device} but x is on {x.device}")


def check_running(op, norm, x, running_mean, running_var, training):
    C = x.shape[1]
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must be given together")
    if norm != "batch":
        if running_mean is not None:
            raise ValueError(f"{op}: running_mean/running_var are only used by norm='batch', got norm={norm!r}")
        return
    if not training and running_mean is None:
        raise ValueError(f"{op}: norm='batch' with training=False needs running_mean and running_var")
    for name, v in (("running_mean", running_mean), ("running_var", running_var)):
        check_param(op, name, v, (C,), x)


# ----------------------------------------------------------------------------------------------------------------------
# the raw ops' checks, for their Triton variants: what csrc/ops/upsample_norm_act.h and the CPU kernels check (the
# tensors a kernel indexes), rule by rule in the same words (RuntimeError, as TORCH_CHECK raises)
# ----------------------------------------------------------------------------------------------------------------------
def check_raw_x(op, x, volumes=False):
    _check_x_rank_dtype(op, x, volumes, RuntimeError, RuntimeError, list)


def check_vectors(op, x, shape, shape_text, named):
    """Per-channel or per-(n, c) vectors: `shape` (`shape_text` in the message), x's accumulator dtype and device."""
    ct = acc_dtype(x.dtype)
    for name, t in named:
        if tuple(t.shape) != tuple(shape):
            raise RuntimeError(f"{op}: {name} must have shape {shape_text}, got {list(t.shape)}")
        if t.dtype != ct:
            raise RuntimeError(f"{op}: {name} must be {ct} for x of dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def check_nc(op, x, named):
    """The apply ops' per-(n, c) coefficients."""
    N, C = x.shape[:2]
    check_vectors(op, x, (N, C), f"(N, C) = ({N}, {C})", named)


def check_like_x(op, x, named, shape=None):
    """Tensors in x's dtype, on x's device, of `shape` (default: x's shape): dy, SPADE's gamma and beta."""
    want = list(x.shape if shape is None else shape)
    shape_text = f"x's shape {want}" if shape is None else f"shape {want}"
    for name, t in named:
        if list(t.shape) != want:
            raise RuntimeError(f"{op}: {name} must have {shape_text}, got {list(t.shape)}")
        if t.dtype != x.dtype:
            raise RuntimeError(f"{op}: {name} dtype {t.dtype} must equal x dtype {x.dtype}")
        if t.device != x.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but x is on {x.device}")
