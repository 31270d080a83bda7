"""upfirdn2d in Triton: a direct (gather) kernel, one program per BLOCK output elements in the output's memory order.

Per output element and tap it tests whether the tap lands on an input pixel (not on an inserted zero, not in the
padding) and gathers it with a masked load; fp16/bf16 accumulate in fp32, fp64 in fp64. A 1-D (separable) filter is
two launches, horizontal then vertical, through an fp32 (fp64) intermediate, as StyleGAN's CUDA op does.
Bytes: reads x (each input pixel ~fh*fw/(up*up) times, mostly from cache), writes out once; FLOPs 2*fh*fw per output
(2*(fh+fw) separable) including the masked-out taps. No shared-memory tiling or polyphase yet: a correct, simple
GPU path that CI runs through the Triton interpreter; it has not been timed on a GPU.
Index arithmetic is kept non-negative (the padding is folded into a positive offset) because `//` and `%` on
negative integers differ between Triton on GPU (C semantics) and the interpreter (numpy floor semantics).
"""
import contextlib

import torch
import triton
import triton.language as tl

from vkernels.triton import _launch


@triton.jit
def _upfirdn2d_kernel(out_ptr, x_ptr, w_ptr, total, C, H, W, outH, outW,
                      sxn, sxc, sxh, sxw, son, soc, soh, sow,
                      upx, upy, downx, downy, cx, cy, kx, ky,
                      FH: tl.constexpr, FW: tl.constexpr, CL: tl.constexpr, BLOCK: tl.constexpr,
                      INT64: tl.constexpr):
    pid = tl.program_id(0)
    if INT64:
        idx = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    if CL:  # channels fastest
        c = idx % C
        t = idx // C
        ox = t % outW
        t = t // outW
        oy = t % outH
        n = t // outH
    else:
        ox = idx % outW
        t = idx // outW
        oy = t % outH
        t = t // outH
        c = t % C
        n = t // C
    acc_ty = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    acc = tl.zeros([BLOCK], dtype=acc_ty)
    xbase = x_ptr + n * sxn + c * sxc
    for i in range(FH):
        uy = oy * downy + i + cy  # upsampled row + ky*upy: never negative
        iy = uy // upy - ky
        vy = mask & (uy % upy == 0) & (iy >= 0) & (iy < H)
        for j in range(FW):
            ux = ox * downx + j + cx
            ix = ux // upx - kx
            v = vy & (ux % upx == 0) & (ix >= 0) & (ix < W)
            wv = tl.load(w_ptr + i * FW + j).to(acc_ty)
            xv = tl.load(xbase + iy * sxh + ix * sxw, mask=v, other=0.0).to(acc_ty)
            acc += wv * xv
    tl.store(out_ptr + n * son + c * soc + oy * soh + ox * sow, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _taps(f, flip_filter, gain):
    # StyleGAN's reference rounding: f * gain ** (f.ndim / 2) in float32, flipped unless flip_filter.
    w = f.detach().to(torch.float32) * (gain ** (f.ndim / 2))
    return (w if flip_filter else w.flip(list(range(w.ndim)))).contiguous()


def _pass(x, w, fh, fw, up, down, pad0, out):
    """One launch: out = upfirdn2d of x with the (fh, fw) correlation taps w; up/down/pad0 are (x, y) pairs."""
    n, c, _, _ = x.shape
    total = out.numel()
    if total == 0:
        return out
    (upx, upy), (downx, downy), (px0, py0) = up, down, pad0
    kx, ky = -(-max(px0, 0) // upx), -(-max(py0, 0) // upy)  # ceil: makes cx, cy >= 0
    cx, cy = upx * kx - px0, upy * ky - py0
    cl = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    block = 4096 if _launch.target(x.device).interpret else 256  # the interpreter runs programs one by one
    big = max(total, x.numel() and (x.stride(0) * (x.shape[0] - 1) + x.stride(1) * (c - 1) + x.stride(2) *
                                    (x.shape[2] - 1) + x.stride(3) * (x.shape[3] - 1) + 1)) + block >= 2**31
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _launch.launch(_upfirdn2d_kernel, (triton.cdiv(total, block),),
            out, x, w, total, c, x.shape[2], x.shape[3], out.shape[2], out.shape[3], *x.stride(), *out.stride(),
            upx, upy, downx, downy, cx, cy, kx, ky, FH=fh, FW=fw, CL=cl, BLOCK=block, INT64=big, num_warps=4)
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
    mid_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    mid = torch.empty((x.shape[0], x.shape[1], x.shape[2], out_size[3]), dtype=mid_dtype, device=x.device,
                      memory_format=out_format)
    _pass(x, w, 1, k, (upx, 1), (downx, 1), (px0, 0), mid)
    return _pass(mid, w, k, 1, (1, upy), (1, downy), (0, py0), out)
