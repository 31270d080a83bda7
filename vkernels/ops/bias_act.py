"""bias_act: bias + activation + gain + clamp in one pass (StyleGAN2/3's `bias_act`, same arguments and results).

Registration: the schema lives in csrc/ops/bias_act.cpp; this file adds fake (meta) kernels, autograd (first and
second order), the Triton variant of the op, and the public function that picks an implementation.
"""
from __future__ import annotations

import torch

from vkernels import _backend
from vkernels.ops._checks import check_act_args, check_devices, check_float_tensor, check_same_dtype
from vkernels.reference.bias_act import ACTIVATIONS
from vkernels.reference.bias_act import bias_act as _reference

__all__ = ["bias_act"]

_backend.register_op("bias_act")
# Activations with a nonzero second derivative (the rest need no order-2 kernel in double backward).
_HAS_2ND = {"tanh", "sigmoid", "elu", "selu", "softplus", "swish"}


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str = "auto") -> torch.Tensor:
    r"""Fused bias + activation + gain + clamp: y = clamp(act(x + b) * gain, -clamp, clamp).

    Args:
        x: input tensor, any shape, float16/bfloat16/float32/float64, any strides (dense layouts such as
            channels_last are kept; other strides are read through a copy).
        b: optional bias of shape [x.shape[dim]], same dtype and device as x, broadcast along `dim`.
        dim: the dimension of x that b runs along (negative counts from the end). Only used when b is given.
        act: "linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus" or "swish".
        alpha: slope for "lrelu" (default 0.2); ignored by other activations.
        gain: output scale; default sqrt(2) for relu, lrelu and swish, 1 otherwise (StyleGAN's convention).
        clamp: clamp the output to [-clamp, clamp]; None (default) disables it. Clamped elements get zero grad.
        impl: "auto" | "cpu" | "cuda" | "triton" | "reference"; see `vkernels.resolve_impl`.

    Returns:
        A tensor of x's shape, dtype and layout. Differentiable twice w.r.t. x and b (R1 penalties).
        What backward keeps follows NVlabs' bias_act: the output y for relu, lrelu, tanh, sigmoid, elu, selu and
        softplus (so an in-place change of y before backward raises autograd's error, as it does there), x and b
        for swish, nothing for linear. Exceptions, for exact gradients where NVlabs' rule gives none: linear with
        a clamp, lrelu with alpha < 0, and gain == 0 keep x and b (NVlabs keeps nothing / y).
        NVlabs also keeps x and b for tanh..softplus, for its double backward; ours needs only y. With a clamp
        in fp16/bf16 those activations keep x and b too (y rounded after the clamp does not give the exact mask).
    """
    _check(x, b, dim, act, alpha, gain, clamp)
    _, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = float(def_alpha if alpha is None else alpha)
    gain = float(def_gain if gain is None else gain)
    clamp = None if clamp is None else float(clamp)
    impl = _backend.resolve_impl("bias_act", x, impl)
    if impl == "reference":
        return _reference(x, b, dim, act, alpha, gain, clamp)
    op = torch.ops.vkernels.bias_act_triton if impl == "triton" else torch.ops.vkernels.bias_act
    return op(x, b, dim, act, alpha, gain, clamp)


def _check(x, b, dim, act, alpha, gain, clamp):
    check_float_tensor("bias_act", "x", x)
    check_act_args("bias_act", act, alpha, gain, clamp)
    if b is None:
        return
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"bias_act: b must be a torch.Tensor or None, got {type(b).__name__}")
    if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise IndexError(f"bias_act: dim must be an int in [{-x.ndim}, {x.ndim - 1}] for x of shape "
                         f"{tuple(x.shape)}, got {dim!r}")
    if b.ndim != 1 or b.shape[0] != x.shape[dim]:
        raise ValueError(f"bias_act: b must have shape ({x.shape[dim]},) to match x.shape[{dim}], got "
                         f"{tuple(b.shape)}")
    check_same_dtype("bias_act", x, b=b)
    check_devices("bias_act", x, b=b)


# What NVlabs' bias_act keeps for backward (its activation_funcs' `ref`): "y" = the output, "x" = x and b, "" =
# nothing. Saving y lets x be freed, but makes y read-only until backward: StyleGAN's code relies on being able to
# modify in place exactly the outputs whose activation saves nothing (`y.add_(x)` after a linear skip layer).
_REF = {"linear": "", "relu": "y", "lrelu": "y", "tanh": "y", "sigmoid": "y", "elu": "y", "selu": "y",
        "softplus": "y", "swish": "x"}


