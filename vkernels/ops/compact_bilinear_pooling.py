"""compact_bilinear_pooling: Tensor Sketch bilinear pooling (Gao et al., CVPR 2016) without per-location FFTs.

Registration: the schema lives in csrc/ops/compact_bilinear_pooling.cpp; this file adds fake (meta) kernels,
autograd, the Triton variant of the op, and the public function that picks an implementation.
"""
from __future__ import annotations

import math

import torch

from vkernels import _backend
from vkernels.ops._checks import check_devices, check_float_pair, check_tensors
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling as _reference
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling_freq as _reference_freq

__all__ = ["compact_bilinear_pooling"]

# No CUDA C++ kernel: the GPU path is cuBLAS GEMMs + Triton scatter/gather.
_backend.register_op("compact_bilinear_pooling", cuda_order=("triton",))
_NAME = "compact_bilinear_pooling"
_ROUTES = ("auto", "gram", "freq")

# Route cost model (fitted to CPU timings of both routes, fp32 forward): per image the Gram route costs ~a HW C1 C2
# (the GEMM; the scatter is O(C1 C2)) and the frequency route ~FREQ_COST a HW D log2(D) (two rffts per location; the
# sketch and the spectrum MACs ride along). The backward keeps the ratio (4 FFTs per location against 2 GEMMs). H W
# and B cancel, so the choice is C1 C2 > FREQ_COST D log2(D): freq from C ~ 1450 at D = 8192. CUDA uses the same
# rule (not fitted there).
FREQ_COST = 20.0


def choose_route(c1: int, c2: int, output_dim: int) -> str:
    """The route `route="auto"` takes for channel counts c1, c2 and output_dim D: "gram" or "freq"."""
    d = max(int(output_dim), 2)
    return "freq" if c1 * c2 > FREQ_COST * d * math.log2(d) else "gram"


def compact_bilinear_pooling(x: torch.Tensor, y: torch.Tensor, h1: torch.Tensor, s1: torch.Tensor,
                             h2: torch.Tensor, s2: torch.Tensor, output_dim: int, sum_pool: bool = True,
                             impl: str = "auto", route: str = "auto") -> torch.Tensor:
    r"""Tensor Sketch of x (x) y: TS_l = irfft(rfft(CS1(x_l)) rfft(CS2(y_l)), n=D) at each location l.

    CS(v)[d] = sum_{i: h[i] = d} s[i] v[i] is a count sketch; TS_l[d] = sum_{(h1[i] + h2[j]) mod D = d} s1[i] s2[j]
    x_l[i] y_l[j], so <TS(a (x) b), TS(c (x) d)> is an unbiased estimate of <a, c><b, d> over random h, s.

    sum_pool=True returns sum_l TS_l, (B, D), by one of two routes, neither of which ever holds every location's
    sketch or spectrum:
    - "gram": one Gram matrix per image, G_b = X_b Y_b^T, and a signed scatter of G_b into D bins
      (O(HW C1 C2) per image);
    - "freq": out_b = irfft(sum_l rfft(CS1(x_l)) rfft(CS2(y_l)), n=D), locations a bounded chunk at a time, the
      spectrum products summed in fp32 complex (fp64 for fp64) before one irfft (O(HW D log D) per image).
    "auto" takes "freq" when C1 C2 > 20 D log2(D) (measured on CPU; see `choose_route`). The sum is not divided by
    H W (the ports do not divide either). Deterministic: every output element is one ordered sum (no atomics).

    sum_pool=False returns MCB's per-location sketches (B, D, H, W); that path is the batched pure-PyTorch
    definition (count sketches by index_add, rfft / irfft over all locations at once) for every impl: it is
    inherently O(B D H W) and FFT-bound.

    Args:
        x: (B, C1, H, W) float16/bfloat16/float32/float64, any strides (channels_last is read without a copy).
        y: (B, C2, H, W), x's dtype and device, same B, H, W; may be x itself.
        h1, h2: int64 (C1,), (C2,) hashes in [0, output_dim).
        s1, s2: (C1,), (C2,) signs, every value +1 or -1 (any real dtype).
        output_dim: D >= 1, any size (not only powers of two).
        sum_pool: see above.
        impl: "auto" | "cpu" | "triton" | "reference"; see `vkernels.resolve_impl`.
        route: "auto" | "gram" | "freq" (sum_pool=True only; ignored otherwise).

    Returns:
        (B, D) (or (B, D, H, W)) in x's dtype, accumulated in fp32 (fp64 for fp64). Differentiable w.r.t. x and y.
    """
    _check(x, y, h1, s1, h2, s2, output_dim)
    if route not in _ROUTES:
        raise ValueError(f"{_NAME}: route must be one of {', '.join(_ROUTES)}; got {route!r}")
    impl = _backend.resolve_impl(_NAME, x, impl)
    if not sum_pool:
        return _reference(x, y, h1, s1, h2, s2, output_dim, sum_pool=False)
    if route == "auto":
        route = choose_route(x.shape[1], y.shape[1], output_dim)
    if impl == "reference":
        return (_reference_freq if route == "freq" else _reference)(x, y, h1, s1, h2, s2, output_dim)
    name = _NAME + ("_freq" if route == "freq" else "") + ("_triton" if impl == "triton" else "")
    return getattr(torch.ops.vkernels, name)(x, y, h1, s1, h2, s2, int(output_dim))


