"""upsample_norm_act in Triton (forward: the statistics and the apply pass; the backward kernels are in
upsample_norm_act_backward.py): the same split as the C++ kernels (ops/upsample_norm_act.h).

- stats: one program per group (a channel for batch norm, an (n, c) pair otherwise), two deterministic passes
  (mean, then sum of squared deviations) over the upsampled values formed on the fly, never written. Nearest
  upsampling by an integer factor leaves mean and variance unchanged, so the caller passes scale=1 for it and the
  kernel reads x only. Bytes: x read twice; FLOPs: ~8 per upsampled element per pass for bilinear.
- apply: one program per BLOCK output elements in the output's storage order (NCHW or channels_last); each output
  gathers 1 (nearest) or 4 (bilinear) input values, then (u - mean) * a + b and bias_act's activation, gain and
  clamp (vkernels/triton/_activation.py). Bytes: output written once, x read through cache.
Upsampling on the fly and the fp64 scalars are vkernels/triton/_norm_act.py's (shared with spade_norm_act).
Divisions (bilinear weights, means) are div.full.f32 on the GPU, at most 2 ulp (see vkernels/triton/_math.py).
"""
import math

import torch
import triton
import triton.language as tl

from vkernels._dtypes import acc_dtype
from vkernels.triton import _launch
from vkernels.triton._activation import ACT_IDS, act_gain_clamp
from vkernels.triton._dtypes import acc_type
from vkernels.triton._elementwise import block_offsets, elementwise_block
from vkernels.triton._norm_act import (device_of, is_channels_last, memory_format_of, nchw_of, ncdhw_of, plane_advance,
                                       plane_coords, scalar_args, scalar_values, upsampled_value, upsampled_value3d)


