"""bilinear_pooling on GPU: the Gram GEMM in cuBLAS (torch.bmm, fp32 output: `out_dtype=torch.float32` for fp16/bf16
on CUDA, so the low-precision inputs are never copied), the epilogue in Triton.

Forward epilogue, two kernels over (image, row) programs: (1) scale by 1/HW, gather the row (its upper-triangle part
with triu) and write the output directly when not normalising, else only one partial sum of s^2 per row; (2) reduce
the image's row partials (C1 values), re-read G and write out = s / max(||s||, 1e-12) and the per-image norm (B
values, all the backward keeps besides out: s = out * norm there). No fp32 (B, P) z is written.
Backward: (1) per-row partials of <out, g>; (2) per row of dG (C1 x C2): the derivative of the epilogue at the packed
positions (i, j) (and (j, i) when y is x: dG + dG^T) from out and norm, written densely, then cuBLAS dX = dG Y,
dY = dG^T X. Bytes per pooled element: forward reads G twice (8) + writes out (2-4); ~8 FLOPs.
Grids are (image, row); rows (axis 1) past CUDA's 65,535 are split by _launch through pid1_base. Row offsets are int64
(i * C1 passes 2^31 from C1 = 46,341). The signed square root, the L2 norm and the divisions are correctly rounded
on the GPU too (_math), as the interpreter computes them: the tests compare them with the reference.
"""
import torch
import triton
import triton.language as tl

from vkernels._dtypes import acc_dtype
from vkernels.triton import _launch
from vkernels.triton._math import div_rn, sqrt_rn
from vkernels.triton._triu import triu_index

L2_EPS = 1e-12


def _block(t):
    """Columns per step of the row loops on target t (the interpreter: small, it runs a vector op per step)."""
    return 64 if t.interpret else 1024


@triton.jit
def _signed_sqrt(z, eps):
    s = sqrt_rn(tl.abs(z) + eps)
    return tl.where(z > 0, s, tl.where(z < 0, -s, 0.0 * z))


@triton.jit
def _row_span(i, C1, C2, TRIU: tl.constexpr):
    # Packed row i (int64): first column j0 (int32: column vectors stay 32-bit) and the offset of (i, j0) in the
    # image's packed vector (int64).
    if TRIU:
        return i.to(tl.int32), i * C1 - (i * (i - 1)) // 2
    else:
        return 0 * i.to(tl.int32), i * C2


@triton.jit
def _fwd_rows_kernel(g_ptr, out_ptr, ss_ptr, M, C1, C2, P, eps, pid1_base,
                     TRIU: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    # Without normalisation: out = G / HW (gathered). With it: only the row's partial sum of s^2 = |z| + eps.
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64)
    acc_t = g_ptr.dtype.element_ty
    inv_m = div_rn(1.0, tl.cast(M, acc_t))
    j0, off = _row_span(i, C1, C2, TRIU)
    ss = tl.zeros([BLOCK], dtype=acc_t)
    for jb in range(j0, C2, BLOCK):
        j = jb + tl.arange(0, BLOCK)
        m = j < C2
        v = tl.load(g_ptr + (b * C1 + i) * C2 + j, mask=m, other=0.0) * inv_m
        if NORMALIZE:
            ss += tl.where(v != 0, tl.abs(v) + eps, 0.0)
        else:
            tl.store(out_ptr + b * P + off + (j - j0), v.to(out_ptr.dtype.element_ty), mask=m)
    if NORMALIZE:
        tl.store(ss_ptr + b * C1 + i, tl.sum(ss, 0))


@triton.jit
def _image_sum(ptr, b, C1, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=ptr.dtype.element_ty)
    for r in range(0, C1, BLOCK):
        k = r + tl.arange(0, BLOCK)
        acc += tl.load(ptr + b * C1 + k, mask=k < C1, other=0.0)
    return tl.sum(acc, 0)


