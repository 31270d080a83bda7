"""upfirdn2d in Triton: a polyphase gather in 2-D tiles; an output visits only the taps that land on input pixels.

Output o (per axis) reads the upsampled, padded image at o*down + tap - pad0; only the taps with
(o*down + tap - pad0) % up == 0 hit an input pixel. Those are tap0 + k*up for k < ceil(F/up), where tap0 follows
from the output's phase, and their input index is consecutive (base + k). So an output visits
ceil(fh/upy) x ceil(fw/upx) taps, never an inserted zero; a phase whose last tap falls past the filter masks it.
Tiles, both 2-D:
  - NCHW (any non-channels_last strides): rows of one vertical phase class (oy = ph + m*Py, Py = upy/gcd(upy, downy);
    the input row advances by downy/gcd per m) x BB columns; rows of several planes share a tile. The row phase is one
    scalar per program, so the vertical first tap is too; the horizontal one is gathered per column.
  - channels_last: BA output pixels x BB channels; a pixel's first taps are gathered once and serve all its channels.
Weights: gathered from the (fh, fw) tap table per phase (an L1-resident gather); no per-phase table is built on the
host, since upfirdn2d's filter is prepared per call and a rearrangement would cost host work on every call.
fp16/bf16 accumulate in fp32, fp64 in fp64. A 1-D (separable) filter is two launches, horizontal then vertical,
through an fp32 (fp64) intermediate, as StyleGAN's CUDA op does.
Bytes: reads x (each input pixel about fh*fw/(downx*downy) times, mostly from cache), writes out once (separable:
plus the intermediate's write and read); FLOPs 2*ceil(fh/upy)*ceil(fw/upx) per output; separable: 2*ceil(fw/upx)
per intermediate element (N*C*H*outW) plus 2*ceil(fh/upy) per output. Not timed on a GPU yet.
Index arithmetic is kept non-negative (the padding is folded into a positive offset) because `//` and `%` on
negative integers differ between Triton on GPU (C semantics) and the interpreter (numpy floor semantics).
"""
import contextlib
import math

import torch
import triton
import triton.language as tl

from vkernels._dtypes import acc_dtype
from vkernels.triton import _launch
from vkernels.triton._dtypes import acc_type


@triton.jit
def _accumulate(acc, xp, w_ptr, iy0, i0, ix0, j0, valid, H, W, sxh, sxw, upx, upy,
                FH: tl.constexpr, FW: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr):
    """acc += sum over the taps i = i0 + t*upy, j = j0 + s*upx (t < TH, s < TW) of w[i, j] * x[iy0 + t, ix0 + s];
    the row terms (iy0, i0) and column terms (ix0, j0) broadcast against acc."""
    # Row terms once per t, column terms carried, and row and column masks combined once per tap: fewer
    # full-tile operations (the interpreter pays for each, and for every integer add and multiply).
    i = i0
    iy = iy0
    for _t in range(TH):
        vi = i < FH
        vy = valid & (vi & (iy >= 0) & (iy < H))
        wr = w_ptr + i * FW
        xr = xp + iy * sxh
        j = j0
        ix = ix0
        for _s in range(TW):
            vj = j < FW
            wv = tl.load(wr + j, mask=vi & vj, other=0.0).to(acc.dtype)
            xv = tl.load(xr + ix * sxw, mask=vy & (vj & (ix >= 0) & (ix < W)), other=0.0)
            acc += wv * xv.to(acc.dtype)
            j += upx
            ix += 1
        i += upy
        iy += 1
    return acc


