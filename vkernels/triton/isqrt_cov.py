"""isqrt_cov on GPU: GEMMs in cuBLAS (torch.bmm / baddbmm, with the Newton-Schulz step (3I - ZY)/2 folded into
baddbmm's alpha/beta), the remaining elementwise passes in Triton, one program per (image, row):
  forward: trace + normalisation A = G / (M t) + the first iterate Z_1 = 1.5 I - 0.5 A (one read of G);
           post-compensation sqrt(t) Y + triu packing + the cast (one read of Y, one write of out);
  backward: triu unpacking + symmetrisation gY = sqrt(t) sym(g) (one read of g, one write of gY);
           d = a s + b (q + q^T) (+ e u) (+ diag I), per-image coefficients: the symmetric combinations of each step
           back and, fused with the last one, S = gSigma + gSigma^T (q read twice, s, u once, one write).
Each pass moves O(C^2) fp32 per image (4-16 bytes per element, a few FLOPs); the GEMMs are O(C^3) + O(C^2 HW).
Rows (grid axis 1) past CUDA's 65,535 are split by _launch through pid1_base; row offsets are int64. The trace
normalisation and sqrt(t) are correctly rounded on the GPU too (_math): the tests compare them with the reference.

The backward works as the CPU kernel's (csrc/ops/cpu/isqrt_cov_kernel.cpp): every iterate Y_k, Z_k, P_k = Z_{k-1}
Y_{k-1} is a polynomial in the symmetric A, so they are symmetric and commute, and the incoming gradient can be
symmetrised first (A's gradient is symmetrised anyway); then every adjoint stays symmetric and one step back is
  gY' = 1.5 gY - 0.5 (gY P + (gY P)^T) - 0.5 Z (gZ Z),   gZ' = 1.5 gZ - 0.5 (gZ P + (gZ P)^T) - 0.5 Y (gY Y).
cuBLAS has no triangle GEMM, so a middle step still costs 6 GEMMs (as the plain adjoint does), but the last
iteration costs 3 instead of 4, the first 1 instead of 2, and Y_N is never recomputed (the trace's gradient
<g, Y_N> = 1.5 <gY, Y_{N-1}> - 0.5 <gY P_N, Y_{N-1}> reuses the step's first GEMM): 9N - 11 C x C GEMMs per image
for iters = N >= 2 (recompute 3N - 4, steps back 6N - 8, + the dX GEMM), against 9N - 8 (34 vs 37 at N = 5); 2
against 4 at N = 1. The step buffers are reused (bmm/baddbmm into preallocated outputs), each kept iterate is freed
after its step back (Z_{N-1} is not kept at all) and the inner products need no (B, C, C) temporary: peak live
memory of the backward, counted in B C^2 matrices at C = 64, HW = 16 (dispatch-mode count, dX included), 16 vs 19
at N = 5, 7 vs 9.5 at N = 2, 4.5 vs 5.5 at N = 1.
"""
import torch
import triton
import triton.language as tl

from vkernels._dtypes import acc_dtype
from vkernels.triton import _launch
from vkernels.triton._math import div_rn, sqrt_rn
from vkernels.triton._triu import triu_index

TRACE_FLOOR = 1e-30


def _block(t):
    """Columns per step of the row loops on target t (the interpreter: small, it runs a vector op per step)."""
    return 64 if t.interpret else 1024


@triton.jit
def _trace(g_ptr, b, C, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=g_ptr.dtype.element_ty)
    for r in range(0, C, BLOCK):
        k = r + tl.arange(0, BLOCK)
        acc += tl.load(g_ptr + b * C * C + k.to(tl.int64) * (C + 1), mask=k < C, other=0.0)
    return tl.sum(acc, 0)


@triton.jit
def _normalise_kernel(g_ptr, a_ptr, z_ptr, t_ptr, M, C, floor, pid1_base, WITH_Z: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64)
    acc_t = g_ptr.dtype.element_ty
    mf = tl.cast(M, acc_t)
    t = tl.maximum(div_rn(_trace(g_ptr, b, C, BLOCK), mf), floor)
    if i == 0:
        tl.store(t_ptr + b, t)
    s = div_rn(1.0, t * mf)
    for jb in range(0, C, BLOCK):
        j = jb + tl.arange(0, BLOCK)
        m = j < C
        off = (b * C + i) * C + j
        a = tl.load(g_ptr + off, mask=m, other=0.0) * s
        tl.store(a_ptr + off, a, mask=m)
        if WITH_Z:
            tl.store(z_ptr + off, tl.where(j == i, 1.5, 0.0) - 0.5 * a, mask=m)


