"""spade_norm_act in Triton: norm(x) * (1 + gamma) + beta, then bias_act's activation, gain and clamp; the
statistics are upsample_norm_act_stats' (scale 1).

- forward: elementwise, one program per BLOCK elements in the output's storage order; reads x, gamma, beta with
  their own strides, writes out. Bytes: x, gamma, beta read once, out written once; FLOPs: ~5 + the activation's.
- backward (first order): one program per (n, c) plane, one pass: reads dy, x, gamma, beta; writes dx, dgamma, dbeta
  and the plane's fp64 sums of dz (1 + gamma) and dz (1 + gamma) (x - m), in a fixed order (deterministic). Clamped
  elements get zero gradient, as bias_act_grad's x-ref mode.
fp64 tensors take alpha/gain/clamp from an fp64 tensor. Plane offsets are int64; the flat indices inside a plane
are int32 unless one image of a tensor spans 2^31 elements or more: then INT64 carries each block's row and column
in int32 from block to block and forms the addresses with int64 strides (an int64 division would compile to a
ptxas subroutine call that spills registers).
"""
import torch
import triton
import triton.language as tl

from vkernels.triton import _launch
from vkernels.triton._activation import ACT_IDS, act_gain_clamp, act_gain_clamp_grad
from vkernels.triton._dtypes import acc_type
from vkernels.triton._elementwise import block_offsets, elementwise_block
from vkernels.triton._norm_act import (device_of, empty_in_format, image_int64, is_channels_last, nchw_of,
                                       plane_advance, plane_block, plane_coords, plane_of_program, scalar_args, scalar_values)