@triton.jit
def _upfirdn2d_kernel(out_ptr, x_ptr, w_ptr, count, C, H, W, outH, outW,
                      sxn, sxc, sxh, sxw, son, soc, soh, sow,
                      upx, upy, downx, downy, cx, cy, kx, ky, Py, Sy, pid1_base,
                      FH: tl.constexpr, FW: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, CL: tl.constexpr,
                      BA: tl.constexpr, BB: tl.constexpr, INT64: tl.constexpr):
    pid0 = tl.program_id(0)
    if INT64:
        if CL:
            pid0 = pid0.to(tl.int64)
        else:  # row and column indices stay int32 (the launcher checks): no int64 division, int64 strides
            sxh = tl.cast(sxh, tl.int64)
            sxw = tl.cast(sxw, tl.int64)
            soh = tl.cast(soh, tl.int64)
            sow = tl.cast(sow, tl.int64)
    pid1 = tl.program_id(1) + pid1_base
    acc = tl.zeros([BA, BB], dtype=acc_type(x_ptr.dtype.element_ty))
    if CL:  # BA pixels (n, oy, ox) x BB channels; count = N*outH*outW
        p = pid0 * BA + tl.arange(0, BA)[:, None]
        ox = p % outW
        q = p // outW
        oy = q % outH
        n = q // outH
        c = pid1 * BB + tl.arange(0, BB)[None, :]
        valid = (p < count) & (c < C)
        by = oy * downy + cy  # upsampled row + ky*upy: never negative
        i0 = (upy - by % upy) % upy
        iy0 = (by + i0) // upy - ky
    else:  # BA rows (plane, m), oy = pid1 + m*Py: one vertical phase class, x BB columns; count = N*C planes
        ncols = tl.cdiv(outW, BB)
        nrows = (outH - pid1 + Py - 1) // Py
        r = (pid0 // ncols) * BA + tl.arange(0, BA)[:, None]
        plane = r // nrows
        m = r % nrows
        n = plane // C
        c = plane % C
        if INT64:
            n = n.to(tl.int64)
            c = c.to(tl.int64)
        oy = pid1 + m * Py
        ox = (pid0 % ncols) * BB + tl.arange(0, BB)[None, :]
        valid = (plane < count) & (ox < outW)
        by = pid1 * downy + cy
        i0 = (upy - by % upy) % upy
        iy0 = (by + i0) // upy - ky + m * Sy
    bx = ox * downx + cx
    j0 = (upx - bx % upx) % upx
    ix0 = (bx + j0) // upx - kx
    acc = _accumulate(acc, x_ptr + n * sxn + c * sxc, w_ptr, iy0, i0, ix0, j0, valid, H, W, sxh, sxw, upx, upy,
                      FH, FW, TH, TW)
    tl.store(out_ptr + n * son + c * soc + oy * soh + ox * sow, acc.to(out_ptr.dtype.element_ty), mask=valid)


def _taps(f, flip_filter, gain):
    # StyleGAN's reference rounding: f * gain ** (f.ndim / 2) in float32, flipped unless flip_filter.
    w = f.detach().to(torch.float32) * (gain ** (f.ndim / 2))
    return (w if flip_filter else w.flip(list(range(w.ndim)))).contiguous()


def _tile(inner, interpret):
    """(BA, BB): BB along the tile's contiguous axis (columns, or channels for channels_last) of length `inner`.
    GPU: 512 outputs a program (8 warps, 2 outputs a thread: at 4 a thread the registers more than double and
    occupancy drops), 64 wide when the axis allows (128 B rows in 16-bit), else
    16 wide and 32 deep; the interpreter runs programs one by one, so it gets 4096."""
    if interpret:
        bb = min(64, triton.next_power_of_2(inner))
        return 4096 // bb, bb
    return (8, 64) if inner > 32 else (32, 16)


def _pass(x, w, fh, fw, up, down, pad0, out):
    """One launch: out = upfirdn2d of x with the (fh, fw) correlation taps w; up/down/pad0 are (x, y) pairs."""
    n, c, h, wd = x.shape
    total = out.numel()
    if total == 0:
        return out
    (upx, upy), (downx, downy), (px0, py0) = up, down, pad0
    kx, ky = -(-max(px0, 0) // upx), -(-max(py0, 0) // upy)  # ceil: makes cx, cy >= 0
    cx, cy = upx * kx - px0, upy * ky - py0
    oh, ow = out.shape[2], out.shape[3]
    cl = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    ba, bb = _tile(c if cl else ow, _launch.target(x.device).interpret)
    g = math.gcd(upy, downy)
    py, sy = upy // g, downy // g  # vertical phase classes; input rows a class advances per output row
    if cl:
        count = n * oh * ow
        grid = (triton.cdiv(count, ba), triton.cdiv(c, bb))
    else:
        count = n * c
        if count * triton.cdiv(oh, py) + ba >= 2**31:
            raise ValueError(f"upfirdn2d (Triton): x of shape {tuple(x.shape)} gives 2^31 or more output rows per "
                             "vertical phase, which the NCHW kernel does not index")
        grid = (triton.cdiv(count * triton.cdiv(oh, py), ba) * triton.cdiv(ow, bb), min(py, oh))
    big = _launch.index64(out.numel(), _launch.span(x), ba * bb)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _launch.launch(_upfirdn2d_kernel, grid,
            out, x, w, count, c, h, wd, oh, ow, *x.stride(), *out.stride(),
            upx, upy, downx, downy, cx, cy, kx, ky, py, sy,
            FH=fh, FW=fw, TH=triton.cdiv(fh, upy), TW=triton.cdiv(fw, upx), CL=cl, BA=ba, BB=bb, INT64=big,
            num_warps=8)
    return out


def launch(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain, out_size, out_format):
    """upfirdn2d of x (N, C, H, W) with float32 filter f (1-D separable or 2-D); arguments already checked."""
    if x.ndim != 4 or f.ndim not in (1, 2) or f.dtype != torch.float32 or min(upx, upy, downx, downy) < 1:
        raise RuntimeError("upfirdn2d_triton: x must be 4-D, f a 1-D/2-D float32 tensor, up/down >= 1 "
                           f"(got x {tuple(x.shape)}, f {tuple(f.shape)} {f.dtype}, up {(upx, upy)}, "
                           f"down {(downx, downy)})")
    if out_size[2] < 1 or out_size[3] < 1:
        raise RuntimeError(f"upfirdn2d_triton: output size must be >= 1, got {out_size[2]}x{out_size[3]}")
    out = torch.empty(out_size, dtype=x.dtype, device=x.device, memory_format=out_format)
    w = _taps(f.to(x.device), flip_filter, gain)
    if f.ndim == 2:
        return _pass(x, w, f.shape[0], f.shape[1], (upx, upy), (downx, downy), (px0, py0), out)
    k = f.shape[0]
    mid = torch.empty((x.shape[0], x.shape[1], x.shape[2], out_size[3]), dtype=acc_dtype(x.dtype), device=x.device,
                      memory_format=out_format)
    _pass(x, w, 1, k, (upx, 1), (downx, 1), (px0, 0), mid)
    return _pass(mid, w, k, 1, (1, upy), (1, downy), (0, py0), out)
