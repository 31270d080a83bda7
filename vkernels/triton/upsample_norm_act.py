"""upsample_norm_act / spade_norm_act in Triton: the same split as the C++ kernels (ops/upsample_norm_act.h).

- stats: one program per group (a channel for batch norm, an (n, c) pair otherwise), two deterministic passes
  (mean, then sum of squared deviations) over the upsampled values formed on the fly, never written. Nearest
  upsampling by an integer factor leaves mean and variance unchanged, so the caller passes scale=1 for it and the
  kernel reads x only. Bytes: x read twice; FLOPs: ~8 per upsampled element per pass for bilinear.
- apply: one program per BLOCK output elements in the output's storage order (NCHW or channels_last); each output
  gathers 1 (nearest) or 4 (bilinear) input values, then (u - mean) * a + b and bias_act's activation, gain and
  clamp (the @triton.jit helpers of vkernels/triton/bias_act.py). Bytes: output written once, x read through cache.
- spade: elementwise, reads x, gamma, beta with their own strides, writes out.
Bilinear weights use the exact rational source coordinate (2*o + 1 - s) / (2*s) (align_corners=False), rounded once.
Python floats become fp32 kernel arguments, so for fp64 tensors alpha/gain/clamp travel in an fp64 tensor.
Divisions (bilinear weights, means) are div.full.f32 on the GPU, at most 2 ulp (see vkernels/triton/_math.py).
"""
import contextlib

import torch
import triton
import triton.language as tl

from vkernels.triton import _launch
from vkernels.triton.bias_act import ACT_IDS, _act, elementwise_block


@triton.jit
def _lin(o, s, size):
    # 1-D linear interpolation source (align_corners=False) for output coordinate o: (i0, i1, weight of i1).
    num = 2 * o + 1 - s
    num = tl.where(num < 0, 0, num)
    i0 = num // (2 * s)
    i0 = tl.where(i0 > size - 1, size - 1, i0)
    l1 = (num - i0 * 2 * s).to(tl.float32) / (2 * s)
    i1 = tl.where(i0 < size - 1, i0 + 1, i0)
    return i0, i1, l1


@triton.jit
def _lin64(o, s, size):
    num = 2 * o + 1 - s
    num = tl.where(num < 0, 0, num)
    i0 = num // (2 * s)
    i0 = tl.where(i0 > size - 1, size - 1, i0)
    l1 = (num - i0 * 2 * s).to(tl.float64) / (2 * s)
    i1 = tl.where(i0 < size - 1, i0 + 1, i0)
    return i0, i1, l1


