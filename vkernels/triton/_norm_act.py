"""What the Triton kernels of upsample_norm_act and spade_norm_act share: upsampling on the fly (the exact rational
source coordinate (2*o + 1 - s) / (2*s) of align_corners=False, rounded once), the element and plane indexing of an
(N, C, H, W) tensor in either memory format, alpha / gain / clamp for fp64 kernels (Python floats become fp32 kernel
arguments, so for fp64 tensors they travel in an fp64 tensor), and the host-side sizes and layouts of the launchers.
"""
import contextlib

import torch
import triton
import triton.language as tl

from vkernels.triton import _launch
from vkernels.triton._dtypes import acc_type


@triton.jit
def linear_source(o, s, size, ct: tl.constexpr):
    # 1-D linear interpolation source (align_corners=False) for output coordinate o: (i0, i1, weight of i1 in ct).
    num = 2 * o + 1 - s
    num = tl.where(num < 0, 0, num)
    i0 = num // (2 * s)
    i0 = tl.where(i0 > size - 1, size - 1, i0)
    l1 = (num - i0 * 2 * s).to(ct) / (2 * s)
    i1 = tl.where(i0 < size - 1, i0 + 1, i0)
    return i0, i1, l1


@triton.jit
def upsampled_value(x_ptr, base, oh, ow, H, W, sh, sw, s, mask, BILINEAR: tl.constexpr):
    # The value of up(x) at (oh, ow) in x's accumulation type; base: the offset of x's (n, c) plane.
    ct = acc_type(x_ptr.dtype.element_ty)
    if BILINEAR:
        h0, h1, lh = linear_source(oh, s, H, ct)
        w0, w1, lw = linear_source(ow, s, W, ct)
        v00 = tl.load(x_ptr + base + h0 * sh + w0 * sw, mask=mask, other=0.0).to(ct)
        v01 = tl.load(x_ptr + base + h0 * sh + w1 * sw, mask=mask, other=0.0).to(ct)
        v10 = tl.load(x_ptr + base + h1 * sh + w0 * sw, mask=mask, other=0.0).to(ct)
        v11 = tl.load(x_ptr + base + h1 * sh + w1 * sw, mask=mask, other=0.0).to(ct)
        t0 = (1.0 - lw) * v00 + lw * v01
        t1 = (1.0 - lw) * v10 + lw * v11
        u = (1.0 - lh) * t0 + lh * t1
    else:
        u = tl.load(x_ptr + base + (oh // s) * sh + (ow // s) * sw, mask=mask, other=0.0).to(ct)
    return u


@triton.jit
def upsampled_value3d(x_ptr, base, od, oh, ow, D, H, W, sd, sh, sw, s, mask, TRILINEAR: tl.constexpr):
    # The value of up(x) at (od, oh, ow) of a 5-D x in its accumulation type, blended along W, then H, then D (the
    # C++ kernels' order); base: the offset of x's (n, c) volume.
    ct = acc_type(x_ptr.dtype.element_ty)
    if TRILINEAR:
        d0, d1, ld = linear_source(od, s, D, ct)
        h0, h1, lh = linear_source(oh, s, H, ct)
        w0, w1, lw = linear_source(ow, s, W, ct)
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
        u = tl.load(x_ptr + base + (od // s) * sd + (oh // s) * sh + (ow // s) * sw, mask=mask, other=0.0).to(ct)
    return u


@triton.jit
def plane_coords(start, r0, c0, n, W, BLOCK: tl.constexpr, INT64: tl.constexpr):
    # (row, column, in-range mask) of the BLOCK elements from flat index `start` of a plane of n elements, W a row.
    # INT64 (n may pass int32): from the row r0 / column c0 of start carried by plane_advance, in int32, because an
    # int64 division compiles to a ptxas subroutine call that spills; the int64 strides carry the addresses.
    if INT64:
        t = c0 + tl.arange(0, BLOCK)
        row = r0 + t // W
        col = t % W
        mask = tl.cast(row, tl.int64) * W + col < n
    else:
        i = start + tl.arange(0, BLOCK)
        row = i // W
        col = i % W
        mask = i < n
    return row, col, mask


@triton.jit
def plane_advance(r0, c0, W, BLOCK: tl.constexpr):
    # The row and column of the flat index BLOCK past (r0, c0).
    c = c0 + BLOCK
    return r0 + c // W, c % W


@triton.jit
def scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr):
    # fp64 kernels read alpha / gain / clamp from an fp64 tensor (Python float kernel arguments are fp32).
    if SCALARS_IN_TENSOR:
        alpha = tl.load(scalars_ptr)
        gain = tl.load(scalars_ptr + 1)
        clamp = tl.load(scalars_ptr + 2)
    return alpha, gain, clamp


@triton.jit
def nchw_of(i, C, H, W, CL: tl.constexpr):
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
def ncdhw_of(i, C, D, H, W, CL: tl.constexpr):
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
def plane_of_program(C):
    # This program's (n, c) plane: flat index g = n * C + c; n, c in int64 for the plane offsets.
    g = tl.program_id(0)
    return g, (g // C).to(tl.int64), (g % C).to(tl.int64)


def device_of(x):
    """The CUDA device context of x (a no-op context on the CPU, where the interpreter runs)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def is_channels_last(x):
    """x (4-D or 5-D) stored channels_last / channels_last_3d (and not also contiguous): the outputs follow it."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=memory_format_of(x, True))


def memory_format_of(x, cl=None):
    """The memory format of the outputs and gradients for x (4-D or 5-D): x's channels-last format when x is stored
    so (or cl is true), contiguous otherwise."""
    if not (is_channels_last(x) if cl is None else cl):
        return torch.contiguous_format
    return torch.channels_last if x.ndim == 4 else torch.channels_last_3d


def scalar_values(x, alpha, gain, clamp):
    """(alpha, gain, clamp) as floats, the tensor scalar_args reads them from for fp64 x (x itself otherwise, unread),
    and whether it is read."""
    vals = (float(alpha), float(gain), float(clamp if clamp is not None else 0.0))
    exact = x.dtype == torch.float64
    return vals, (torch.tensor(vals, dtype=torch.float64, device=x.device) if exact else x), exact


def empty_in_format(x, shape):
    """An empty tensor of `shape` in x's dtype, device and memory format."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


def plane_block(t, n, fp64_bilinear=False):
    """Elements per step of the per-plane loops over n elements on target t (bigger in the interpreter). The fp64
    bilinear adjoint (4 s^2 neighbours' dz recomputed per input pixel) spilled 312 B at 1024 on sm_80: 512 there."""
    gpu = 512 if fp64_bilinear else 1024
    return min(4096 if t.interpret else gpu, max(16, triton.next_power_of_2(max(n, 1))))


def image_int64(*tensors):
    """True when a flat index inside one image of any of `tensors` ((N, C, H, W), any strides) may pass int32."""
    return any(_launch.index64(0, _launch.span(t, 1), 4096) for t in tensors if t is not None)