@triton.jit
def _fwd_norm_kernel(g_ptr, out_ptr, ss_ptr, norm_ptr, M, C1, C2, P, eps, l2_eps, pid1_base,
                     TRIU: tl.constexpr, BLOCK: tl.constexpr):
    # Re-reads G (instead of writing and re-reading an fp32 z): out = s(G / HW) / max(||s||, 1e-12).
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64)
    acc_t = g_ptr.dtype.element_ty
    inv_m = div_rn(1.0, tl.cast(M, acc_t))
    d = tl.maximum(sqrt_rn(_image_sum(ss_ptr, b, C1, BLOCK)), l2_eps)
    if i == 0:
        tl.store(norm_ptr + b, d)
    inv_n = div_rn(1.0, d)
    j0, off = _row_span(i, C1, C2, TRIU)
    for jb in range(j0, C2, BLOCK):
        j = jb + tl.arange(0, BLOCK)
        m = j < C2
        z = tl.load(g_ptr + (b * C1 + i) * C2 + j, mask=m, other=0.0) * inv_m
        tl.store(out_ptr + b * P + off + (j - j0), (_signed_sqrt(z, eps) * inv_n).to(out_ptr.dtype.element_ty),
                 mask=m)


@triton.jit
def _bwd_rows_kernel(g_ptr, o_ptr, dot_ptr, C1, C2, P, pid1_base, TRIU: tl.constexpr, BLOCK: tl.constexpr):
    # Row partials of <out, grad_out>.
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64)
    acc_t = dot_ptr.dtype.element_ty
    j0, off = _row_span(i, C1, C2, TRIU)
    dot = tl.zeros([BLOCK], dtype=acc_t)
    for jb in range(j0, C2, BLOCK):
        j = jb + tl.arange(0, BLOCK)
        m = j < C2
        src = b * P + off + (j - j0)
        o = tl.load(o_ptr + src, mask=m, other=0.0).to(acc_t)
        g = tl.load(g_ptr + src, mask=m, other=0.0).to(acc_t)
        dot += o * g
    tl.store(dot_ptr + b * C1 + i, tl.sum(dot, 0))


@triton.jit
def _dz(g_ptr, o_ptr, src, m, k, h, inv_m, acc_t, NORMALIZE: tl.constexpr):
    # d loss / d z at packed positions src, times 1/HW: (g - out k) h / |out| with k = <out, g> (0 below the L2
    # floor) and h = 0.5 / (d^2 HW), d = max(||s||, 1e-12); 0 where out == 0 (z == 0: torch.sign's derivative).
    g = tl.load(g_ptr + src, mask=m, other=0.0).to(acc_t)
    if NORMALIZE:
        o = tl.load(o_ptr + src, mask=m, other=0.0).to(acc_t)
        d = tl.where(o != 0, div_rn((g - o * k) * h, tl.abs(tl.where(o != 0, o, 1.0))), 0.0)
    else:
        d = g * inv_m
    return d


@triton.jit
def _bwd_dg_kernel(g_ptr, o_ptr, norm_ptr, dot_ptr, dg_ptr, M, C1, C2, P, l2_eps, pid1_base,
                   TRIU: tl.constexpr, SYM: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64)
    acc_t = dg_ptr.dtype.element_ty
    inv_m = div_rn(1.0, tl.cast(M, acc_t))
    k = inv_m * 0
    h = inv_m
    if NORMALIZE:
        d = tl.load(norm_ptr + b)
        k = tl.where(d > l2_eps, _image_sum(dot_ptr, b, C1, BLOCK), 0.0 * d)
        h = div_rn(0.5, d * d) * inv_m
    for jb in range(0, C2, BLOCK):
        j = jb + tl.arange(0, BLOCK)
        m = j < C2
        if TRIU:
            src = b * P + triu_index(i, j, C1)
            dv = _dz(g_ptr, o_ptr, src, m, k, h, inv_m, acc_t, NORMALIZE)
            if SYM:
                dv = tl.where(j == i, 2 * dv, dv)
            else:
                dv = tl.where(j >= i, dv, 0.0)
        else:
            dv = _dz(g_ptr, o_ptr, b * P + i * C2 + j, m, k, h, inv_m, acc_t, NORMALIZE)
            if SYM:
                dv += _dz(g_ptr, o_ptr, b * P + j * C2 + i, m, k, h, inv_m, acc_t, NORMALIZE)
        tl.store(dg_ptr + (b * C1 + i) * C2 + j, dv, mask=m)