@triton.jit
def _group_values(x_ptr, start, hi, nb, c, plane, OW, H, W, sn, sc, sh, sw, s, BILINEAR: tl.constexpr,
                  BLOCK: tl.constexpr):
    # The BLOCK upsampled values of a statistics group from its flat index `start` (sample nb + i // plane, pixel
    # i % plane of channel c) and their in-range mask (i < hi).
    i = start + tl.arange(0, BLOCK)
    mask = i < hi
    n = nb + i // plane
    r = i % plane
    return upsampled_value(x_ptr, n.to(tl.int64) * sn + c * sc, r // OW, r % OW, H, W, sh, sw, s, mask, BILINEAR), mask


@triton.jit
def _stats_kernel(x_ptr, mean_ptr, m2_ptr, C, H, W, sn, sc, sh, sw, s, n_per, chunk, n_chunks, pid1_base,
                  BILINEAR: tl.constexpr, PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr,
                  INT64: tl.constexpr):
    # Program (g, k): chunk k (elements [k chunk, (k + 1) chunk) of the group's n_per * OH * OW upsampled values) of
    # group g; writes the chunk's mean and sum of squared deviations (two passes over the chunk).
    g = tl.program_id(0)
    k = tl.program_id(1) + pid1_base
    c = (g % C).to(tl.int64)
    nb = g // C if PER_SAMPLE else 0
    OW = W * s
    if INT64:  # n_per * OH * OW and the flat indices pass int32
        plane = tl.cast(H, tl.int64) * s * OW
        lo = tl.cast(k, tl.int64) * chunk
    else:
        plane = H * s * OW
        lo = k * chunk
    hi = tl.minimum(lo + chunk, n_per * plane)
    ct = acc_type(x_ptr.dtype.element_ty)
    acc = tl.zeros([BLOCK], dtype=ct)
    for start in range(lo, hi, BLOCK):
        u, mask = _group_values(x_ptr, start, hi, nb, c, plane, OW, H, W, sn, sc, sh, sw, s, BILINEAR, BLOCK)
        acc += tl.where(mask, u, 0.0)
    mu = tl.sum(acc, axis=0) / (hi - lo).to(ct)
    acc2 = tl.zeros([BLOCK], dtype=ct)
    for start in range(lo, hi, BLOCK):
        u, mask = _group_values(x_ptr, start, hi, nb, c, plane, OW, H, W, sn, sc, sh, sw, s, BILINEAR, BLOCK)
        d = tl.where(mask, u - mu, 0.0)
        acc2 += d * d
    tl.store(mean_ptr + g * n_chunks + k, mu)
    tl.store(m2_ptr + g * n_chunks + k, tl.sum(acc2, axis=0))


@triton.jit
def _apply_kernel(out_ptr, x_ptr, m_ptr, a_ptr, b_ptr, numel, C, H, W, sn, sc, sh, sw, s, alpha, gain, clamp,
                  scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr, CL: tl.constexpr, BILINEAR: tl.constexpr,
                  ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, BLOCK: tl.constexpr,
                  INT64: tl.constexpr):
    i, mask = block_offsets(numel, BLOCK, INT64)
    alpha, gain, clamp = scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    n, c, oh, ow = nchw_of(i, C, H * s, W * s, CL)
    u = upsampled_value(x_ptr, n * sn + c * sc, oh, ow, H, W, sh, sw, s, mask, BILINEAR)
    k = n * C + c
    mv = tl.load(m_ptr + k, mask=mask, other=0.0)
    av = tl.load(a_ptr + k, mask=mask, other=0.0)
    bv = tl.load(b_ptr + k, mask=mask, other=0.0)
    r = act_gain_clamp((u - mv) * av + bv, alpha, gain, clamp, ACT, HAS_CLAMP)
    tl.store(out_ptr + i, r.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------------------------
# 5-D x (N, C, D, H, W): nearest or trilinear upsampling by s along D, H and W, the same passes as the 4-D kernels
# (stats: trilinear only, nearest reads x through its 4-D view (N, C, D*H, W); apply: 1 or 8 loads per output).
# --------------------------------------------------------------------------------------------------------------------
@triton.jit
def _group_values3d(x_ptr, start, r0, c0, hi, nb, c, plane, OH, OW, D, H, W, sn, sc, sd, sh, sw, s,
                    BLOCK: tl.constexpr, INT64: tl.constexpr):
    # _group_values for 5-D x, trilinear: the BLOCK upsampled values from flat index `start` of a statistics group,
    # walked as (sample, offset in its volume) by plane_coords (INT64: from the carried r0, c0, all in int32).
    row, r, mask = plane_coords(start, r0, c0, hi, plane, BLOCK, INT64)
    n = nb + row
    t = r // OW
    return upsampled_value3d(x_ptr, n.to(tl.int64) * sn + c * sc, t // OH, t % OH, r % OW, D, H, W, sd, sh, sw, s,
                             mask, True), mask


@triton.jit
def _stats3d_kernel(x_ptr, mean_ptr, m2_ptr, C, D, H, W, sn, sc, sd, sh, sw, s, n_per, chunk, n_chunks, pid1_base,
                    PER_SAMPLE: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    # _stats_kernel for trilinear 5-D x: program (g, k) = chunk k of group g's n_per * OD * OH * OW values. One
    # sample's upsampled volume stays below 2^31 (the launcher checks), so INT64 divides in int32 only.
    g = tl.program_id(0)
    k = tl.program_id(1) + pid1_base
    c = (g % C).to(tl.int64)
    nb = g // C if PER_SAMPLE else 0
    OW = W * s
    OH = H * s
    plane = D * s * OH * OW
    if INT64:
        lo = tl.cast(k, tl.int64) * chunk
        hi = tl.minimum(lo + chunk, tl.cast(n_per, tl.int64) * plane)
        sd = tl.cast(sd, tl.int64)
        sh = tl.cast(sh, tl.int64)
        sw = tl.cast(sw, tl.int64)
        row0 = (lo // plane).to(tl.int32)
        col0 = (lo % plane).to(tl.int32)
    else:
        lo = k * chunk
        hi = tl.minimum(lo + chunk, n_per * plane)
        row0 = tl.full([], 0, tl.int32)
        col0 = tl.full([], 0, tl.int32)
    ct = acc_type(x_ptr.dtype.element_ty)
    acc = tl.zeros([BLOCK], dtype=ct)
    r0, c0 = row0, col0
    for start in range(lo, hi, BLOCK):
        u, mask = _group_values3d(x_ptr, start, r0, c0, hi, nb, c, plane, OH, OW, D, H, W, sn, sc, sd, sh, sw, s,
                                  BLOCK, INT64)
        if INT64:
            r0, c0 = plane_advance(r0, c0, plane, BLOCK)
        acc += tl.where(mask, u, 0.0)
    mu = tl.sum(acc, axis=0) / (hi - lo).to(ct)
    acc2 = tl.zeros([BLOCK], dtype=ct)
    r0, c0 = row0, col0
    for start in range(lo, hi, BLOCK):
        u, mask = _group_values3d(x_ptr, start, r0, c0, hi, nb, c, plane, OH, OW, D, H, W, sn, sc, sd, sh, sw, s,
                                  BLOCK, INT64)
        if INT64:
            r0, c0 = plane_advance(r0, c0, plane, BLOCK)
        d = tl.where(mask, u - mu, 0.0)
        acc2 += d * d
    tl.store(mean_ptr + g * n_chunks + k, mu)
    tl.store(m2_ptr + g * n_chunks + k, tl.sum(acc2, axis=0))


@triton.jit
def _apply3d_kernel(out_ptr, x_ptr, m_ptr, a_ptr, b_ptr, numel, C, D, H, W, sn, sc, sd, sh, sw, s, alpha, gain,
                    clamp, scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr, CL: tl.constexpr, TRILINEAR: tl.constexpr,
                    ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    i, mask = block_offsets(numel, BLOCK, INT64)
    alpha, gain, clamp = scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    if INT64:  # one int64 division finds the sample; within it in int32 (int64 divisions spill under triton 3.6)
        per = C * D * H * W * s * s * s  # the launcher keeps a sample under 2^31 elements
        n = i // per
        _, c, od, oh, ow = ncdhw_of((i - n * per).to(tl.int32), C, D * s, H * s, W * s, CL)
    else:
        n, c, od, oh, ow = ncdhw_of(i, C, D * s, H * s, W * s, CL)
    u = upsampled_value3d(x_ptr, n * sn + c * sc, od, oh, ow, D, H, W, sd, sh, sw, s, mask, TRILINEAR)
    k = n * C + c
    mv = tl.load(m_ptr + k, mask=mask, other=0.0)
    av = tl.load(a_ptr + k, mask=mask, other=0.0)
    bv = tl.load(b_ptr + k, mask=mask, other=0.0)
    r = act_gain_clamp((u - mv) * av + bv, alpha, gain, clamp, ACT, HAS_CLAMP)
    tl.store(out_ptr + i, r.to(out_ptr.dtype.element_ty), mask=mask)


def stats(x, scale, mode, per_sample):
    """Mean and biased variance of up(x) per channel (per (n, c) with per_sample): each group's values are cut into
    chunks, one program per (group, chunk) with its exact two-pass mean and squared deviations, combined in a fixed
    order (Chan et al.'s pairwise formula): batch norm (C groups of N H W s^2 values) gets enough programs to fill
    the GPU instead of C programs scanning everything twice. 5-D x: trilinear through _stats3d_kernel; nearest
    through the 4-D kernel on the (N, C, D*H, W) view (the statistics of x itself)."""
    tri = x.ndim == 5 and mode == "trilinear" and scale > 1
    if x.ndim == 5 and not tri:
        x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], x.shape[4])
        mode, scale = "nearest", 1
    N, C = x.shape[:2]
    ct = acc_dtype(x.dtype)
    shape = (N, C) if per_sample else (C,)
    mean = torch.empty(shape, dtype=ct, device=x.device)
    var = torch.empty(shape, dtype=ct, device=x.device)
    if mean.numel() == 0:
        return mean, var
    if x.numel() == 0:
        return mean.fill_(float("nan")), var.fill_(float("nan"))
    bil = tri or (mode == "bilinear" and scale > 1)
    s = scale if bil else 1  # nearest: the statistics of x are those of up(x)
    groups = N * C if per_sample else C
    total = (1 if per_sample else N) * math.prod(x.shape[2:]) * s ** (x.ndim - 2)
    t = _launch.target(x.device)
    block, chunk = _stats_sizes(t, groups, total)
    n_chunks = triton.cdiv(total, chunk)
    pm = torch.empty((groups, n_chunks), dtype=ct, device=x.device)
    pm2 = torch.empty((groups, n_chunks), dtype=ct, device=x.device)
    big = _launch.index64(total + chunk, _launch.span(x), block)
    n_per = 1 if per_sample else N
    if tri and total // n_per + block >= 2**31:
        raise ValueError(f"upsample_norm_act (Triton): x of shape {tuple(x.shape)} at scale {scale} has 2^31 or more "
                         "upsampled elements per sample, which the trilinear statistics kernel does not index")
    with device_of(x):
        if tri:
            _launch.launch(_stats3d_kernel, (groups, n_chunks), x, pm, pm2, C, *x.shape[2:], *x.stride(), s, n_per,
                           chunk, n_chunks, PER_SAMPLE=per_sample, BLOCK=block, INT64=big, num_warps=4)
        else:
            _launch.launch(_stats_kernel, (groups, n_chunks), x, pm, pm2, C, *x.shape[2:], *x.stride(), s, n_per,
                           chunk, n_chunks, BILINEAR=bil, PER_SAMPLE=per_sample, BLOCK=block, INT64=big,
                           num_warps=4)
    if n_chunks == 1:
        mean.copy_(pm.view(shape))
        var.copy_((pm2 / total).view(shape))
        return mean, var
    cnt = torch.full((n_chunks,), float(chunk), dtype=torch.float64, device=x.device)
    cnt[-1] = total - chunk * (n_chunks - 1)
    pm, pm2 = pm.double(), pm2.double()
    mu = (pm * cnt).sum(1) / total
    m2 = pm2.sum(1) + (cnt * (pm - mu[:, None]) ** 2).sum(1)
    mean.copy_(mu.view(shape))
    var.copy_((m2 / total).view(shape))
    return mean, var


def _stats_sizes(t, groups, total):
    """(BLOCK, chunk) of the statistics kernel on target t: chunks of at least 4 blocks, enough of them for about
    4 programs per SM (the interpreter counts 4 "SMs"), one chunk when the groups alone fill the GPU."""
    block = min(4096 if t.interpret else 1024, triton.next_power_of_2(total))
    want = triton.cdiv(4 * t.sms, groups)
    chunk = max(4 * block, triton.cdiv(total, want))
    return block, triton.cdiv(chunk, block) * block


def apply(x, m, a, b, scale, mode, act, alpha, gain, clamp):
    if x.ndim == 5:
        return _apply3d(x, m, a, b, scale, mode, act, alpha, gain, clamp)
    N, C, H, W = x.shape
    cl = is_channels_last(x)
    out = torch.empty((N, C, H * scale, W * scale), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if cl else torch.contiguous_format)
    n = out.numel()
    if n == 0:
        return out
    m, a, b = m.contiguous(), a.contiguous(), b.contiguous()
    vals, st, exact = scalar_values(x, alpha, gain, clamp)
    block = elementwise_block(_launch.target(x.device))
    with device_of(x):
        _launch.launch(_apply_kernel, (triton.cdiv(n, block),),
            out, x, m, a, b, n, C, H, W, *x.stride(), scale, *vals, st, SCALARS_IN_TENSOR=exact, CL=cl,
            BILINEAR=mode == "bilinear" and scale > 1, ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None,
            BLOCK=block, INT64=_launch.index64(n, x.numel() * 4, block), num_warps=4)
    return out


def _apply3d(x, m, a, b, scale, mode, act, alpha, gain, clamp):
    N, C, D, H, W = x.shape
    out = torch.empty((N, C, D * scale, H * scale, W * scale), dtype=x.dtype, device=x.device,
                      memory_format=memory_format_of(x))
    n = out.numel()
    if n == 0:
        return out
    m, a, b = m.contiguous(), a.contiguous(), b.contiguous()
    vals, st, exact = scalar_values(x, alpha, gain, clamp)
    block = elementwise_block(_launch.target(x.device))
    if max(n // N, _launch.span(x, 1)) + block >= 2**31:  # in one sample the kernel indexes in int32
        raise ValueError(f"upsample_norm_act (Triton): x of shape {tuple(x.shape)} at scale {scale} has 2^31 or more "
                         "elements per sample, which the 5-D apply kernel does not index")
    with device_of(x):
        _launch.launch(_apply3d_kernel, (triton.cdiv(n, block),),
            out, x, m, a, b, n, C, D, H, W, *x.stride(), scale, *vals, st, SCALARS_IN_TENSOR=exact,
            CL=is_channels_last(x), TRILINEAR=mode == "trilinear" and scale > 1, ACT=ACT_IDS[act],
            HAS_CLAMP=clamp is not None, BLOCK=block, INT64=_launch.index64(n, _launch.span(x), block), num_warps=4)
    return out
