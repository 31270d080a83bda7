"""isqrt_cov: iSQRT-COV global covariance pooling (Li et al., CVPR 2018), MPNCOV's conventions.

Registration: the schema lives in csrc/ops/isqrt_cov.cpp; this file adds fake (meta) kernels, autograd, the Triton
variant of the op, and the public function that picks an implementation.
"""
from __future__ import annotations

import numbers

import torch

from vkernels import _backend
from vkernels._dtypes import acc_dtype
from vkernels.ops._checks import check_float_tensor
from vkernels.reference.isqrt_cov import isqrt_cov as _reference

__all__ = ["isqrt_cov"]

# No CUDA C++ kernel: on GPU the GEMMs are cuBLAS (torch.bmm / baddbmm) and the elementwise passes are Triton.
_backend.register_op("isqrt_cov", cuda_order=("triton",))


def isqrt_cov(x: torch.Tensor, iters: int = 5, triu: bool = True, *, impl: str = "auto") -> torch.Tensor:
    r"""Matrix square root of each image's channel covariance by iterated Newton-Schulz (iSQRT-COV).

    Sigma = (1/M) X (I - 11^T/M) X^T (M = HW; the centering is applied to X, never as an M x M matrix),
    t = tr Sigma, A = Sigma / t, Y_0 = A, Z_0 = I, T_k = (3I - Z_{k-1} Y_{k-1}) / 2, Y_k = Y_{k-1} T_k,
    Z_k = T_k Z_{k-1}; out = sqrt(t) Y_iters. Same numbers as MPNCOV's Covpool -> Sqrtm(iterN=iters) -> Triuvec.
    Y_iters -> A^{1/2} as iters grows for SPD Sigma (the eigenvalues of A lie in (0, 1]); iters=5 is the paper's.

    Args:
        x: (B, C, H, W) features, float16/bfloat16/float32/float64, any strides.
        iters: Newton-Schulz iterations, >= 1.
        triu: return the row-major upper triangle incl. the diagonal, (B, C(C+1)/2) (MPNCOV's Triuvec order);
            else the full (B, C, C) matrix.

    Returns:
        x's dtype; all the work in fp32 (fp64 for fp64 inputs). The trace is clamped to >= 1e-30, so an image with
        zero covariance gives 0 (MPNCOV gives NaN there). The backward recomputes the iterates from the saved
        A = Sigma / t (one C x C matrix per image kept between forward and backward instead of 2 iters of them).
    """
    _check(x, iters, triu)
    impl = _backend.resolve_impl("isqrt_cov", x, impl)
    if impl == "reference":
        return _reference(x, iters, triu)
    op = torch.ops.vkernels.isqrt_cov_triton if impl == "triton" else torch.ops.vkernels.isqrt_cov
    return op(x, int(iters), bool(triu))[0]


def _check(x, iters, triu):
    check_float_tensor("isqrt_cov", "x", x)
    if x.ndim != 4:
        raise ValueError(f"isqrt_cov: x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"isqrt_cov: x must have H * W >= 1, got {tuple(x.shape)}")
    if isinstance(iters, bool) or not isinstance(iters, numbers.Integral) or iters < 1:
        raise ValueError(f"isqrt_cov: iters must be an integer >= 1, got {iters!r}")
    if not isinstance(triu, bool):
        raise TypeError(f"isqrt_cov: triu must be a bool, got {type(triu).__name__}")


def _register(fwd: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(x, iters, triu):
        acc = acc_dtype(x.dtype)
        B, C = x.shape[0], x.shape[1]
        out = x.new_empty((B, C * (C + 1) // 2) if triu else (B, C, C))
        return out, x.new_empty((B, C, C), dtype=acc), x.new_empty((B,), dtype=acc)

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(grad_out, x, A, trace, iters, triu):
        return x.new_empty(x.shape)

    def setup(ctx, inputs, output):
        x, iters, triu = inputs
        ctx.args = (iters, triu)
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(x, output[1], output[2])

    def backward(ctx, g_out, _g_a, _g_t):
        x, A, t = ctx.saved_tensors
        return bwd_op(g_out.contiguous(), x, A, t, *ctx.args), None, None

    torch.library.register_autograd(f"vkernels::{fwd}", backward, setup_context=setup)


_backend.register_backends(_register, ("isqrt_cov", "isqrt_cov_backward"),
                           lambda: _backend.triton_launchers("isqrt_cov", "forward", "backward"))