def _saves(act: str, alpha: float, gain: float, clamp: float | None, dtype: torch.dtype) -> str:
    """What the forward keeps for backward: "y", "x" (x and b), "xy" (x and b to compute with, y kept as NVlabs
    keeps it) or "" (nothing)."""
    ref = _REF[act]
    if ref == "":
        # NVlabs keeps nothing for linear even with a clamp, and then lets clamped elements' gradients through;
        # x gives the exact clamp mask without touching y.
        return "" if clamp is None else "x"
    if ref == "y" and (gain == 0 or (act == "lrelu" and alpha < 0)):
        return "x"  # y does not determine the derivative (y = 0 everywhere; lrelu's sign flips)
    if ref == "y" and clamp is not None and dtype in (torch.float16, torch.bfloat16):
        # |y| < clamp is the exact clamp mask only when y is not rounded after the clamp: in fp16/bf16 an
        # unclamped value can round onto +-clamp, and a clamp bound that is not representable rounds inside it.
        # x gives the exact mask; y is kept too, so that it stays read-only until backward as with NVlabs' op.
        return "xy"
    return ref


def _sum_to_bias(t: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [d for d in range(t.ndim) if d != dim % t.ndim]
    return t.sum(dims) if dims else t  # sum(dims=[]) would reduce everything


def _register(fwd: str, grad: str) -> None:
    grad_op = getattr(torch.ops.vkernels, grad).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(x, b, dim, act, alpha, gain, clamp):
        return torch.empty_like(x)

    @torch.library.register_fake(f"vkernels::{grad}")
    def _fake_grad(g, ref, b, dim, act, alpha, gain, clamp, ref_is_y, order):
        return torch.empty_like(ref)

    def setup_fwd(ctx, inputs, output):
        x, b, dim, act, alpha, gain, clamp = inputs
        ctx.args = (dim, act, alpha, gain, clamp)
        ctx.saves = _saves(act, alpha, gain, clamp, x.dtype)
        if ctx.saves == "y":
            ctx.save_for_backward(output, None)
        elif ctx.saves == "x":
            ctx.save_for_backward(x, b)
        elif ctx.saves == "xy":
            ctx.save_for_backward(x, b, output)

    def backward_fwd(ctx, dy):
        dim, act, alpha, gain, clamp = ctx.args
        if ctx.saves == "":  # linear without clamp: dz = dy * gain, differentiable as it stands
            dz = dy if gain == 1 else dy * gain
        else:
            ref, b = ctx.saved_tensors[:2]  # "xy": reading y too raises if it was modified, as NVlabs' op does
            dz = grad_op(dy, ref, b, *ctx.args, ctx.saves == "y", 1)
        db = _sum_to_bias(dz, dim) if ctx.needs_input_grad[1] else None
        return dz if ctx.needs_input_grad[0] else None, db, None, None, None, None, None

    def setup_grad(ctx, inputs, output):
        g, ref, b, dim, act, alpha, gain, clamp, ref_is_y, order = inputs
        ctx.args = (dim, act, alpha, gain, clamp, ref_is_y)
        ctx.order = order
        ctx.save_for_backward(g, ref, b)

    def backward_grad(ctx, ddz):
        if ctx.order != 1:
            raise NotImplementedError("bias_act supports gradients up to second order")
        g, ref, b = ctx.saved_tensors
        dim, act, alpha, gain, clamp, ref_is_y = ctx.args
        dg = grad_op(ddz, ref, b, *ctx.args, 1) if ctx.needs_input_grad[0] else None
        dref = db = None
        if act in _HAS_2ND and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            t = grad_op(ddz * g, ref, b, *ctx.args, 2)
            dref = t if ctx.needs_input_grad[1] else None
            db = _sum_to_bias(t, dim) if ctx.needs_input_grad[2] and not ref_is_y else None
        return dg, dref, db, None, None, None, None, None, None, None

    torch.library.register_autograd(f"vkernels::{fwd}", backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(f"vkernels::{grad}", backward_grad, setup_context=setup_grad)


def _triton_launchers():
    """vkernels::bias_act_triton / bias_act_grad_triton: the C++ schemas under new names, Triton kernels behind."""

    def fwd(x, b, dim, act, alpha, gain, clamp):
        from vkernels.triton import bias_act as tk
        _check(x, b, dim, act, None, None, clamp)  # direct torch.ops calls get the public function's errors
        return tk.launch(x, None, b, dim, act, alpha, gain, clamp, tk.FORWARD)

    def grad(g, ref, b, dim, act, alpha, gain, clamp, ref_is_y, order):
        from vkernels.triton import bias_act as tk
        # The checks csrc/ops/bias_act.cpp makes for the same schema (the public function never trips them).
        if order not in (1, 2):
            raise RuntimeError(f"bias_act_grad: order must be 1 or 2, got {order}")
        if ref_is_y and (act == "swish" or gain == 0):
            raise RuntimeError("bias_act_grad: ref_is_y=True needs an act other than swish and gain != 0")
        if g.shape != ref.shape or g.dtype != ref.dtype:
            raise RuntimeError(f"bias_act_grad: grad ({tuple(g.shape)}, {g.dtype}) must match ref "
                               f"({tuple(ref.shape)}, {ref.dtype})")
        mode = (tk.GRAD1_Y if order == 1 else tk.GRAD2_Y) if ref_is_y else (tk.GRAD1_X if order == 1 else tk.GRAD2_X)
        return tk.launch(ref, g, b, dim, act, alpha, gain, clamp, mode)

    return fwd, grad


_backend.register_backends(_register, ("bias_act", "bias_act_grad"), _triton_launchers)
