"""bilinear_pooling: full bilinear (B-CNN) pooling with the signed square root and L2 normalisation fused.

Registration: the schema lives in csrc/ops/bilinear_pooling.cpp; this file adds fake (meta) kernels, autograd, the
Triton variant of the op, and the public function that picks an implementation.
"""
from __future__ import annotations

import math
import numbers

import torch

from vkernels import _backend
from vkernels._dtypes import acc_dtype
from vkernels.ops._checks import check_devices, check_float_tensor, check_same_dtype
from vkernels.reference.bilinear_pooling import bilinear_pooling as _reference

__all__ = ["bilinear_pooling"]

# No CUDA C++ kernel: on GPU the GEMM is cuBLAS (torch.bmm) and the epilogue is Triton.
_backend.register_op("bilinear_pooling", cuda_order=("triton",))
_NORMALIZE = (None, "none", "signed_sqrt_l2")


def bilinear_pooling(x: torch.Tensor, y: torch.Tensor | None = None, normalize: str | None = None,
                     triu: bool = False, *, eps: float = 1e-10, impl: str = "auto") -> torch.Tensor:
    r"""Bilinear pooling (Lin et al., ICCV 2015): z_b = vec(X_b Y_b^T / HW), optionally signed-sqrt + L2 normalised.

    Args:
        x: (B, C1, H, W) features, float16/bfloat16/float32/float64, any strides (channels_last is fine).
        y: (B, C2, H, W) with x's B, H, W, dtype and device, or None for x itself (the symmetric B-CNN).
        normalize: None (or "none") | "signed_sqrt_l2": s = sign(z) sqrt(|z| + eps), out = s / max(||s||_2, 1e-12)
            per image, exactly `F.normalize(torch.sign(z) * torch.sqrt(torch.abs(z) + eps), dim=1)`.
        triu: return only the upper triangle incl. the diagonal, row-major (torch.triu_indices order), C1(C1+1)/2
            values; needs y None or C2 == C1. Normalisation applies to the packed vector.
        eps: the signed square root's epsilon (>= 0). It bounds the derivative 0.5 / sqrt(|z| + eps) by
            0.5 / sqrt(eps); at z == 0 exactly the value is 0 and the derivative 0 (torch.sign(0) = 0, as autograd
            of the expression above gives), so gradients are finite everywhere, including dead ReLU channels.

    Returns:
        (B, C1 C2) or (B, C1(C1+1)/2) in x's dtype. The Gram GEMM and every epilogue step accumulate in fp32 (fp64 for
        fp64 inputs); only the output is rounded to x's dtype. Gradients w.r.t. x and y.
    """
    _check(x, y, normalize, triu, eps)
    impl = _backend.resolve_impl("bilinear_pooling", x, impl)
    norm = "none" if normalize is None else normalize
    if impl == "reference":
        return _reference(x, y, norm, triu, eps)
    op = torch.ops.vkernels.bilinear_pooling_triton if impl == "triton" else torch.ops.vkernels.bilinear_pooling
    return op(x, y, norm, bool(triu), float(eps))[0]


def _check(x, y, normalize, triu, eps):
    check_float_tensor("bilinear_pooling", "x", x)
    if x.ndim != 4:
        raise ValueError(f"bilinear_pooling: x must have shape (B, C1, H, W), got {tuple(x.shape)}")
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"bilinear_pooling: x must have H * W >= 1, got {tuple(x.shape)}")
    if y is not None:
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"bilinear_pooling: y must be a torch.Tensor or None, got {type(y).__name__}")
        if y.ndim != 4:
            raise ValueError(f"bilinear_pooling: y must have shape (B, C2, H, W), got {tuple(y.shape)}")
        if (y.shape[0], y.shape[2], y.shape[3]) != (x.shape[0], x.shape[2], x.shape[3]):
            raise ValueError(f"bilinear_pooling: y must have x's B, H, W {(x.shape[0], x.shape[2], x.shape[3])}, "
                             f"got y of shape {tuple(y.shape)}")
        check_same_dtype("bilinear_pooling", x, y=y)
        check_devices("bilinear_pooling", x, y=y)
    if normalize not in _NORMALIZE:
        raise ValueError(f"bilinear_pooling: normalize must be None or 'signed_sqrt_l2', got {normalize!r}")
    if triu and y is not None and y.shape[1] != x.shape[1]:
        raise ValueError(f"bilinear_pooling: triu=True needs a square pooled matrix (y None or C2 == C1), got "
                         f"C1 = {x.shape[1]}, C2 = {y.shape[1]}")
    if not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"bilinear_pooling: eps must be a finite number >= 0, got {eps!r}")


def _pooled_size(x, y, triu):
    c1 = x.shape[1]
    return c1 * (c1 + 1) // 2 if triu else c1 * (c1 if y is None else y.shape[1])


def _register(fwd: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(x, y, normalize, triu, eps):
        acc = acc_dtype(x.dtype)
        P = _pooled_size(x, y, triu)
        n_shape = (x.shape[0],) if normalize == "signed_sqrt_l2" else (0,)
        return x.new_empty((x.shape[0], P)), x.new_empty(n_shape, dtype=acc)

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(grad_out, x, y, out, norm, normalize, triu, eps):
        return x.new_empty(x.shape), (x.new_empty((0,)) if y is None else y.new_empty(y.shape))

    fwd_op = getattr(torch.ops.vkernels, fwd).default

    def setup(ctx, inputs, output):
        x, y, normalize, triu, eps = inputs
        ctx.args = (normalize, triu, eps)
        ctx.has_y = y is not None
        # The normalised backward reads the output (s = out * norm) and the per-image norm: nothing else of size
        # B x P. The output is the caller's tensor, which PyTorch's composite (F.normalize of the signed sqrt) does
        # not keep, so callers may modify it in place: keep a detached alias (same storage and version counter, no
        # reference cycle) and recompute it in backward if its version moved. Traced graphs have no such aliasing.
        ctx.out = ctx.out_version = None
        out = None
        if normalize == "signed_sqrt_l2":
            if torch.compiler.is_compiling():
                out = output[0]
            else:
                ctx.out = output[0].detach()
                ctx.out_version = ctx.out._version
        ctx.save_for_backward(x, y, out, output[1])

    def backward(ctx, g_out, _g_norm):
        x, y, out, nrm = ctx.saved_tensors
        if ctx.out is not None:
            out = ctx.out
            if out._version != ctx.out_version:  # modified in place after the forward: recompute it
                with torch.no_grad():
                    out, nrm = fwd_op(x, y if ctx.has_y else None, *ctx.args)
        if out is None:
            out = g_out
        gx, gy = bwd_op(g_out.contiguous(), x, y if ctx.has_y else None, out, nrm, *ctx.args)
        need = ctx.needs_input_grad
        return (gx if need[0] else None, gy if ctx.has_y and need[1] else None, None, None, None)

    torch.library.register_autograd(f"vkernels::{fwd}", backward, setup_context=setup)


_backend.register_backends(_register, ("bilinear_pooling", "bilinear_pooling_backward"),
                           lambda: _backend.triton_launchers("bilinear_pooling", "forward", "backward"))
