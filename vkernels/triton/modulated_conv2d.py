"""modulated_conv2d's two fused pieces in Triton (the convolution stays with torch/cuDNN).

weight: one program per (n, o): reads weight[o] (I*kh*kw) and styles[n], writes wmod[n, o] and dcoefs[n, o];
    3 FLOPs per weight element, accumulated in fp32 (fp64 for fp64).
epilogue: one program per BLOCK elements of x (N, O, H, W) contiguous: z = x * dcoefs[n, o] + noise[n, hw] * ns + b[o]
    then bias_act's math (the Triton helpers of vkernels/triton/_activation.py, not a copy). Reads x (+ g in backward),
    writes y (or dz). Scalars travel in an fp64 tensor (Triton turns Python floats into fp32).
"""
import contextlib

import torch
import triton
import triton.language as tl

from vkernels.triton import _launch
from vkernels.triton._math import div_rn, sqrt_rn
from vkernels.triton._activation import ACT_IDS, act_gain_clamp, act_gain_clamp_grad
from vkernels.triton._dtypes import acc_type
from vkernels.triton._elementwise import block_offsets, elementwise_block


@triton.jit
def _weight_kernel(wmod_ptr, dco_ptr, w_ptr, s_ptr, O, I, K, DEMOD: tl.constexpr, FUSED: tl.constexpr,
                   BLOCK: tl.constexpr):
    no = tl.program_id(0).to(tl.int64)
    n = no // O
    o = no % O
    ct = acc_type(w_ptr.dtype.element_ty)
    IK = I * K
    d = 1.0
    if DEMOD:
        acc = tl.zeros([BLOCK], dtype=ct)
        for j0 in range(0, IK, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            m = j < IK
            wv = tl.load(w_ptr + o * IK + j, mask=m, other=0.0).to(ct)
            sv = tl.load(s_ptr + n * I + j // K, mask=m, other=0.0).to(ct)
            v = wv * sv
            acc += v * v
        d = div_rn(1.0, sqrt_rn(tl.sum(acc, axis=0) + 1e-8))  # correctly rounded on the GPU too (_math)
        tl.store(dco_ptr + no, d.to(dco_ptr.dtype.element_ty))
    if FUSED:
        for j0 in range(0, IK, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            m = j < IK
            wv = tl.load(w_ptr + o * IK + j, mask=m, other=0.0).to(ct)
            sv = tl.load(s_ptr + n * I + j // K, mask=m, other=0.0).to(ct)
            tl.store(wmod_ptr + no * IK + j, (wv * sv * d).to(wmod_ptr.dtype.element_ty), mask=m)


def launch_weight(weight, styles, demodulate, fused):
    N, (O, I, kh, kw) = styles.shape[0], weight.shape
    w, s = weight.contiguous(), styles.contiguous()
    wmod = torch.empty((N, O, I, kh, kw) if fused else (0,), dtype=w.dtype, device=w.device)
    dco = torch.empty((N, O) if demodulate else (0,), dtype=w.dtype, device=w.device)
    if N * O == 0 or not (fused or demodulate):
        return wmod, dco
    block = min(triton.next_power_of_2(I * kh * kw), elementwise_block(_launch.target(w.device)))
    with torch.cuda.device(w.device) if w.is_cuda else contextlib.nullcontext():
        _launch.launch(_weight_kernel, (N * O,), wmod if fused else w, dco if demodulate else w, w, s, O, I, kh * kw,
                                 DEMOD=demodulate, FUSED=fused, BLOCK=block, num_warps=4)
    return wmod, dco


@triton.jit
def _epilogue_kernel(out_ptr, x_ptr, g_ptr, d_ptr, n_ptr, b_ptr, sc_ptr, numel, O, HW, noise_nstride,
                     ACT: tl.constexpr, BACKWARD: tl.constexpr, HAS_D: tl.constexpr, HAS_NOISE: tl.constexpr,
                     HAS_BIAS: tl.constexpr, HAS_CLAMP: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    offs, mask = block_offsets(numel, BLOCK, INT64)
    ct = acc_type(x_ptr.dtype.element_ty)
    alpha = tl.load(sc_ptr).to(ct)
    gain = tl.load(sc_ptr + 1).to(ct)
    clamp = tl.load(sc_ptr + 2).to(ct)
    ns = tl.load(sc_ptr + 3).to(ct)
    plane = offs // HW
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ct)
    if HAS_D:
        z = z * tl.load(d_ptr + plane, mask=mask, other=0.0).to(ct)
    if HAS_NOISE:
        nidx = (plane // O) * noise_nstride + offs % HW
        z = z + tl.load(n_ptr + nidx, mask=mask, other=0.0).to(ct) * ns
    if HAS_BIAS:
        z = z + tl.load(b_ptr + plane % O, mask=mask, other=0.0).to(ct)
    if BACKWARD:
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ct)
        r = act_gain_clamp_grad(g, z, alpha, gain, clamp, ACT, HAS_CLAMP, 1)
    else:
        r = act_gain_clamp(z, alpha, gain, clamp, ACT, HAS_CLAMP)
    tl.store(out_ptr + offs, r.to(out_ptr.dtype.element_ty), mask=mask)


def launch_epilogue(x, g, dcoefs, noise, noise_strength, b, act, alpha, gain, clamp):
    """Forward (g None) or dL/dz (g given) of the epilogue; x (N, O, H, W), contiguous output."""
    x = x.contiguous()
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    N, O, H, W = x.shape
    sc = torch.tensor([alpha, gain, clamp if clamp is not None else 0.0, 1.0], dtype=torch.float64, device=x.device)
    if noise is not None and noise_strength is not None:
        sc[3:] = noise_strength.detach().reshape(1).to(torch.float64)
    block = elementwise_block(_launch.target(x.device))
    gg = g.contiguous() if g is not None else x
    nz = noise.contiguous() if noise is not None else x
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _launch.launch(_epilogue_kernel, (triton.cdiv(n, block),),
            out, x, gg, dcoefs.contiguous() if dcoefs is not None else x, nz,
            b.contiguous() if b is not None else x, sc, n, O, H * W,
            (H * W if noise.shape[0] != 1 else 0) if noise is not None else 0,
            ACT=ACT_IDS[act], BACKWARD=g is not None, HAS_D=dcoefs is not None, HAS_NOISE=noise is not None,
            HAS_BIAS=b is not None, HAS_CLAMP=clamp is not None, BLOCK=block, INT64=n + block >= 2**31,
            num_warps=4)
    return out