@triton.jit
def _spade_kernel(out_ptr, x_ptr, g_ptr, t_ptr, m_ptr, r_ptr, numel, C, H, W, sx0, sx1, sx2, sx3, sg0, sg1, sg2,
                  sg3, st0, st1, st2, st3, alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr,
                  CL: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, BLOCK: tl.constexpr,
                  INT64: tl.constexpr):
    i, mask = block_offsets(numel, BLOCK, INT64)
    ct = acc_type(x_ptr.dtype.element_ty)
    alpha, gain, clamp = scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    n, c, h, w = nchw_of(i, C, H, W, CL)
    xv = tl.load(x_ptr + n * sx0 + c * sx1 + h * sx2 + w * sx3, mask=mask, other=0.0).to(ct)
    gv = tl.load(g_ptr + n * sg0 + c * sg1 + h * sg2 + w * sg3, mask=mask, other=0.0).to(ct)
    tv = tl.load(t_ptr + n * st0 + c * st1 + h * st2 + w * st3, mask=mask, other=0.0).to(ct)
    k = n * C + c
    mv = tl.load(m_ptr + k, mask=mask, other=0.0)
    rv = tl.load(r_ptr + k, mask=mask, other=0.0)
    r = act_gain_clamp((xv - mv) * rv * (1.0 + gv) + tv, alpha, gain, clamp, ACT, HAS_CLAMP)
    tl.store(out_ptr + i, r.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _spade_bwd_kernel(dx_ptr, dg_ptr, dt_ptr, s1_ptr, s2_ptr, dy_ptr, x_ptr, g_ptr, t_ptr, m_ptr, r_ptr, C, W, HW,
                      sy0, sy1, sy2, sy3, sx0, sx1, sx2, sx3, sg0, sg1, sg2, sg3, st0, st1, st2, st3,
                      so0, so1, so2, so3, alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr,
                      ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, NEED_DX: tl.constexpr,
                      NEED_DG: tl.constexpr, NEED_DT: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    g, n, c = plane_of_program(C)
    ct = acc_type(x_ptr.dtype.element_ty)
    alpha, gain, clamp = scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    mv = tl.load(m_ptr + g)
    rv = tl.load(r_ptr + g)
    a1 = tl.zeros([BLOCK], dtype=tl.float64)
    a2 = tl.zeros([BLOCK], dtype=tl.float64)
    if INT64:
        sy2 = tl.cast(sy2, tl.int64)
        sy3 = tl.cast(sy3, tl.int64)
        sx2 = tl.cast(sx2, tl.int64)
        sx3 = tl.cast(sx3, tl.int64)
        sg2 = tl.cast(sg2, tl.int64)
        sg3 = tl.cast(sg3, tl.int64)
        st2 = tl.cast(st2, tl.int64)
        st3 = tl.cast(st3, tl.int64)
        so2 = tl.cast(so2, tl.int64)
        so3 = tl.cast(so3, tl.int64)
    r0 = tl.full([], 0, tl.int32)
    c0 = tl.full([], 0, tl.int32)
    for start in range(0, HW, BLOCK):
        h, w, mask = plane_coords(start, r0, c0, HW, W, BLOCK, INT64)
        if INT64:
            r0, c0 = plane_advance(r0, c0, W, BLOCK)
        dy = tl.load(dy_ptr + n * sy0 + c * sy1 + h * sy2 + w * sy3, mask=mask, other=0.0).to(ct)
        xv = tl.load(x_ptr + n * sx0 + c * sx1 + h * sx2 + w * sx3, mask=mask, other=0.0).to(ct)
        gv = tl.load(g_ptr + n * sg0 + c * sg1 + h * sg2 + w * sg3, mask=mask, other=0.0).to(ct)
        tv = tl.load(t_ptr + n * st0 + c * st1 + h * st2 + w * st3, mask=mask, other=0.0).to(ct)
        xc = xv - mv
        xn = xc * rv
        g1 = 1.0 + gv
        z = xn * g1 + tv
        dz = act_gain_clamp_grad(dy, z, alpha, gain, clamp, ACT, HAS_CLAMP, 1)
        dz = tl.where(mask, dz, 0.0)
        dxn = dz * g1
        o = n * so0 + c * so1 + h * so2 + w * so3
        if NEED_DX:
            tl.store(dx_ptr + o, (dxn * rv).to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_DG:
            tl.store(dg_ptr + o, (dz * xn).to(dg_ptr.dtype.element_ty), mask=mask)
        if NEED_DT:
            tl.store(dt_ptr + o, dz.to(dt_ptr.dtype.element_ty), mask=mask)
        a1 += dxn.to(tl.float64)
        a2 += dxn.to(tl.float64) * xc.to(tl.float64)
    tl.store(s1_ptr + g, tl.sum(a1, axis=0).to(s1_ptr.dtype.element_ty))
    tl.store(s2_ptr + g, tl.sum(a2, axis=0).to(s2_ptr.dtype.element_ty))


def spade(x, m, r, gamma, beta, act, alpha, gain, clamp):
    N, C, H, W = x.shape
    cl = is_channels_last(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if cl else torch.contiguous_format)
    n = out.numel()
    if n == 0:
        return out
    m, r = m.contiguous(), r.contiguous()
    vals, st, exact = scalar_values(x, alpha, gain, clamp)
    block = elementwise_block(_launch.target(x.device))
    big = max(n, max((t.shape[d] - 1) * abs(t.stride(d)) for t in (x, gamma, beta) for d in range(4)) + 1)
    with device_of(x):
        _launch.launch(_spade_kernel, (triton.cdiv(n, block),),
            out, x, gamma, beta, m, r, n, C, H, W, *x.stride(), *gamma.stride(), *beta.stride(), *vals, st,
            SCALARS_IN_TENSOR=exact, CL=cl, ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None,
            BLOCK=block, INT64=big + block >= 2**31, num_warps=4)
    return out


def spade_backward(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, mask):
    N, C, H, W = x.shape
    ct = m.dtype
    full = [empty_in_format(x, x.shape) if k else x.new_empty(0) for k in (mask[0], mask[3], mask[4])]
    s1 = torch.zeros((N, C), dtype=ct, device=x.device)
    s2 = torch.zeros((N, C), dtype=ct, device=x.device)
    if x.numel() > 0:
        ref = next((t for t in full if t.numel() > 0), None)
        so = ref.stride() if ref is not None else (0, 0, 0, 0)
        vals, st, exact = scalar_values(x, alpha, gain, clamp)
        with device_of(x):
            _launch.launch(_spade_bwd_kernel, (N * C,),
                *(t if t.numel() > 0 else x for t in full), s1, s2, dy, x, gamma, beta, m.contiguous(),
                r.contiguous(), C, W, H * W, *dy.stride(), *x.stride(), *gamma.stride(), *beta.stride(), *so, *vals,
                st, SCALARS_IN_TENSOR=exact, ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None,
                NEED_DX=mask[0], NEED_DG=mask[3], NEED_DT=mask[4],
                BLOCK=plane_block(_launch.target(x.device), H * W), INT64=image_int64(dy, x, gamma, beta, ref),
                num_warps=4)
    e = m.new_empty(0)
    return full[0], -(s1 * r) if mask[1] else e, s2 if mask[2] else e, full[1], full[2]
