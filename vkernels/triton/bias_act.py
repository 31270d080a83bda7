"""bias_act in Triton: the same per-element math as csrc/ops/bias_act_math.h, one program per BLOCK elements.

Memory-bound: reads v (and g in backward), writes out; the bias is gathered per element (C values, cached).
Only tl.exp / tl.log are used for transcendentals (libdevice does not run in the Triton interpreter, where CI tests
this code), with Kahan's accurate forms of expm1 and log1p. Triton passes Python floats as fp32, so for fp64 tensors
alpha/gain/clamp travel in a small fp64 tensor instead (exact, at the cost of one tiny copy per call).
On a GPU, fp32 tl.exp is ex2.approx and `/` div.full (a few ulp; tl.log stays accurate): fine for an elementwise
activation, whose fp32 tests allow 2e-5 relative to the output's magnitude, so no correctly rounded forms here.
"""
import contextlib

import torch
import triton
import triton.language as tl

from vkernels.triton import _launch

ACT_IDS = {a: i for i, a in enumerate(["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus",
                                       "swish"])}
FORWARD, GRAD1_Y, GRAD2_Y, GRAD1_X, GRAD2_X = range(5)
# tl.constexpr: the GPU compiler rejects plain Python float globals inside @triton.jit code (the interpreter does not).
SELU_L = tl.constexpr(1.0507009873554804934193349852946)
SELU_A = tl.constexpr(1.6732632423543772848170429916717)


@triton.jit
def _expm1(z):
    u = tl.exp(z)
    um1 = u - 1.0
    # (u - 1) * z / log(u) cancels the rounding of u (Kahan); exact at u == 1 and at underflow.
    return tl.where(u == 1.0, z, tl.where(um1 == -1.0, um1, um1 * z / tl.log(u)))


@triton.jit
def _log1p(w):
    u = 1.0 + w
    return tl.where(u == 1.0, w, tl.log(u) * w / (u - 1.0))


@triton.jit
def _tanh(z):
    e = _expm1(-2.0 * tl.abs(z))
    t = -e / (2.0 + e)
    return tl.where(z < 0, -t, t)


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _act(z, alpha, ACT: tl.constexpr):
    if ACT == 0:
        r = z
    elif ACT == 1:
        r = tl.where(z < 0, 0.0, z)
    elif ACT == 2:
        r = tl.where(z < 0, z * alpha, z)
    elif ACT == 3:
        r = _tanh(z)
    elif ACT == 4:
        r = _sigmoid(z)
    elif ACT == 5:
        r = tl.where(z < 0, _expm1(z), z)
    elif ACT == 6:
        r = SELU_L * tl.where(z < 0, SELU_A * _expm1(z), z)
    elif ACT == 7:
        r = tl.where(z > 20.0, z, _log1p(tl.exp(z)))
    else:
        r = z * _sigmoid(z)
    return r


@triton.jit
def _grad_y(ya, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
    # f'(ya) (ORDER 1) or d f'(ya)/d ya (ORDER 2), with ya the unscaled activation output.
    if ORDER == 1:
        if ACT == 0:
            r = ya * 0.0 + 1.0
        elif ACT == 1:
            r = tl.where(ya > 0, 1.0, 0.0)
        elif ACT == 2:
            r = tl.where(ya > 0, 1.0, alpha)
        elif ACT == 3:
            r = 1.0 - ya * ya
        elif ACT == 4:
            r = ya * (1.0 - ya)
        elif ACT == 5:
            r = tl.where(ya <= 0, ya + 1.0, 1.0)
        elif ACT == 6:
            r = tl.where(ya <= 0, ya + SELU_L * SELU_A, SELU_L)
        else:
            r = -_expm1(-ya)
    else:
        if ACT == 3:
            r = -2.0 * ya
        elif ACT == 4:
            r = 1.0 - 2.0 * ya
        elif ACT == 5 or ACT == 6:
            r = tl.where(ya <= 0, 1.0, 0.0)
        elif ACT == 7:
            r = tl.exp(-ya)
        else:
            r = ya * 0.0
    return r


@triton.jit
def _grad_x(z, alpha, ACT: tl.constexpr, ORDER: tl.constexpr):
    # f'(z) (ORDER 1) or f''(z) (ORDER 2).
    if ACT == 0:
        r = z * 0.0 + (1.0 if ORDER == 1 else 0.0)
    elif ACT == 1:
        r = tl.where(z > 0, 1.0, 0.0) if ORDER == 1 else z * 0.0
    elif ACT == 2:
        r = tl.where(z > 0, 1.0, alpha) if ORDER == 1 else z * 0.0
    elif ACT == 3:
        t = _tanh(z)
        r = (1.0 - t * t) if ORDER == 1 else -2.0 * t * (1.0 - t * t)
    elif ACT == 4:
        s = _sigmoid(z)
        r = s * (1.0 - s) if ORDER == 1 else s * (1.0 - s) * (1.0 - 2.0 * s)
    elif ACT == 5:
        r = tl.where(z <= 0, tl.exp(z), 1.0 if ORDER == 1 else 0.0)
    elif ACT == 6:
        r = tl.where(z <= 0, SELU_L * SELU_A * tl.exp(z), SELU_L if ORDER == 1 else 0.0)
    elif ACT == 7:
        s = _sigmoid(z)
        r = tl.where(z > 20.0, 1.0 if ORDER == 1 else 0.0, s if ORDER == 1 else s * (1.0 - s))
    else:
        s = _sigmoid(z)
        r = s + z * s * (1.0 - s) if ORDER == 1 else s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    return r


@triton.jit
def _block_offsets(numel, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """This program's BLOCK flat offsets (int64 once numel passes int32: pid * BLOCK would wrap) and their in-bounds
    mask; the prologue of the elementwise kernels (bias_act's, modulated_conv2d's epilogue)."""
    pid = tl.program_id(0)
    if INT64:
        start = pid.to(tl.int64) * BLOCK
    else:
        start = pid * BLOCK
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < numel


@triton.jit
def _bias_act_kernel(out_ptr, v_ptr, g_ptr, b_ptr, numel, cs, C, alpha, gain, inv_gain, clamp, scalars_ptr,
                     SCALARS_IN_TENSOR: tl.constexpr, ACT: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr,
                     BLOCK: tl.constexpr, INT64: tl.constexpr):
    offs, mask = _block_offsets(numel, BLOCK, INT64)
    ct = tl.float64 if v_ptr.dtype.element_ty == tl.float64 else tl.float32
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
        r = _act(v + bias, alpha, ACT) * gain
        if HAS_CLAMP:
            r = tl.where(r < -clamp, -clamp, tl.where(r > clamp, clamp, r))
    else:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ct)
        if MODE == 1 or MODE == 2:
            d = _grad_y(v * inv_gain, alpha, ACT, MODE)
            r = g * gain * d if MODE == 1 else g * d
            if HAS_CLAMP:
                r = tl.where(tl.abs(v) < clamp, r, 0.0)
        else:
            z = v + bias
            r = g * gain * _grad_x(z, alpha, ACT, MODE - 2)
            if HAS_CLAMP:
                r = tl.where(tl.abs(_act(z, alpha, ACT) * gain) < clamp, r, 0.0)
    tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=mask)


def elementwise_block(t):
    """Elements per program of the elementwise kernels (bias_act's, modulated_conv2d's epilogue, upsample_norm_act's
    apply and spade) on target t: the interpreter runs programs one by one, so fewer, larger blocks there."""
    return 8192 if t.interpret else 1024


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

