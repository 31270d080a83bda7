"""bias_act in Triton: the same per-element math as csrc/ops/bias_act_math.h, one program per BLOCK elements.

Memory-bound: reads v (and g in backward), writes out; the bias is gathered per element (C values, cached).
The activations themselves (and their accuracy on the GPU) are vkernels/triton/_activation.py's. Triton passes Python
floats as fp32, so for fp64 tensors alpha/gain/clamp travel in a small fp64 tensor instead (exact, at the cost of
one tiny copy per call).
"""
import contextlib

import torch
import triton
import triton.language as tl

from vkernels.triton import _launch
from vkernels.triton._activation import ACT_IDS, act_gain_clamp, act_gain_clamp_grad, grad_y
from vkernels.triton._dtypes import acc_type
from vkernels.triton._elementwise import block_offsets, elementwise_block

FORWARD, GRAD1_Y, GRAD2_Y, GRAD1_X, GRAD2_X = range(5)


@triton.jit
def _bias_act_kernel(out_ptr, v_ptr, g_ptr, b_ptr, numel, cs, C, alpha, gain, inv_gain, clamp, scalars_ptr,
                     SCALARS_IN_TENSOR: tl.constexpr, ACT: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                     BLOCK: tl.constexpr, INT64: tl.constexpr):
    offs, mask = block_offsets(numel, BLOCK, INT64)
    ct = acc_type(v_ptr.dtype.element_ty)
    if SCALARS_IN_TENSOR:
        alpha = tl.load(scalars_ptr)
        gain = tl.load(scalars_ptr + 1)
        inv_gain = tl.load(scalars_ptr + 2)
        clamp = tl.load(scalars_ptr + 3)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(ct)
    if HAS_BIAS and (MODE == 0 or MODE == 3 or MODE == 4):
        bias = tl.load(b_ptr + (offs // cs) % C, mask=mask, other=0.0).to(ct)
    else:
        bias = 0.0
    if MODE == 0:
        r = act_gain_clamp(v + bias, alpha, gain, clamp, ACT, HAS_CLAMP)
    else:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ct)
        if MODE == 1 or MODE == 2:
            d = grad_y(v * inv_gain, alpha, ACT, MODE)
            r = g * gain * d if MODE == 1 else g * d
            if HAS_CLAMP:
                r = tl.where(tl.abs(v) < clamp, r, 0.0)
        else:
            z = v + bias
            r = act_gain_clamp_grad(g, z, alpha, gain, clamp, ACT, HAS_CLAMP, MODE - 2)
    tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=mask)


def _like(t, out):
    return t if t.stride() == out.stride() else torch.empty_like(out).copy_(t)


def launch(v, g, b, dim, act, alpha, gain, clamp, mode):
    """out = per-element bias_act math of (v, b, g); layouts handled as in csrc/ops/bias_act.cpp."""
    out = torch.empty_like(v)
    n = v.numel()
    if n == 0:
        return out
    v = _like(v, out)
    g = _like(g, out) if g is not None else v
    has_bias = b is not None and mode in (FORWARD, GRAD1_X, GRAD2_X)
    cs = C = 1
    if has_bias:
        dim = dim % v.ndim
        C = v.shape[dim]
        cs = out.stride(dim) if C > 1 else 1
        b = b.contiguous()
    block = elementwise_block(_launch.target(v.device))
    scalars = (float(alpha), float(gain), float(1.0 / gain) if gain != 0 else 0.0,
               float(clamp if clamp is not None else 0.0))
    exact = v.dtype == torch.float64
    scalars_t = torch.tensor(scalars, dtype=torch.float64, device=v.device) if exact else v
    with torch.cuda.device(v.device) if v.is_cuda else contextlib.nullcontext():
        _launch.launch(_bias_act_kernel, (triton.cdiv(n, block),),
            out, v, g, b if has_bias else v, n, cs, C, *scalars,
            scalars_t, SCALARS_IN_TENSOR=exact, ACT=ACT_IDS[act], MODE=mode, HAS_BIAS=has_bias,
            HAS_CLAMP=clamp is not None, BLOCK=block, INT64=n + block >= 2**31, num_warps=4)
    return out

