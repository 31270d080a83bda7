"""random_maclaurin_pooling in Triton: the W1 G_b W2 contraction (gram) and the W1 X_b . W2 Y_b contraction (project)
as tiled tl.dot GEMMs whose epilogue is the row-wise product-reduction, so the D x C2 / D x HW products never leave
registers. The Gram GEMM G_b = X_b Y_b^T and the backward's dX = dG Y, dY = dG^T X are cuBLAS (torch.bmm).

Forward (s = 1 / sqrt(D)), grid (B, D / BD):
  gram:    per program, for each C2 block: acc = W1[d-tile] @ G_b[:, n-block] (K loop over C1), then
           row += sum(acc * W2[d-tile, n-block], 1). FLOPs 2 D C1 C2 per image (+ the 2 HW C1 C2 of the Gram GEMM);
           bytes: G_b read D / BD times (L2), W1, W2 once per image.
  project: per program, for each HW block: acc1 = W1[d-tile] @ X_b[:, l-block], acc2 = W2[d-tile] @ Y_b[:, l-block],
           row += sum(acc1 * acc2, 1). FLOPs 2 HW D (C1 + C2) per image; x, y read D / BD times (L2).
Backward (g = dL/dout), both routes through dG_b = s W1^T diag(g_b) W2 (grid (B, C1 / BM, C2 / BN), K loop over D,
the rows of W2 scaled by s g in registers); then cuBLAS dX = dG Y, dY = dG^T X. The project form of the backward
(W1^T (s g . W2 Y_b)) is not written in Triton: it only saves FLOPs when HW is far below C (see the CPU kernel).
With a gradient to take, the project route's forward instead stores its tiles of W1 X_b, W2 Y_b (forward_saved) and
the backward is cuBLAS GEMMs from them (backward_saved): 4 GEMMs for x, y, w1, w2 instead of recomputing.
dW1 = s sum_b diag(g_b) W2 G_b^T, dW2 = s sum_b diag(g_b) W1 G_b: grid (D / BD, C / BN, splits), each program
summing the images of one split of the batch into its own slice of a (splits, D, C) buffer, summed afterwards in a
fixed order (deterministic, no atomics); splits are only added while D x C has too few tiles to fill the GPU.

All tiles are in the accumulation dtype (fp32, fp64 for fp64 inputs). The dots run on tensor cores for fp32, fp16
and bf16 inputs, with the precision torch's own fp32 matmuls get from torch.get_float32_matmul_precision():
"highest" (torch's default) -> input_precision="tf32x3" (three TF32 products, about fp32's rounding: the result is a
sum of D C1 C2 products and plain TF32's ~1e-3 relative rounding would exceed the fp32 error bound), "high" /
"medium" -> "tf32". fp64 runs "ieee" (DMMA on sm_80 / sm_90). The launcher picks it (_precision) and passes it as a
constexpr. Index arithmetic is int64 wherever a product of a row index and a stride can pass 2^31.
"""
import math

import torch
import triton
import triton.language as tl

from vkernels._dtypes import acc_dtype
from vkernels.triton._launch import launch, target


@triton.jit
def _tile_dot(a_ptr, sam, sak, b_ptr, sbk, sbn, s_ptr, m, mm, n, nm, K, acc,
              BK: tl.constexpr, SCALE: tl.constexpr, PREC: tl.constexpr):
    """acc[m, n] += sum_k A[m, k] B[k, n] over k in [0, K), the tile loop of every kernel here (A and B by strides,
    both cast to acc's dtype; m, n int64 so row * stride never wraps). SCALE 1: A's rows scaled by s[m]; SCALE 2: B's
    rows by s[k]; 0: no scaling. PREC: tl.dot's input_precision (see _precision)."""
    if SCALE == 1:
        sm = tl.load(s_ptr + m, mask=mm, other=0.0)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        km = k < K
        a = tl.load(a_ptr + m[:, None] * sam + k[None, :] * sak, mask=mm[:, None] & km[None, :],
                    other=0.0).to(acc.dtype)
        bt = tl.load(b_ptr + k[:, None] * sbk + n[None, :] * sbn, mask=km[:, None] & nm[None, :],
                     other=0.0).to(acc.dtype)
        if SCALE == 1:
            a = a * sm[:, None]
        if SCALE == 2:
            bt = bt * tl.load(s_ptr + k, mask=km, other=0.0)[:, None]
        acc = tl.dot(a, bt, acc, input_precision=PREC, out_dtype=acc.dtype)
    return acc