@triton.jit
def _up_value(x_ptr, base, oh, ow, H, W, sh, sw, s, mask, BILINEAR: tl.constexpr, F64: tl.constexpr):
    if BILINEAR:
        if F64:
            h0, h1, lh = _lin64(oh, s, H)
            w0, w1, lw = _lin64(ow, s, W)
            ct = tl.float64
        else:
            h0, h1, lh = _lin(oh, s, H)
            w0, w1, lw = _lin(ow, s, W)
            ct = tl.float32
        v00 = tl.load(x_ptr + base + h0 * sh + w0 * sw, mask=mask, other=0.0).to(ct)
        v01 = tl.load(x_ptr + base + h0 * sh + w1 * sw, mask=mask, other=0.0).to(ct)
        v10 = tl.load(x_ptr + base + h1 * sh + w0 * sw, mask=mask, other=0.0).to(ct)
        v11 = tl.load(x_ptr + base + h1 * sh + w1 * sw, mask=mask, other=0.0).to(ct)
        t0 = (1.0 - lw) * v00 + lw * v01
        t1 = (1.0 - lw) * v10 + lw * v11
        u = (1.0 - lh) * t0 + lh * t1
    else:
        ct = tl.float64 if F64 else tl.float32
        u = tl.load(x_ptr + base + (oh // s) * sh + (ow // s) * sw, mask=mask, other=0.0).to(ct)
    return u


@triton.jit
def _stats_kernel(x_ptr, mean_ptr, m2_ptr, C, H, W, sn, sc, sh, sw, s, n_per, chunk, n_chunks, pid1_base,
                  BILINEAR: tl.constexpr, PER_SAMPLE: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
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
    ct = tl.float64 if F64 else tl.float32
    acc = tl.zeros([BLOCK], dtype=ct)
    for start in range(lo, hi, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < hi
        n = nb + i // plane
        r = i % plane
        u = _up_value(x_ptr, n.to(tl.int64) * sn + c * sc, r // OW, r % OW, H, W, sh, sw, s, mask, BILINEAR, F64)
        acc += tl.where(mask, u, 0.0)
    mu = tl.sum(acc, axis=0) / (hi - lo).to(ct)
    acc2 = tl.zeros([BLOCK], dtype=ct)
    for start in range(lo, hi, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < hi
        n = nb + i // plane
        r = i % plane
        u = _up_value(x_ptr, n.to(tl.int64) * sn + c * sc, r // OW, r % OW, H, W, sh, sw, s, mask, BILINEAR, F64)
        d = tl.where(mask, u - mu, 0.0)
        acc2 += d * d
    tl.store(mean_ptr + g * n_chunks + k, mu)
    tl.store(m2_ptr + g * n_chunks + k, tl.sum(acc2, axis=0))


@triton.jit
def _finish(z, alpha, gain, clamp, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr):
    r = _act(z, alpha, ACT) * gain
    if HAS_CLAMP:
        r = tl.where(r < -clamp, -clamp, tl.where(r > clamp, clamp, r))
    return r


@triton.jit
def _elem_block(numel, BLOCK: tl.constexpr, INT64: tl.constexpr):
    # This program's flat element indices (int64 when numel may pass int32) and their in-range mask.
    pid = tl.program_id(0)
    if INT64:
        start = pid.to(tl.int64) * BLOCK
    else:
        start = pid * BLOCK
    i = start + tl.arange(0, BLOCK)
    return i, i < numel


@triton.jit
def _scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr):
    # fp64 kernels read alpha / gain / clamp from an fp64 tensor (Python float kernel arguments are fp32).
    if SCALARS_IN_TENSOR:
        alpha = tl.load(scalars_ptr)
        gain = tl.load(scalars_ptr + 1)
        clamp = tl.load(scalars_ptr + 2)
    return alpha, gain, clamp


@triton.jit
def _nchw_of(i, C, H, W, CL: tl.constexpr):
    # (n, c, h, w) of flat index i of an (N, C, H, W) tensor stored NCHW or channels_last.
    if CL:
        c = i % C
        t = i // C
        w = t % W
        t = t // W
        h = t % H
        n = t // H
    else:
        w = i % W
        t = i // W
        h = t % H
        t = t // H
        c = t % C
        n = t // C
    return n, c, h, w


@triton.jit
def _apply_kernel(out_ptr, x_ptr, m_ptr, a_ptr, b_ptr, numel, C, H, W, sn, sc, sh, sw, s, alpha, gain, clamp,
                  scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr, CL: tl.constexpr, BILINEAR: tl.constexpr,
                  ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
                  INT64: tl.constexpr):
    i, mask = _elem_block(numel, BLOCK, INT64)
    alpha, gain, clamp = _scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    n, c, oh, ow = _nchw_of(i, C, H * s, W * s, CL)
    u = _up_value(x_ptr, n * sn + c * sc, oh, ow, H, W, sh, sw, s, mask, BILINEAR, F64)
    k = n * C + c
    mv = tl.load(m_ptr + k, mask=mask, other=0.0)
    av = tl.load(a_ptr + k, mask=mask, other=0.0)
    bv = tl.load(b_ptr + k, mask=mask, other=0.0)
    r = _finish((u - mv) * av + bv, alpha, gain, clamp, ACT, HAS_CLAMP)
    tl.store(out_ptr + i, r.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _spade_kernel(out_ptr, x_ptr, g_ptr, t_ptr, m_ptr, r_ptr, numel, C, H, W, sx0, sx1, sx2, sx3, sg0, sg1, sg2,
                  sg3, st0, st1, st2, st3, alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr,
                  CL: tl.constexpr, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, F64: tl.constexpr,
                  BLOCK: tl.constexpr, INT64: tl.constexpr):
    i, mask = _elem_block(numel, BLOCK, INT64)
    ct = tl.float64 if F64 else tl.float32
    alpha, gain, clamp = _scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    n, c, h, w = _nchw_of(i, C, H, W, CL)
    xv = tl.load(x_ptr + n * sx0 + c * sx1 + h * sx2 + w * sx3, mask=mask, other=0.0).to(ct)
    gv = tl.load(g_ptr + n * sg0 + c * sg1 + h * sg2 + w * sg3, mask=mask, other=0.0).to(ct)
    tv = tl.load(t_ptr + n * st0 + c * st1 + h * st2 + w * st3, mask=mask, other=0.0).to(ct)
    k = n * C + c
    mv = tl.load(m_ptr + k, mask=mask, other=0.0)
    rv = tl.load(r_ptr + k, mask=mask, other=0.0)
    r = _finish((xv - mv) * rv * (1.0 + gv) + tv, alpha, gain, clamp, ACT, HAS_CLAMP)
    tl.store(out_ptr + i, r.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------------------------
# 5-D x (N, C, D, H, W): nearest or trilinear upsampling by s along D, H and W, the same passes as the 4-D kernels
# (stats: trilinear only, nearest reads x through its 4-D view (N, C, D*H, W); apply: 1 or 8 loads per output).
# --------------------------------------------------------------------------------------------------------------------
@triton.jit
def _up_value3d(x_ptr, base, od, oh, ow, D, H, W, sd, sh, sw, s, mask, TRILINEAR: tl.constexpr, F64: tl.constexpr):
    # Blended along W, then H, then D (the C++ kernels' order).
    if TRILINEAR:
        if F64:
            d0, d1, ld = _lin64(od, s, D)
            h0, h1, lh = _lin64(oh, s, H)
            w0, w1, lw = _lin64(ow, s, W)
            ct = tl.float64
        else:
            d0, d1, ld = _lin(od, s, D)
            h0, h1, lh = _lin(oh, s, H)
            w0, w1, lw = _lin(ow, s, W)
            ct = tl.float32
        p0 = x_ptr + base + d0 * sd
        p1 = x_ptr + base + d1 * sd
        v000 = tl.load(p0 + h0 * sh + w0 * sw, mask=mask, other=0.0).to(ct)
        v001 = tl.load(p0 + h0 * sh + w1 * sw, mask=mask, other=0.0).to(ct)
        v010 = tl.load(p0 + h1 * sh + w0 * sw, mask=mask, other=0.0).to(ct)
        v011 = tl.load(p0 + h1 * sh + w1 * sw, mask=mask, other=0.0).to(ct)
        v100 = tl.load(p1 + h0 * sh + w0 * sw, mask=mask, other=0.0).to(ct)
        v101 = tl.load(p1 + h0 * sh + w1 * sw, mask=mask, other=0.0).to(ct)
        v110 = tl.load(p1 + h1 * sh + w0 * sw, mask=mask, other=0.0).to(ct)
        v111 = tl.load(p1 + h1 * sh + w1 * sw, mask=mask, other=0.0).to(ct)
        t0 = (1.0 - lh) * ((1.0 - lw) * v000 + lw * v001) + lh * ((1.0 - lw) * v010 + lw * v011)
        t1 = (1.0 - lh) * ((1.0 - lw) * v100 + lw * v101) + lh * ((1.0 - lw) * v110 + lw * v111)
        u = (1.0 - ld) * t0 + ld * t1
    else:
        ct = tl.float64 if F64 else tl.float32
        u = tl.load(x_ptr + base + (od // s) * sd + (oh // s) * sh + (ow // s) * sw, mask=mask, other=0.0).to(ct)
    return u


@triton.jit
def _stats3d_kernel(x_ptr, mean_ptr, m2_ptr, C, D, H, W, sn, sc, sd, sh, sw, s, n_per, chunk, n_chunks, pid1_base,
                    PER_SAMPLE: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    # _stats_kernel for trilinear 5-D x: program (g, k) = chunk k of group g's n_per * OD * OH * OW values.
    g = tl.program_id(0)
    k = tl.program_id(1) + pid1_base
    c = (g % C).to(tl.int64)
    nb = g // C if PER_SAMPLE else 0
    OW = W * s
    OH = H * s
    if INT64:
        plane = tl.cast(D, tl.int64) * s * OH * OW
        lo = tl.cast(k, tl.int64) * chunk
    else:
        plane = D * s * OH * OW
        lo = k * chunk
    hi = tl.minimum(lo + chunk, n_per * plane)
    ct = tl.float64 if F64 else tl.float32
    acc = tl.zeros([BLOCK], dtype=ct)
    for start in range(lo, hi, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < hi
        n = nb + i // plane
        r = i % plane
        t = r // OW
        u = _up_value3d(x_ptr, n.to(tl.int64) * sn + c * sc, t // OH, t % OH, r % OW, D, H, W, sd, sh, sw, s, mask,
                        True, F64)
        acc += tl.where(mask, u, 0.0)
    mu = tl.sum(acc, axis=0) / (hi - lo).to(ct)
    acc2 = tl.zeros([BLOCK], dtype=ct)
    for start in range(lo, hi, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < hi
        n = nb + i // plane
        r = i % plane
        t = r // OW
        u = _up_value3d(x_ptr, n.to(tl.int64) * sn + c * sc, t // OH, t % OH, r % OW, D, H, W, sd, sh, sw, s, mask,
                        True, F64)
        d = tl.where(mask, u - mu, 0.0)
        acc2 += d * d
    tl.store(mean_ptr + g * n_chunks + k, mu)
    tl.store(m2_ptr + g * n_chunks + k, tl.sum(acc2, axis=0))


@triton.jit
def _ncdhw_of(i, C, D, H, W, CL: tl.constexpr):
    # (n, c, d, h, w) of flat index i of an (N, C, D, H, W) tensor stored NCDHW or channels_last_3d.
    if CL:
        c = i % C
        t = i // C
        w = t % W
        t = t // W
        h = t % H
        t = t // H
        d = t % D
        n = t // D
    else:
        w = i % W
        t = i // W
        h = t % H
        t = t // H
        d = t % D
        t = t // D
        c = t % C
        n = t // C
    return n, c, d, h, w


@triton.jit
def _apply3d_kernel(out_ptr, x_ptr, m_ptr, a_ptr, b_ptr, numel, C, D, H, W, sn, sc, sd, sh, sw, s, alpha, gain,
                    clamp, scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr, CL: tl.constexpr, TRILINEAR: tl.constexpr,
                    ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, F64: tl.constexpr, BLOCK: tl.constexpr,
                    INT64: tl.constexpr):
    i, mask = _elem_block(numel, BLOCK, INT64)
    alpha, gain, clamp = _scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    n, c, od, oh, ow = _ncdhw_of(i, C, D * s, H * s, W * s, CL)
    u = _up_value3d(x_ptr, n * sn + c * sc, od, oh, ow, D, H, W, sd, sh, sw, s, mask, TRILINEAR, F64)
    k = n * C + c
    mv = tl.load(m_ptr + k, mask=mask, other=0.0)
    av = tl.load(a_ptr + k, mask=mask, other=0.0)
    bv = tl.load(b_ptr + k, mask=mask, other=0.0)
    r = _finish((u - mv) * av + bv, alpha, gain, clamp, ACT, HAS_CLAMP)
    tl.store(out_ptr + i, r.to(out_ptr.dtype.element_ty), mask=mask)


def _device(x):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _is_cl(x):
    fmt = torch.channels_last if x.ndim == 4 else torch.channels_last_3d
    return not x.is_contiguous() and x.is_contiguous(memory_format=fmt)


def _fmt(x):
    """The memory format of upsample_norm_act's outputs and gradients for x (4-D or 5-D): x's when channels_last."""
    if not _is_cl(x):
        return torch.contiguous_format
    return torch.channels_last if x.ndim == 4 else torch.channels_last_3d


def _scalars(x, alpha, gain, clamp):
    vals = (float(alpha), float(gain), float(clamp if clamp is not None else 0.0))
    exact = x.dtype == torch.float64
    return vals, (torch.tensor(vals, dtype=torch.float64, device=x.device) if exact else x), exact


def stats(x, scale, mode, per_sample):
    """Mean and biased variance of up(x) per channel (per (n, c) with per_sample): each group's values are cut into
    chunks, one program per (group, chunk) with its exact two-pass mean and squared deviations, combined in a fixed
    order (Chan et al.'s pairwise formula): batch norm (C groups of N H W s^2 values) gets enough programs to fill
    the GPU instead of C programs scanning everything twice. 5-D x: trilinear through _stats3d; nearest through
    the 4-D pass on the (N, C, D*H, W) view (the statistics of x itself)."""
    if x.ndim == 5:
        if mode == "trilinear" and scale > 1:
            return _stats3d(x, scale, per_sample)
        x = x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], x.shape[4])
        mode, scale = "nearest", 1
    N, C, H, W = x.shape
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    shape = (N, C) if per_sample else (C,)
    mean = torch.empty(shape, dtype=ct, device=x.device)
    var = torch.empty(shape, dtype=ct, device=x.device)
    if mean.numel() == 0:
        return mean, var
    if x.numel() == 0:
        return mean.fill_(float("nan")), var.fill_(float("nan"))
    bil = mode == "bilinear" and scale > 1
    s = scale if bil else 1  # nearest: the statistics of x are those of up(x)
    groups = N * C if per_sample else C
    total = (1 if per_sample else N) * H * W * s * s
    t = _launch.target(x.device)
    block, chunk = _stats_sizes(t, groups, total)
    n_chunks = triton.cdiv(total, chunk)
    pm = torch.empty((groups, n_chunks), dtype=ct, device=x.device)
    pm2 = torch.empty((groups, n_chunks), dtype=ct, device=x.device)
    extent = sum((d - 1) * abs(st) for d, st in zip(x.shape, x.stride())) + 1
    big = max(total + chunk, extent) + block >= 2**31
    with _device(x):
        _launch.launch(_stats_kernel, (groups, n_chunks), x, pm, pm2, C, H, W, *x.stride(), s,
                       1 if per_sample else N, chunk, n_chunks, BILINEAR=bil, PER_SAMPLE=per_sample,
                       F64=ct == torch.float64, BLOCK=block, INT64=big, num_warps=4)
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


def _stats3d(x, scale, per_sample):
    """stats() of 5-D x with trilinear upsampling by scale > 1: the same chunks and combination, the 3-D kernel."""
    N, C, D, H, W = x.shape
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    shape = (N, C) if per_sample else (C,)
    mean = torch.empty(shape, dtype=ct, device=x.device)
    var = torch.empty(shape, dtype=ct, device=x.device)
    if mean.numel() == 0:
        return mean, var
    if x.numel() == 0:
        return mean.fill_(float("nan")), var.fill_(float("nan"))
    groups = N * C if per_sample else C
    total = (1 if per_sample else N) * D * H * W * scale ** 3
    t = _launch.target(x.device)
    block, chunk = _stats_sizes(t, groups, total)
    n_chunks = triton.cdiv(total, chunk)
    pm = torch.empty((groups, n_chunks), dtype=ct, device=x.device)
    pm2 = torch.empty((groups, n_chunks), dtype=ct, device=x.device)
    extent = sum((d - 1) * abs(st) for d, st in zip(x.shape, x.stride())) + 1
    big = max(total + chunk, extent) + block >= 2**31
    with _device(x):
        _launch.launch(_stats3d_kernel, (groups, n_chunks), x, pm, pm2, C, D, H, W, *x.stride(), scale,
                       1 if per_sample else N, chunk, n_chunks, PER_SAMPLE=per_sample, F64=ct == torch.float64,
                       BLOCK=block, INT64=big, num_warps=4)
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
    cl = _is_cl(x)
    out = torch.empty((N, C, H * scale, W * scale), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if cl else torch.contiguous_format)
    n = out.numel()
    if n == 0:
        return out
    m, a, b = m.contiguous(), a.contiguous(), b.contiguous()
    vals, st, exact = _scalars(x, alpha, gain, clamp)
    block = elementwise_block(_launch.target(x.device))
    with _device(x):
        _launch.launch(_apply_kernel, (triton.cdiv(n, block),),
            out, x, m, a, b, n, C, H, W, *x.stride(), scale, *vals, st, SCALARS_IN_TENSOR=exact, CL=cl,
            BILINEAR=mode == "bilinear" and scale > 1, ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None,
            F64=x.dtype == torch.float64, BLOCK=block, INT64=max(n, x.numel() * 4) + block >= 2**31, num_warps=4)
    return out


def _apply3d(x, m, a, b, scale, mode, act, alpha, gain, clamp):
    N, C, D, H, W = x.shape
    out = torch.empty((N, C, D * scale, H * scale, W * scale), dtype=x.dtype, device=x.device,
                      memory_format=_fmt(x))
    n = out.numel()
    if n == 0:
        return out
    m, a, b = m.contiguous(), a.contiguous(), b.contiguous()
    vals, st, exact = _scalars(x, alpha, gain, clamp)
    block = elementwise_block(_launch.target(x.device))
    extent = sum((d - 1) * abs(t) for d, t in zip(x.shape, x.stride())) + 1
    with _device(x):
        _launch.launch(_apply3d_kernel, (triton.cdiv(n, block),),
            out, x, m, a, b, n, C, D, H, W, *x.stride(), scale, *vals, st, SCALARS_IN_TENSOR=exact, CL=_is_cl(x),
            TRILINEAR=mode == "trilinear" and scale > 1, ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None,
            F64=x.dtype == torch.float64, BLOCK=block, INT64=max(n, extent) + block >= 2**31, num_warps=4)
    return out


def spade(x, m, r, gamma, beta, act, alpha, gain, clamp):
    N, C, H, W = x.shape
    cl = _is_cl(x)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if cl else torch.contiguous_format)
    n = out.numel()
    if n == 0:
        return out
    m, r = m.contiguous(), r.contiguous()
    vals, st, exact = _scalars(x, alpha, gain, clamp)
    block = elementwise_block(_launch.target(x.device))
    big = max(n, max((t.shape[d] - 1) * abs(t.stride(d)) for t in (x, gamma, beta) for d in range(4)) + 1)
    with _device(x):
        _launch.launch(_spade_kernel, (triton.cdiv(n, block),),
            out, x, gamma, beta, m, r, n, C, H, W, *x.stride(), *gamma.stride(), *beta.stride(), *vals, st,
            SCALARS_IN_TENSOR=exact, CL=cl, ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None,
            F64=x.dtype == torch.float64, BLOCK=block, INT64=big + block >= 2**31, num_warps=4)
    return out
