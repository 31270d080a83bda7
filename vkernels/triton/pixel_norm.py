"""pixel_norm in Triton: x viewed as (outer, C, inner) in storage order; one program per (outer row, BLOCK_J columns).

Tiles are [BLOCK_C, BLOCK_J] with the contiguous axis last, so loads are coalesced for both layouts: NCHW (inner =
H*W) walks C rows of BLOCK_J contiguous pixels; rows of C channels (a latent batch, channels_last, which is read in
place as (N*H*W, C, 1)) are one contiguous run of C values per program.

Forward reads x twice (sum of squares over C, then scale) and writes y; backward reads x and g twice, writes dx.
Accumulation in fp32 (fp64 for fp64 inputs).
Offsets are int64 (row * C * inner and c * inner pass 2^31 on large images); axis 1 (column blocks) can pass CUDA's
65,535 and is split by _launch through pid1_base.
"""
import contextlib

import torch
import triton
import triton.language as tl

from vkernels.triton import _launch
from vkernels.triton._dtypes import acc_type
from vkernels.triton._math import sqrt_rn


@triton.jit
def _pixel_norm_kernel(out_ptr, x_ptr, g_ptr, eps_ptr, C, inner, pid1_base, BACKWARD: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    jb = tl.program_id(1).to(tl.int64) + pid1_base
    ct = acc_type(x_ptr.dtype.element_ty)
    eps = tl.load(eps_ptr).to(ct)
    cols = jb * BLOCK_J + tl.arange(0, BLOCK_J)
    cmask = cols < inner
    base = row * C * inner
    ss = tl.zeros([BLOCK_J], dtype=ct)
    gx = tl.zeros([BLOCK_J], dtype=ct)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        m = (cs[:, None] < C) & cmask[None, :]
        offs = base + cs[:, None].to(tl.int64) * inner + cols[None, :]
        xv = tl.load(x_ptr + offs, mask=m, other=0.0).to(ct)
        ss += tl.sum(xv * xv, axis=0)
        if BACKWARD:
            gv = tl.load(g_ptr + offs, mask=m, other=0.0).to(ct)
            gx += tl.sum(gv * xv, axis=0)
    r = 1.0 / sqrt_rn(ss / C + eps)  # divisions div.full: div_rn spills here (see _math)
    coef = gx / C * r * r * r
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        m = (cs[:, None] < C) & cmask[None, :]
        offs = base + cs[:, None].to(tl.int64) * inner + cols[None, :]
        xv = tl.load(x_ptr + offs, mask=m, other=0.0).to(ct)
        if BACKWARD:
            gv = tl.load(g_ptr + offs, mask=m, other=0.0).to(ct)
            y = gv * r[None, :] - xv * coef[None, :]
        else:
            y = xv * r[None, :]
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)


def launch(x, g, dim, eps):
    """pixel_norm forward (g None) or backward (g = incoming gradient) of x along dim; contiguous output."""
    dim = dim % x.ndim
    if x.ndim == 4 and dim == 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # channels_last in place, as the CPU kernel: storage is (N*H*W, C) rows of contiguous channels, so a
        # program's tile is one coalesced run of C values (inner == 1) and no NCHW copy is made; the output keeps
        # x's layout, as the fake kernel (empty_like) promises.
        out = torch.empty_like(x, memory_format=torch.channels_last)
        if x.numel() == 0:
            return out
        C, inner = x.shape[1], 1
        outer = x.numel() // C
        gg = g.contiguous(memory_format=torch.channels_last) if g is not None else x
    else:
        x = x.contiguous()
        out = torch.empty_like(x)
        if x.numel() == 0:
            return out
        C = x.shape[dim]
        outer = 1
        for s in x.shape[:dim]:
            outer *= s
        inner = x.numel() // (outer * C)
        gg = g.contiguous() if g is not None else x
    block_j = min(triton.next_power_of_2(inner), 64)
    block_c = min(triton.next_power_of_2(C), max(16, _tile_elems(_launch.target(x.device)) // block_j))
    eps_t = torch.tensor([eps], dtype=torch.float64, device=x.device)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _launch.launch(_pixel_norm_kernel, (outer, triton.cdiv(inner, block_j)), out, x, gg, eps_t, C, inner,
                       BACKWARD=g is not None, BLOCK_C=block_c, BLOCK_J=block_j, num_warps=4)
    return out


def _tile_elems(t):
    # The interpreter runs programs one by one: bigger tiles there.
    return 8192 if t.interpret else 2048