def _check(x, y, h1, s1, h2, s2, output_dim):
    check_tensors(_NAME, x=x, y=y, h1=h1, s1=s1, h2=h2, s2=s2)
    check_float_pair(_NAME, x, y)
    if x.ndim != 4:
        raise ValueError(f"{_NAME}: x must have shape (B, C1, H, W), got {tuple(x.shape)}")
    if y.ndim != 4:
        raise ValueError(f"{_NAME}: y must have shape (B, C2, H, W), got {tuple(y.shape)}")
    if (y.shape[0], y.shape[2], y.shape[3]) != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(f"{_NAME}: y must have x's batch and spatial sizes (B, H, W) = "
                         f"{(x.shape[0], x.shape[2], x.shape[3])}, got y.shape {tuple(y.shape)}")
    if not isinstance(output_dim, int) or isinstance(output_dim, bool) or output_dim < 1:
        raise ValueError(f"{_NAME}: output_dim must be an int >= 1, got {output_dim!r}")
    for (hn, h), (sn, s), (xn, c) in ((("h1", h1), ("s1", s1), ("x", x.shape[1])),
                                      (("h2", h2), ("s2", s2), ("y", y.shape[1]))):
        if h.dtype != torch.int64:
            raise TypeError(f"{_NAME}: {hn} must be int64, got {h.dtype}")
        if h.shape != (c,):
            raise ValueError(f"{_NAME}: {hn} must have shape ({c},), one hash per channel of {xn}; got "
                             f"{tuple(h.shape)} ({xn} has {c} channels: is {xn} the input you meant?)")
        if s.shape != (c,):
            raise ValueError(f"{_NAME}: {sn} must have shape ({c},), one sign per channel of {xn}; got "
                             f"{tuple(s.shape)}")
        if s.is_complex() or s.dtype == torch.bool:
            raise TypeError(f"{_NAME}: {sn} must be a real tensor of +1/-1, got {s.dtype}")
    check_devices(_NAME, x, y=y, h1=h1, s1=s1, h2=h2, s2=s2)
    # The value checks read the data (a sync on GPU, a graph break when compiled): the C++ op checks CPU tensors
    # again itself.
    if torch.compiler.is_compiling():
        return
    for (hn, h), (sn, s) in ((("h1", h1), ("s1", s1)), (("h2", h2), ("s2", s2))):
        if h.numel():
            lo, hi = int(h.min()), int(h.max())
            if lo < 0 or hi >= output_dim:
                raise IndexError(f"{_NAME}: {hn} must hold hashes in [0, output_dim = {output_dim}), got values in "
                                 f"[{lo}, {hi}]")
        if s.numel() and not bool((s.abs() == 1).all()):
            raise ValueError(f"{_NAME}: {sn} must hold only +1 and -1")


def _register(fwd: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(x, y, h1, s1, h2, s2, output_dim):
        return x.new_empty((x.shape[0], output_dim))

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(grad_out, x, y, h1, s1, h2, s2):
        return x.new_empty(x.shape), y.new_empty(y.shape)

    def setup(ctx, inputs, output):
        x, y, h1, s1, h2, s2, _ = inputs
        ctx.save_for_backward(x, y, h1, s1, h2, s2)

    def backward(ctx, grad_out):
        x, y, h1, s1, h2, s2 = ctx.saved_tensors
        dx, dy = bwd_op(grad_out, x, y, h1, s1, h2, s2)
        need = ctx.needs_input_grad
        return dx if need[0] else None, dy if need[1] else None, None, None, None, None, None

    torch.library.register_autograd(f"vkernels::{fwd}", backward, setup_context=setup)


def _triton_launchers(base: str, fwd_name: str, bwd_name: str):
    """vkernels::<base>_triton / <base>_backward_triton: the C++ schemas, Triton (+ cuBLAS / cuFFT) behind."""

    def fwd(x, y, h1, s1, h2, s2, output_dim):
        from vkernels.triton import compact_bilinear_pooling as kernels
        _check_shapes(x, y, h1, s1, h2, s2, output_dim)
        return getattr(kernels, fwd_name)(x, y, h1, s1, h2, s2, output_dim)

    def bwd(grad_out, x, y, h1, s1, h2, s2):
        from vkernels.triton import compact_bilinear_pooling as kernels
        _check_shapes(x, y, h1, s1, h2, s2, grad_out.shape[1] if grad_out.ndim == 2 else 1)
        if grad_out.ndim != 2 or grad_out.shape[0] != x.shape[0]:
            raise RuntimeError(f"{base}_backward: grad_out must have shape [{x.shape[0]}, "
                               f"output_dim], got {list(grad_out.shape)}")
        return getattr(kernels, bwd_name)(grad_out, x, y, h1, s1, h2, s2)

    return fwd, bwd


def _check_shapes(x, y, h1, s1, h2, s2, output_dim):
    # Direct torch.ops calls skip the public function: the launcher must still refuse what would index out of bounds.
    try:
        _check(x, y, h1, s1, h2, s2, output_dim)
    except (TypeError, ValueError, IndexError) as e:
        raise RuntimeError(str(e)) from None


_backend.register_backends(_register, (_NAME, f"{_NAME}_backward"),
                           lambda: _triton_launchers(_NAME, "forward", "backward"))
_backend.register_backends(_register, (f"{_NAME}_freq", f"{_NAME}_freq_backward"),
                           lambda: _triton_launchers(f"{_NAME}_freq", "forward_freq", "backward_freq"))
