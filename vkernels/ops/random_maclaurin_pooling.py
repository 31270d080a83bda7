"""random_maclaurin_pooling: Random Maclaurin bilinear pooling (Gao et al., CVPR 2016), by the cheaper of two
fused GEMM routes.

Registration: the schema lives in csrc/ops/random_maclaurin_pooling.cpp; this file adds fake (meta) kernels, autograd,
the Triton variant of the op, and the public function that picks an implementation and a route.
"""
from __future__ import annotations

import math

import torch

from vkernels import _backend
from vkernels._dtypes import FLOAT_DTYPES, acc_dtype
from vkernels.ops._checks import check_devices, check_float_pair, check_tensors
from vkernels.reference.random_maclaurin_pooling import random_maclaurin_pooling as _reference

__all__ = ["random_maclaurin_pooling"]

_NAME = "random_maclaurin_pooling"
# No CUDA C++ kernel: on GPU the Gram GEMM is cuBLAS (torch.bmm) and the fused W1 G W2 contraction is Triton.
_backend.register_op(_NAME, cuda_order=("triton",))
_ROUTES = ("auto", "gram", "project")


def random_maclaurin_pooling(x: torch.Tensor, y: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                             sum_pool: bool = True, route: str = "auto", *, impl: str = "auto",
                             save_projections: bool | None = None) -> torch.Tensor:
    r"""out[b, d] = (1 / sqrt(D)) sum_l (w1_d . x_l)(w2_d . y_l): degree-2 Random Maclaurin features of x_l (x) y_l.

    With Rademacher (+1/-1) rows w1_d, w2_d, <phi(a, b), phi(c, e)> is an unbiased estimate of <a, c><b, e> (the
    1/sqrt(D) makes the estimate an average over the D features; Gao et al. write the same map with this factor).

    Routes for sum_pool=True (results agree to rounding):
      "gram":    G_b = X_b Y_b^T, out[b, d] = w1_d^T G_b w2_d: 2 HW C1 C2 + 2 D C1 C2 FLOPs per image.
      "project": P1 = W1 X_b, P2 = W2 Y_b, out = rowsum(P1 * P2): 2 HW D (C1 + C2) FLOPs per image.
      "auto":    the cheaper by FLOPs, counting the backward when an input requires grad (choose_gram; the
                 crossovers were measured on CPU where the FLOP counts put them: HW ~ C / 2 forward, ~ C / 3
                 forward+backward for D >> C).
    Without a gradient to take, neither kernel stores the D x C2 or D x HW products for more than one tile of rows
    at a time. The backward uses the same route (gram: through dG_b = W1^T diag(g_b) W2 / sqrt(D); project: through
    the projections). When a gradient will be taken on the project route, the forward keeps P1 = W1 X and
    P2 = W2 Y (2 B D HW elements in fp32, fp64 for fp64) for the backward, which then costs 2 GEMMs for x (4 for
    x, y, w1, w2) instead of recomputing P1 and P2 in tiles (6): see `saves_projections` for the memory cap.
    sum_pool=False is composite torch ops (two GEMMs and a product): its (B, D, H, W) output is the dominant cost.

    Args:
        x: (B, C1, H, W) float16/bfloat16/float32/float64, any strides; y: (B, C2, H, W), same dtype/device/B/H/W
            (may be x itself: then one projection set is reused and x's gradient holds both terms).
        w1: (D, C1), w2: (D, C2) projections (any float dtype; used in fp32, fp64 for fp64 inputs).
        sum_pool: sum over locations -> (B, D); else (B, D, H, W).
        route: "auto" | "gram" | "project".
        impl: "auto" | "cpu" | "triton" | "reference" (see `vkernels.available_impls`).
        save_projections: project route with a gradient: keep P1, P2 for the backward (True), recompute them in
            tiles (False), or None: keep them when they fit the cap of `saves_projections` (SAVE_FACTOR x the
            inputs' elements).

    Returns: x's dtype, accumulated in fp32 (fp64 for fp64). Differentiable w.r.t. x, y, w1 and w2 (once: the
    backward ops have no derivative of their own).
    """
    _check(x, y, w1, w2, route)
    if not sum_pool:
        return _not_pooled(x, y, w1, w2)
    impl = _backend.resolve_impl(_NAME, x, impl)
    if impl == "reference":
        return _reference(x, y, w1, w2)
    C1, HW = x.shape[1], x.shape[2] * x.shape[3]
    B, C2, D = x.shape[0], y.shape[1], w1.shape[0]
    # Whether a gradient will be taken (static under torch.compile): it decides the route and what is saved.
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, y, w1, w2))
    save = grad and (saves_projections(B, HW, C1, C2, D, y is x) if save_projections is None
                     else bool(save_projections))
    if route == "auto":
        route = "gram" if choose_gram(HW, C1, C2, D, grad, saved=save) else "project"
    sfx = "_triton" if impl == "triton" else ""
    # y is x: pass None so the kernels convert x once and the backward returns one summed gradient.
    yy = None if y is x else y
    if route == "project" and save:
        return getattr(torch.ops.vkernels, f"{_NAME}_saved{sfx}")(x, yy, w1, w2)[0]
    return getattr(torch.ops.vkernels, f"{_NAME}{sfx}")(x, yy, w1, w2, route)


