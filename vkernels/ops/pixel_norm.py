"""pixel_norm: y = x * rsqrt(mean(x^2 over dim) + eps) (StyleGAN's normalize_2nd_moment, ProGAN's pixel norm).

Registration: the schema lives in csrc/ops/pixel_norm.cpp; this file adds fake kernels, autograd (the backward op
recomputes the norm from x, so only x is kept alive), the Triton variant and the public function.

Higher-order gradients: the backward op pixel_norm_backward(g, x) is itself registered with autograd. It is linear
and self-adjoint in g (d dx / d g = the same Jacobian as the forward), so its gradient w.r.t. g is the backward
kernel again; its gradient w.r.t. x (which only a double backward needs, e.g. StyleGAN2's path-length penalty
through the mapping network) is a torch composite of the reference, differentiable to any order.
"""
from __future__ import annotations

import math
import numbers

import torch

from vkernels import _backend
from vkernels._dtypes import FLOAT_DTYPES
from vkernels.reference.pixel_norm import pixel_norm as _reference

__all__ = ["pixel_norm"]

_backend.register_op("pixel_norm", cuda_order=("triton",))  # no CUDA C++ kernel: Triton is the GPU path


def pixel_norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-8, impl: str = "auto") -> torch.Tensor:
    r"""Pixelwise feature normalization: y = x * rsqrt(mean(x^2, dim) + eps).

    Args:
        x: any shape with at least one dimension, float16/bfloat16/float32/float64 (accumulated in fp32, fp64 for
            fp64). channels_last 4-D input with dim=1 is read in place on CPU.
        dim: the dimension normalized over (StyleGAN: the latent/channel dimension 1).
        eps: added to the mean square, >= 0.
        impl: "auto" | "cpu" | "triton" | "reference"; see `vkernels.resolve_impl`.

    Returns:
        A tensor of x's shape and dtype. Differentiable to any order (first order through the kernels; second
        and higher orders partly through torch composites, see the module docstring).
    """
    _check(x, dim, eps)
    impl = _backend.resolve_impl("pixel_norm", x, impl)
    if impl == "reference":
        return _reference(x, dim, float(eps))
    op = (torch.ops.vkernels.pixel_norm_triton if impl == "triton" else torch.ops.vkernels.pixel_norm).default
    return op(x, dim, float(eps))


def _check(x, dim, eps):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pixel_norm: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"pixel_norm: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError("pixel_norm: x must have at least one dimension, got a 0-dim tensor")
    if not isinstance(dim, int) or not -x.ndim <= dim < x.ndim:
        raise IndexError(f"pixel_norm: dim must be an int in [{-x.ndim}, {x.ndim - 1}] for x of shape "
                         f"{tuple(x.shape)}, got {dim!r}")
    # type() first: an isinstance check against the numbers.Real ABC costs more than the whole (32, 512) kernel.
    if not (type(eps) in (float, int) or isinstance(eps, numbers.Real)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"pixel_norm: eps must be a finite number >= 0, got {eps!r}")


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """t itself when it is part of a graph (so higher orders flow through it), else a fresh leaf that needs grad."""
    return t if t.requires_grad else t.detach().requires_grad_()


def _grad_x_of_backward(g, x, gg, dim, eps, create_graph):
    """<gg, d(pixel_norm_backward(g, x)) / dx> through the reference's autograd (torch ops, any order)."""
    with torch.enable_grad():
        xl, gl = _leaf(x), g if create_graph else g.detach()
        (dx,) = torch.autograd.grad(_reference(xl, dim, eps), xl, gl, create_graph=True)
        (d_x,) = torch.autograd.grad(dx, xl, gg, create_graph=create_graph)
    return d_x


def _register(fwd: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(x, dim, eps):
        return torch.empty_like(x)

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(grad, x, dim, eps):
        return torch.empty_like(x)

    def setup(ctx, inputs, output):
        x, dim, eps = inputs
        ctx.args = (dim, eps)
        ctx.save_for_backward(x)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return bwd_op(g, x, *ctx.args), None, None

    def setup_bwd(ctx, inputs, output):
        g, x, dim, eps = inputs
        ctx.args = (dim, eps)
        ctx.save_for_backward(g, x)

    def backward_bwd(ctx, gg):
        g, x = ctx.saved_tensors
        dim, eps = ctx.args
        create_graph = torch.is_grad_enabled()  # True inside a create_graph=True backward
        d_g = bwd_op(gg.contiguous(), x, dim, eps) if ctx.needs_input_grad[0] else None
        d_x = None
        if ctx.needs_input_grad[1]:
            d_x = _grad_x_of_backward(g, x, gg, dim, eps, create_graph)
        return d_g, d_x, None, None

    torch.library.register_autograd(f"vkernels::{bwd}", backward_bwd, setup_context=setup_bwd)
    torch.library.register_autograd(f"vkernels::{fwd}", backward, setup_context=setup)


def _triton_launchers():
    def fwd(x, dim, eps):
        from vkernels.triton import pixel_norm as kernels
        _check(x, dim, eps)
        return kernels.launch(x, None, dim, eps)

    def bwd(grad, x, dim, eps):
        from vkernels.triton import pixel_norm as kernels
        _check(x, dim, eps)
        if grad.shape != x.shape or grad.dtype != x.dtype:
            raise RuntimeError(f"pixel_norm_backward: grad ({tuple(grad.shape)}, {grad.dtype}) must match x "
                               f"({tuple(x.shape)}, {x.dtype})")
        return kernels.launch(x, grad, dim, eps)

    return fwd, bwd


_backend.register_backends(_register, ("pixel_norm", "pixel_norm_backward"), _triton_launchers)