@triton.jit
def _pack_kernel(y_ptr, t_ptr, out_ptr, C, P, pid1_base, TRIU: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64)
    s = sqrt_rn(tl.load(t_ptr + b))
    if TRIU:
        j0 = i.to(tl.int32)
        off = i * C - (i * (i - 1)) // 2
    else:
        j0 = 0
        off = i * C
    for jb in range(j0, C, BLOCK):
        j = jb + tl.arange(0, BLOCK)
        m = j < C
        y = tl.load(y_ptr + (b * C + i) * C + j, mask=m, other=0.0)
        tl.store(out_ptr + b * P + off + (j - j0), (y * s).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _unpack_sym_kernel(g_ptr, t_ptr, gy_ptr, C, P, pid1_base, TRIU: tl.constexpr, BLOCK: tl.constexpr):
    # gY[i, j] = sqrt(t) sym(g)[i, j]: triu: g's (min, max) entry, halved off the diagonal (the packed entry stands for
    # both halves); full: (g[i, j] + g[j, i]) / 2.
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64)
    acc_t = gy_ptr.dtype.element_ty
    s = sqrt_rn(tl.load(t_ptr + b))
    for jb in range(0, C, BLOCK):
        j = jb + tl.arange(0, BLOCK)
        m = j < C
        if TRIU:
            g = tl.load(g_ptr + b * P + triu_index(i, j, C), mask=m, other=0.0).to(acc_t)
            g = tl.where(j == i, g, 0.5 * g)
        else:
            g = 0.5 * (tl.load(g_ptr + b * P + i * C + j, mask=m, other=0.0).to(acc_t)
                       + tl.load(g_ptr + b * P + j * C + i, mask=m, other=0.0).to(acc_t))
        tl.store(gy_ptr + (b * C + i) * C + j, g * s, mask=m)


@triton.jit
def _sym_combine_kernel(s_ptr, q_ptr, u_ptr, coef_ptr, d_ptr, coef_sb, C, pid1_base,
                        HAS_U: tl.constexpr, BLOCK: tl.constexpr):
    # d = a s + b (q + q^T) + e u + diag I with (a, b, e, diag) = coef[image] (coef_sb = 0: one set for all images);
    # d must not alias q.
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64)
    cf = coef_ptr + b * coef_sb
    ca = tl.load(cf)
    cb = tl.load(cf + 1)
    ce = tl.load(cf + 2)
    cd = tl.load(cf + 3)
    for jb in range(0, C, BLOCK):
        j = jb + tl.arange(0, BLOCK)
        m = j < C
        off = (b * C + i) * C + j
        v = ca * tl.load(s_ptr + off, mask=m, other=0.0) + cb * (
            tl.load(q_ptr + off, mask=m, other=0.0) + tl.load(q_ptr + (b * C + j) * C + i, mask=m, other=0.0))
        if HAS_U:
            v += ce * tl.load(u_ptr + off, mask=m, other=0.0)
        tl.store(d_ptr + off, v + tl.where(j == i, cd, 0.0), mask=m)


def _centered(x):
    B, C, H, W = x.shape
    X = x.reshape(B, C, H * W).to(acc_dtype(x.dtype))
    return X - X.mean(2, keepdim=True)


def _newton_schulz(A, Z1, iters, keep=None):
    """Y_iters. With keep (a list): appends (Y_{k-1}, Z_{k-1}, P_k) for k = 2..iters instead (Z_{iters-1} as None),
    what the backward needs, and skips the last Y update (the backward never needs Y_iters itself); returns None."""
    Y = torch.baddbmm(A, A, A, beta=1.5, alpha=-0.5)  # Y_1 = A T_1
    Z = Z1
    for k in range(2, iters + 1):
        P = torch.bmm(Z, Y)
        if keep is not None:
            keep.append((Y, Z if k < iters else None, P))  # the last step back has gZ = 0: Z_{N-1} is not needed
            if k == iters:
                return None
        Yn = torch.baddbmm(Y, Y, P, beta=1.5, alpha=-0.5)  # Y T = 1.5 Y - 0.5 Y (Z Y)
        if k < iters:
            Z = torch.baddbmm(Z, P, Z, beta=1.5, alpha=-0.5)  # T Z = 1.5 Z - 0.5 (Z Y) Z
        Y = Yn
    return Y


def forward(x, iters, triu):
    B, C, H, W = x.shape
    acc = acc_dtype(x.dtype)
    P = C * (C + 1) // 2 if triu else C * C
    out = torch.empty((B, P), dtype=x.dtype, device=x.device)
    A = torch.empty((B, C, C), dtype=acc, device=x.device)
    t = torch.empty((B,), dtype=acc, device=x.device)
    if B > 0:
        Xc = _centered(x)
        G = torch.bmm(Xc, Xc.transpose(1, 2))
        Z1 = torch.empty_like(A) if iters >= 2 else A
        block = _block(_launch.target(x.device))
        _launch.launch(_normalise_kernel, (B, C), G, A, Z1, t, H * W, C, TRACE_FLOOR, WITH_Z=iters >= 2, BLOCK=block)
        Y = _newton_schulz(A, Z1, iters).contiguous()
        _launch.launch(_pack_kernel, (B, C), Y, t, out, C, P, TRIU=triu, BLOCK=block)
    return (out if triu else out.view(B, C, C)), A, t