@triton.jit
def _gram_fwd_kernel(w1_ptr, g_ptr, w2_ptr, out_ptr, D, C1, C2, scale, pid1_base,
                     BD: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    d = (tl.program_id(1) + pid1_base).to(tl.int64) * BD + tl.arange(0, BD)
    dm = d < D
    acc_t = out_ptr.dtype.element_ty
    row = tl.zeros([BD], dtype=acc_t)
    gb = g_ptr + b * C1 * C2
    for n0 in range(0, C2, BN):
        n = n0 + tl.arange(0, BN)
        nm = n < C2
        acc = _tile_dot(w1_ptr, C1, 1, gb, C2, 1, w1_ptr, d, dm, n, nm, C1, tl.zeros([BD, BN], dtype=acc_t), BK, 0,
                        PREC)
        w2 = tl.load(w2_ptr + d[:, None] * C2 + n[None, :], mask=dm[:, None] & nm[None, :], other=0.0)
        row += tl.sum(acc * w2, 1)
    tl.store(out_ptr + b * D + d, row * scale, mask=dm)


@triton.jit
def _proj_fwd_kernel(w1_ptr, x_ptr, w2_ptr, y_ptr, out_ptr, proj_ptr, B, D, C1, C2, M, scale,
                     sxb, sxc, sxl, syb, syc, syl, pid1_base,
                     BD: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr):
    # SAVE: also store the projection tiles into proj (2, D, B, M) for the backward (random_maclaurin_pooling_saved).
    b = tl.program_id(0).to(tl.int64)
    d = (tl.program_id(1) + pid1_base).to(tl.int64) * BD + tl.arange(0, BD)
    dm = d < D
    acc_t = out_ptr.dtype.element_ty
    row = tl.zeros([BD], dtype=acc_t)
    for l0 in range(0, M, BN):
        l = l0 + tl.arange(0, BN).to(tl.int64)
        lm = l < M
        p1 = _tile_dot(w1_ptr, C1, 1, x_ptr + b * sxb, sxc, sxl, w1_ptr, d, dm, l, lm, C1,
                       tl.zeros([BD, BN], dtype=acc_t), BK, 0, PREC)
        p2 = _tile_dot(w2_ptr, C2, 1, y_ptr + b * syb, syc, syl, w2_ptr, d, dm, l, lm, C2,
                       tl.zeros([BD, BN], dtype=acc_t), BK, 0, PREC)
        if SAVE:
            off = (d[:, None] * B + b) * M + l[None, :]
            pm = dm[:, None] & lm[None, :]
            tl.store(proj_ptr + off, p1, mask=pm)
            tl.store(proj_ptr + D * B * M + off, p2, mask=pm)
        row += tl.sum(p1 * p2, 1)
    tl.store(out_ptr + b * D + d, row * scale, mask=dm)


@triton.jit
def _dg_kernel(w1_ptr, w2_ptr, gs_ptr, dg_ptr, D, C1, C2, pid1_base, pid2_base,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    # dG_b[i, j] = sum_d W1[d, i] (s g_bd) W2[d, j]
    b = tl.program_id(0).to(tl.int64)
    i = (tl.program_id(1) + pid1_base).to(tl.int64) * BM + tl.arange(0, BM)
    j = (tl.program_id(2) + pid2_base).to(tl.int64) * BN + tl.arange(0, BN)
    im = i < C1
    jm = j < C2
    acc_t = dg_ptr.dtype.element_ty
    # A = W1^T (strides 1, C1), B = W2 with its rows d scaled by s g_bd.
    acc = _tile_dot(w1_ptr, 1, C1, w2_ptr, C2, 1, gs_ptr + b * D, i, im, j, jm, D, tl.zeros([BM, BN], dtype=acc_t),
                    BK, 2, PREC)
    tl.store(dg_ptr + b * C1 * C2 + i[:, None] * C2 + j[None, :], acc, mask=im[:, None] & jm[None, :])


@triton.jit
def _dw_kernel(wo_ptr, g_ptr, gs_ptr, dw_ptr, B, D, K, N, sgb, sgk, sgn, per_split, pid1_base,
               BD: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    # dW_s[d, n] = sum_{b in split s} sum_k (s g_bd) Wo[d, k] Gm_b[k, n]  (Gm_b: G_b or G_b^T, by strides); split s
    # (program axis 2) covers images [s per_split, (s + 1) per_split) and writes its own slice dw[s] (S, D, N): the
    # launcher sums the slices (a fixed order: deterministic, no atomics).
    d = tl.program_id(0).to(tl.int64) * BD + tl.arange(0, BD)
    n = (tl.program_id(1) + pid1_base).to(tl.int64) * BN + tl.arange(0, BN)
    sp = tl.program_id(2).to(tl.int64)
    dm = d < D
    nm = n < N
    acc_t = dw_ptr.dtype.element_ty
    acc = tl.zeros([BD, BN], dtype=acc_t)
    b0 = sp * per_split
    gb = g_ptr + b0 * sgb
    sb = gs_ptr + b0 * D
    for _ in range(0, tl.minimum(per_split, B - b0)):
        acc = _tile_dot(wo_ptr, K, 1, gb, sgk, sgn, sb, d, dm, n, nm, K, acc, BK, 1, PREC)
        gb += sgb
        sb += D
    tl.store(dw_ptr + sp * D * N + d[:, None] * N + n[None, :], acc, mask=dm[:, None] & nm[None, :])


def _precision(dtype):
    """tl.dot's input_precision for a call on `dtype` inputs. Every tile is fp32 (fp64 for fp64): fp64 runs "ieee";
    fp32, fp16 and bf16 run on tensor cores as torch's own fp32 matmuls do under torch.get_float32_matmul_precision():
    "highest" -> "tf32x3" (3 TF32 products: about fp32's rounding), "high" / "medium" -> "tf32"."""
    if dtype == torch.float64:
        return "ieee"
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


# Tile shapes (BD or BM, BN, BK, num_warps, num_stages) per kernel and accumulation dtype, for sm_90 (and newer) and
# sm_80: what compiled without spills and within shared memory (registers and shared memory per configuration are in
# the commit messages). "tf32" and "tf32x3" share them; tf32x3 holds three operand splits in registers, hence 8 warps
# for fp32. sm_80's mma.sync keeps dot operands in registers (sm_90's wgmma reads them from shared memory): smaller
# K / N blocks there; dw keeps K = 16 on sm_90 too (triton 3.6 spilled its tf32x3 tile at K = 32). 16-bit inputs
# (converted to fp32 tiles in registers) get their own entries where they need less: proj on sm_80 keeps 64 rows
# but 16 columns (triton 3.6 spilled the 64 x 32 tile with fp16/bf16 inputs). The interpreter runs programs one after
# another: big tiles keep CI fast; tl.dot needs every dim >= 16.
_INTERPRET_TILES = (32, 32, 32, 4, 1)
_FP64 = (32, 32, 16, 4, 2)
_TILES = {
    90: {"gram": (64, 64, 32, 8, 3), "proj": (64, 64, 16, 8, 3), "dg": (64, 64, 32, 8, 3), "dw": (64, 64, 16, 8, 3)},
    80: {"gram": (64, 32, 16, 8, 3), "proj": (64, 32, 16, 8, 2), "dg": (64, 64, 32, 8, 3), "dw": (64, 64, 16, 8, 3)},
}
_TILES_16BIT = {90: {}, 80: {"proj": (64, 16, 16, 8, 2)}}


def _config(kernel, device, dtype):
    """(BD, BN, BK, num_warps, num_stages) of `kernel` on `dtype` inputs for this device (target(device): interpreter
    or GPU)."""
    tgt = target(device)
    if tgt.interpret:
        return _INTERPRET_TILES
    if dtype == torch.float64:
        return _FP64
    arch = 80 if tgt.arch < 90 else 90
    if dtype in (torch.float16, torch.bfloat16) and kernel in _TILES_16BIT[arch]:
        return _TILES_16BIT[arch][kernel]
    return _TILES[arch][kernel]


def _images_per_split(B, tiles, sms):
    """Images each program of _dw_kernel sums: enough splits of the batch that tiles x splits fills every SM twice
    (dW is (D, C): a few dozen tiles at most), at least 2 images a split; the (splits, D, C) partial sums stay a
    small extra pass."""
    splits = max(1, min(triton.cdiv(2 * sms, tiles), triton.cdiv(B, 2)))
    return triton.cdiv(B, splits)


def _mat(t):
    return t.flatten(2)  # (B, C, HW): a view for contiguous and channels_last tensors alike


def _gram(x, y, acc):
    X = _mat(x)
    Y = X if y is None else _mat(y)
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        return torch.bmm(X, Y.transpose(1, 2), out_dtype=torch.float32)  # fp32 accumulation, no fp32 copies
    X = X.to(acc)
    return torch.bmm(X, X.transpose(1, 2) if y is None else Y.to(acc).transpose(1, 2))


class _Call:
    """What every launcher starts from: the sizes, the accumulation dtype and W1, W2 in it (dense (D, C) matrices, as
    the kernels index them)."""

    def __init__(self, x, y, w1, w2):
        self.acc = acc_dtype(x.dtype)
        self.dtype = x.dtype
        self.B, self.C1 = x.shape[:2]
        self.sym = y is None
        self.C2 = self.C1 if self.sym else y.shape[1]
        self.M = x.shape[2] * x.shape[3]
        self.D = w1.shape[0]
        self.W1, self.W2 = w1.to(self.acc).contiguous(), w2.to(self.acc).contiguous()
        self.prec = _precision(x.dtype)
        self.device = x.device

    def config(self, kernel):
        return _config(kernel, self.device, self.dtype)

    def project_forward(self, x, y, out, proj=None):
        """The project route's forward into out (B, D); with proj (2, D, B, HW), also its tiles of W1 X_b, W2 Y_b."""
        X = _mat(x)
        Y = X if y is None else _mat(y)
        BD, BN, BK, warps, stages = self.config("proj")
        launch(_proj_fwd_kernel, (self.B, triton.cdiv(self.D, BD)),
               self.W1, X, self.W2, Y, out, out if proj is None else proj, self.B, self.D, self.C1, self.C2, self.M,
               1.0 / math.sqrt(self.D), *X.stride(), *Y.stride(), BD=BD, BN=BN, BK=BK, SAVE=proj is not None,
               PREC=self.prec, num_warps=warps, num_stages=stages)

    def no_grads(self, x, w1, w2, output_mask):
        """(need_x, need_y) and the (0,) placeholders of the backward's four outputs (grad_y is never needed when y is
        None: x's gradient holds both terms)."""
        empty = x.new_empty((0,))
        return output_mask[0], output_mask[1] and not self.sym, [empty, empty, w1.new_empty((0,)), w2.new_empty((0,))]


def forward(x, y, w1, w2, route):
    c = _Call(x, y, w1, w2)
    out = torch.zeros((c.B, c.D), dtype=c.acc, device=x.device)
    if c.B == 0:
        return out.to(x.dtype)
    if route == "gram":
        G = _gram(x, y, c.acc).contiguous()
        BD, BN, BK, warps, stages = c.config("gram")
        launch(_gram_fwd_kernel, (c.B, triton.cdiv(c.D, BD)), c.W1, G, c.W2, out, c.D, c.C1, c.C2,
               1.0 / math.sqrt(c.D), BD=BD, BN=BN, BK=BK, PREC=c.prec, num_warps=warps, num_stages=stages)
    else:
        c.project_forward(x, y, out)
    return out.to(x.dtype)


def forward_saved(x, y, w1, w2):
    """The project route's forward that also returns proj = (2, D, B, HW): W1 X_b and W2 Y_b, stored from the same
    tiles the product-reduction uses (one extra write of 2 B D HW elements, no extra FLOPs)."""
    c = _Call(x, y, w1, w2)
    out = torch.zeros((c.B, c.D), dtype=c.acc, device=x.device)
    proj = torch.empty((2, c.D, c.B, c.M), dtype=c.acc, device=x.device)
    if c.B > 0:
        c.project_forward(x, y, out, proj)
    return out.to(x.dtype), proj


def backward_saved(grad_out, x, y, w1, w2, proj, output_mask):
    """Backward from the saved projections: S1 = s g . P1, S2 = s g . P2 (one elementwise pass each), then cuBLAS
    dX = W1^T S2 (+ W2^T S1 when y is x), dY = W2^T S1, dW1 = S2 X^T, dW2 = S1 Y^T, the images side by side
    (one GEMM each: 4 in all, against 6 when the projections are recomputed)."""
    c = _Call(x, y, w1, w2)
    acc, B, M, D, sym, W1, W2 = c.acc, c.B, c.M, c.D, c.sym, c.W1, c.W2
    need_x, need_y, (gx, gy, gw1, gw2) = c.no_grads(x, w1, w2, output_mask)
    gs = grad_out.to(acc).t() * (1.0 / math.sqrt(D))  # (D, B)
    S1 = (proj[0] * gs[:, :, None]).reshape(D, B * M)
    S2 = (proj[1] * gs[:, :, None]).reshape(D, B * M)

    def side(t):  # (B, C, H, W) -> (C, B HW)
        return _mat(t).to(acc).transpose(0, 1).reshape(t.shape[1], B * M)

    def back(dA, like):  # (C, B HW) -> like's shape
        return dA.reshape(like.shape[1], B, M).transpose(0, 1).contiguous().view(like.shape).to(x.dtype)

    Xa = side(x)
    Ya = Xa if sym else side(y)
    if need_x:
        dX = W1.t() @ S2
        if sym:
            dX = dX + W2.t() @ S1
        gx = back(dX, x)
    if need_y:
        gy = back(W2.t() @ S1, y)
    if output_mask[2]:
        gw1 = (S2 @ Xa.t()).to(w1.dtype)
    if output_mask[3]:
        gw2 = (S1 @ Ya.t()).to(w2.dtype)
    return gx, gy, gw1, gw2


def backward(grad_out, x, y, w1, w2, route, output_mask):
    c = _Call(x, y, w1, w2)
    acc, B, C1, C2, D, sym, W1, W2 = c.acc, c.B, c.C1, c.C2, c.D, c.sym, c.W1, c.W2
    need_x, need_y, (gx, gy, gw1, gw2) = c.no_grads(x, w1, w2, output_mask)
    gs = (grad_out.to(acc) * (1.0 / math.sqrt(D))).contiguous()
    if need_x or need_y:
        dG = torch.empty((B, C1, C2), dtype=acc, device=x.device)
        if B > 0:
            BM, BN, BK, warps, stages = c.config("dg")
            grid = (B, triton.cdiv(C1, BM), triton.cdiv(C2, BN))
            launch(_dg_kernel, grid, W1, W2, gs, dG, D, C1, C2, BM=BM, BN=BN, BK=BK, PREC=c.prec, num_warps=warps,
                   num_stages=stages)
        X = _mat(x).to(acc)
        if sym:
            gx = torch.bmm(dG + dG.transpose(1, 2), X)
        else:
            if need_x:
                gx = torch.bmm(dG, _mat(y).to(acc))
            if need_y:
                gy = torch.bmm(dG.transpose(1, 2), X).reshape(y.shape).to(x.dtype)
        if need_x:
            gx = gx.reshape(x.shape).to(x.dtype)
    if output_mask[2] or output_mask[3]:
        G = _gram(x, y, acc).contiguous() if B > 0 else None
        for w_out, wo, N, K, strides, need in ((0, W2, C1, C2, (C1 * C2, 1, C2), output_mask[2]),
                                               (1, W1, C2, C1, (C1 * C2, C2, 1), output_mask[3])):
            if not need:
                continue
            if B > 0:
                BD, BN, BK, warps, stages = c.config("dw")
                tiles = triton.cdiv(D, BD) * triton.cdiv(N, BN)
                per_split = _images_per_split(B, tiles, target(x.device).sms)
                splits = triton.cdiv(B, per_split)
                dW = torch.empty((splits, D, N), dtype=acc, device=x.device)
                launch(_dw_kernel, (triton.cdiv(D, BD), triton.cdiv(N, BN), splits), wo, G, gs, dW, B, D, K, N,
                       *strides, per_split, BD=BD, BN=BN, BK=BK, PREC=c.prec, num_warps=warps, num_stages=stages)
                dW = dW[0] if splits == 1 else dW.sum(0)
            else:
                dW = torch.zeros((D, N), dtype=acc, device=x.device)
            if w_out == 0:
                gw1 = dW.to(w1.dtype)
            else:
                gw2 = dW.to(w2.dtype)
    return gx, gy, gw1, gw2