def _mat(t, acc):
    B, C, H, W = t.shape
    return t.reshape(B, C, H * W).to(acc)


def _gram(x, y):
    acc = acc_dtype(x.dtype)
    B, C1, H, W = x.shape
    X = x.reshape(B, C1, H * W)
    Y = X if y is None else y.reshape(B, y.shape[1], H * W)
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        return torch.bmm(X, Y.transpose(1, 2), out_dtype=torch.float32)  # fp32 accumulation and output
    X = X.to(acc)
    Y = X if y is None else Y.to(acc)
    return torch.bmm(X, Y.transpose(1, 2))


def _sizes(x, y, triu):
    B, C1, H, W = x.shape
    C2 = C1 if y is None else y.shape[1]
    P = C1 * (C1 + 1) // 2 if triu else C1 * C2
    return B, C1, C2, H * W, P


def forward(x, y, normalize, triu, eps):
    B, C1, C2, M, P = _sizes(x, y, triu)
    acc = acc_dtype(x.dtype)
    norm = normalize == "signed_sqrt_l2"
    out = torch.empty((B, P), dtype=x.dtype, device=x.device)
    nrm = torch.empty((B if norm else 0,), dtype=acc, device=x.device)
    if B == 0 or P == 0:
        if norm:
            nrm.fill_(L2_EPS)
        return out, nrm
    G = _gram(x, y).contiguous()
    ss = torch.empty((B, C1), dtype=acc, device=x.device)
    grid, block = (B, C1), _block(_launch.target(x.device))
    _launch.launch(_fwd_rows_kernel, grid, G, out, ss, M, C1, C2, P, eps, TRIU=triu, NORMALIZE=norm, BLOCK=block)
    if norm:
        _launch.launch(_fwd_norm_kernel, grid, G, out, ss, nrm, M, C1, C2, P, eps, L2_EPS, TRIU=triu, BLOCK=block)
    return out, nrm


def backward(grad_out, x, y, out, nrm, normalize, triu, eps):
    B, C1, C2, M, P = _sizes(x, y, triu)
    acc = acc_dtype(x.dtype)
    norm = normalize == "signed_sqrt_l2"
    gy_empty = torch.empty((0,), dtype=x.dtype, device=x.device)
    if B == 0 or C1 == 0 or C2 == 0:
        gy = gy_empty if y is None else torch.zeros_like(y, memory_format=torch.contiguous_format)
        return torch.zeros_like(x, memory_format=torch.contiguous_format), gy
    g = grad_out.contiguous()
    oc = out.contiguous() if norm else g
    nc = nrm.contiguous() if norm else torch.empty((1,), dtype=acc, device=x.device)
    dot = torch.empty((B, C1), dtype=acc, device=x.device)
    grid, block = (B, C1), _block(_launch.target(x.device))
    if norm:
        _launch.launch(_bwd_rows_kernel, grid, g, oc, dot, C1, C2, P, TRIU=triu, BLOCK=block)
    dG = torch.empty((B, C1, C2), dtype=acc, device=x.device)
    _launch.launch(_bwd_dg_kernel, grid, g, oc, nc, dot, dG, M, C1, C2, P, L2_EPS, TRIU=triu, SYM=y is None,
                   NORMALIZE=norm, BLOCK=block)
    X = _mat(x, acc)
    if y is None:
        return torch.bmm(dG, X).view(x.shape).to(x.dtype), gy_empty
    Y = _mat(y, acc)
    gx = torch.bmm(dG, Y).view(x.shape).to(x.dtype)
    gy = torch.bmm(dG.transpose(1, 2), X).view(y.shape).to(y.dtype)
    return gx, gy