# The project route keeps its projections for the backward while they hold at most SAVE_FACTOR times the elements
# of its inputs (x, y unless y is x, w1, w2). The backward allocates gradients of the inputs' size anyway and
# autograd of the plain formulation keeps the same P1, P2 with no cap, so this bounds the saved memory by a small
# multiple of what the call needs regardless. At the project-route size (B = 32, C = 2048, 14 x 14,
# D = 8192) the projections are 2.2 x the inputs (411 MB); the cap turns saving off only for large B (about
# B > 80 there), where the tiles recompute them (peak: one tile per thread).
SAVE_FACTOR = 4


def saves_projections(B: int, HW: int, C1: int, C2: int, D: int, y_is_x: bool = False) -> bool:
    """Whether "auto" keeps P1 = W1 X, P2 = W2 Y (2 B D HW elements) for the backward: within SAVE_FACTOR x the
    inputs' elements."""
    inputs = B * HW * (C1 + (0 if y_is_x else C2)) + D * (C1 + C2)
    return 2 * B * D * HW <= SAVE_FACTOR * inputs


def choose_gram(HW: int, C1: int, C2: int, D: int, backward: bool = False, saved: bool = False) -> bool:
    """Whether the Gram route is the faster one, by FLOP count: forward only, gram 2 C1 C2 (HW + D) vs project
    2 HW D (C1 + C2); with the backward (y is x, dx only), gram 4 C1 C2 (HW + D) vs project 6 HW D (C1 + C2) (the
    projections are recomputed and each needs a GEMM back), or 4 HW D (C1 + C2) when the forward saved them
    (saved=True): then the comparison is the forward's.

    Measured on this project's 2-core CPU (shared/noisy, B = 4, D = 4096, y is x, medians of 5 interleaved runs):
    forward, project/gram time = 0.49 / 1.00 / 1.31 at C = 512, HW = 144 / 256 / 400 (FLOP crossover HW = 273) and
    0.91 / 1.71 at C = 256, HW = 144 / 256 (FLOPs: 146); forward+backward 0.78 / 1.45 at C = 512, HW = 144 / 256
    (FLOPs: 186) and 0.73 / 1.48 at C = 256, HW = 64 / 144 (FLOPs: 93). Both kernels run their GEMMs at the same
    speed, so the FLOP counts place the crossovers where they were measured; no fudge factor is needed.
    """
    if backward and not saved:
        return 2 * C1 * C2 * (HW + D) < 3 * HW * D * (C1 + C2)
    return (HW + D) * C1 * C2 < HW * D * (C1 + C2)


def _not_pooled(x, y, w1, w2):
    acc = acc_dtype(x.dtype)
    D = w1.shape[0]
    X, Y = x.to(acc).flatten(2), y.to(acc).flatten(2)
    out = torch.matmul(w1.to(acc), X) * torch.matmul(w2.to(acc), Y) * (1.0 / math.sqrt(D))
    return out.reshape(x.shape[0], D, x.shape[2], x.shape[3]).to(x.dtype)