def _dot(a, b):
    """Per-image <a, b> of (B, C, C) matrices as a batched (1 x C^2) (C^2 x 1) product: no (B, C, C) temporary."""
    B = a.shape[0]
    return torch.bmm(a.reshape(B, 1, -1), b.reshape(B, -1, 1)).view(B)


def _sym_combine(s, q, coef, d, u=None):
    B, C = q.shape[:2]
    _launch.launch(_sym_combine_kernel, (B, C), s, q, q if u is None else u, coef, d,
                   coef.stride(0) if coef.dim() == 2 else 0, C, HAS_U=u is not None,
                   BLOCK=_block(_launch.target(q.device)))
    return d


def backward(grad_out, x, A, t, iters, triu):
    B, C, H, W = x.shape
    if B == 0:
        return torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    P = C * (C + 1) // 2 if triu else C * C
    A = A.contiguous()
    keep = []
    if iters >= 2:
        Z1 = A * -0.5
        Z1.diagonal(0, 1, 2).add_(1.5)
        _newton_schulz(A, Z1, iters, keep)
        del Z1  # kept in keep (as Z_1) while a step back needs it
    # Y_{N-1} and P_N (Y_0 = P_1 = A when N = 1).
    Yl, Pl = (keep[-1][0], keep[-1][2]) if keep else (A, A)
    gY, gZ = torch.empty_like(A), None
    _launch.launch(_unpack_sym_kernel, (B, C), grad_out.contiguous(), t, gY, C, P, TRIU=triu,
                   BLOCK=_block(_launch.target(x.device)))
    Wk = torch.bmm(gY, Pl)  # the step's first GEMM; holds each GEMM's result before it is combined
    st = t.sqrt()
    # <g, Y_N> (the trace's gradient through sqrt(t)) from Y_N = 1.5 Y_{N-1} - 0.5 Y_{N-1} P_N, for symmetric
    # Y_{N-1}, P_N: <gY, Y P> = <gY P, Y>.
    aux = (1.5 * _dot(gY, Yl) - 0.5 * _dot(Wk, Yl)) / st
    del Yl, Pl  # each kept iterate is freed once its step back is done
    step = torch.tensor([1.5, -0.5, 0.0, 0.0], dtype=A.dtype, device=A.device)
    gYn, gZn = torch.empty_like(A), torch.empty_like(A)
    first = True
    while keep:
        Y, Z, Pk = keep.pop()
        if not first:
            torch.bmm(gY, Pk, out=Wk)
        _sym_combine(gY, Wk, step, gYn)  # 1.5 gY - 0.5 (gY P + (gY P)^T)
        if gZ is not None:
            torch.bmm(gZ, Pk, out=Wk)
            _sym_combine(gZ, Wk, step, gZn)
            torch.bmm(gZ, Z, out=Wk)
            gYn.baddbmm_(Z, Wk, alpha=-0.5)  # - 0.5 Z gZ Z
        torch.bmm(gY, Y, out=Wk)
        if gZ is None:
            gZ = torch.empty_like(A)
            gZn.baddbmm_(Y, Wk, beta=0.0, alpha=-0.5)  # gZ = 0 before the last iteration's step back
        else:
            gZn.baddbmm_(Y, Wk, alpha=-0.5)  # - 0.5 Y gY Y
        gY, gYn, gZ, gZn = gYn, gY, gZn, gZ
        first = False
        del Y, Z, Pk
    if iters >= 2:
        torch.bmm(gY, A, out=Wk)  # N = 1: Wk = gY A already
    # Iteration 1 (Y_0 = P_1 = A, Z_0 = I): gA = 1.5 gY - 0.5 (gY A + A gY) - 0.5 gZ_1 (symmetric). A = Sigma / t,
    # t = tr Sigma, Sigma = Xc Xc^T / M: S = gSigma + gSigma^T = 2 gA / (M t) + 2 (aux / (2 sqrt t) - <gA, A> / t) / M I,
    # one pass with the coefficients per image; dX = S Xc.
    gA_A = 1.5 * _dot(gY, A) - _dot(Wk, A)
    if gZ is not None:
        gA_A = gA_A - 0.5 * _dot(gZ, A)
    off = 1.0 / (H * W * t)
    diag = 2 * (aux / (2 * st) - gA_A / t) / (H * W)
    coef = torch.stack([3 * off, -off, -off, diag], 1).contiguous()
    S = _sym_combine(gY, Wk, coef, gYn, gZ)
    return torch.bmm(S, _centered(x)).view(x.shape).to(x.dtype)