def _check(x, y, w1, w2, route):
    check_tensors(_NAME, x=x, y=y, w1=w1, w2=w2)
    check_float_pair(_NAME, x, y)
    for name, w in (("w1", w1), ("w2", w2)):
        if w.dtype not in FLOAT_DTYPES:
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
    check_devices(_NAME, x, y=y, w1=w1, w2=w2)
    # The Triton kernels index one image, W1 or W2 (and G_b) with int32 offsets.
    for name, n in (("w1", w1.numel()), ("w2", w2.numel()), ("x[0]", math.prod(x.shape[1:])),
                    ("y[0]", math.prod(y.shape[1:])),
                    ("C1 * C2", x.shape[1] * y.shape[1])):
        if n >= 2**31:
            raise ValueError(f"{_NAME}: {name} has {n} elements; at most 2**31 - 1 are supported")
    if route not in _ROUTES:
        raise ValueError(f"{_NAME}: route must be one of {', '.join(_ROUTES)}; got {route!r}")


# What both routes' registrations (recompute: _register, saved projections: _register_saved) share.
def _fake_grads(x, y, w1, w2, output_mask):
    """The backward ops' outputs: each input's shape where output_mask asks for it, else (0,); grad_y is (0,) when y
    is None (x's gradient then holds both terms)."""
    def grad(t, need):
        return t.new_empty(t.shape) if need else t.new_empty((0,))
    return (grad(x, output_mask[0]), grad(x if y is None else y, output_mask[1] and y is not None),
            grad(w1, output_mask[2]), grad(w2, output_mask[3]))


def _grad_mask(ctx):
    """output_mask for the backward op: which of x, y, w1, w2 need a gradient (y only when it was given)."""
    need = ctx.needs_input_grad
    return [bool(need[0]), bool(ctx.has_y and need[1]), bool(need[2]), bool(need[3])]


def _masked(grads, mask):
    return tuple(g if m else None for g, m in zip(grads, mask))


def _register(fwd: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(x, y, w1, w2, route):
        return x.new_empty((x.shape[0], w1.shape[0]))

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(grad_out, x, y, w1, w2, route, output_mask):
        return _fake_grads(x, y, w1, w2, output_mask)

    def setup(ctx, inputs, output):
        x, y, w1, w2, route = inputs
        ctx.route = route
        ctx.has_y = y is not None
        ctx.save_for_backward(x, y, w1, w2)

    def backward(ctx, g_out):
        x, y, w1, w2 = ctx.saved_tensors
        mask = _grad_mask(ctx)
        gx, gy, gw1, gw2 = bwd_op(g_out.contiguous(), x, y if ctx.has_y else None, w1, w2, ctx.route, mask)
        return (*_masked((gx, gy, gw1, gw2), mask), None)  # route gets no gradient

    torch.library.register_autograd(f"vkernels::{fwd}", backward, setup_context=setup)


def _register_saved(fwd: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(x, y, w1, w2):
        acc = acc_dtype(x.dtype)
        B, D = x.shape[0], w1.shape[0]
        return x.new_empty((B, D)), x.new_empty((2, D, B, x.shape[2] * x.shape[3]), dtype=acc)

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(grad_out, x, y, w1, w2, proj, output_mask):
        return _fake_grads(x, y, w1, w2, output_mask)

    def setup(ctx, inputs, output):
        x, y, w1, w2 = inputs
        ctx.has_y = y is not None
        ctx.mark_non_differentiable(output[1])  # proj is for the backward only
        ctx.set_materialize_grads(False)  # so no zero gradient of proj's size is ever allocated
        ctx.save_for_backward(x, y, w1, w2, output[1])

    def backward(ctx, g_out, _g_proj):
        x, y, w1, w2, proj = ctx.saved_tensors
        mask = _grad_mask(ctx)
        if g_out is None or not any(mask):
            return None, None, None, None
        gx, gy, gw1, gw2 = bwd_op(g_out.contiguous(), x, y if ctx.has_y else None, w1, w2, proj, mask)
        return _masked((gx, gy, gw1, gw2), mask)

    torch.library.register_autograd(f"vkernels::{fwd}", backward, setup_context=setup)


_backend.register_backends(_register, (_NAME, f"{_NAME}_backward"),
                           lambda: _backend.triton_launchers(_NAME, "forward", "backward"))
_backend.register_backends(_register_saved, (f"{_NAME}_saved", f"{_NAME}_saved_backward"),
                           lambda: _backend.triton_launchers(_NAME, "forward_saved", "backward_saved"))
