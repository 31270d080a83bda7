"""The Triton kernels of infonce_bank_loss and infonce_bank_partial (the same sweep over the bank, with or without the
positive): logits tile by tile with tl.dot (fp32 accumulation), online log-sum-exp, no N x K. The ops' launchers
(vkernels/triton/infonce_bank_loss.py, vkernels/triton/infonce_bank_partial.py) add what is their own: the
positive's terms of the loss, or the bank-only temperature gradient of the partial.

Forward: grid (query tiles x bank splits); each program sweeps its split's bank tiles and writes per-row partials
(max, sumexp, rank count, logit sum) to [splits, N] buffers; a second small kernel merges them in split order
(deterministic), so small N still fills the GPU. Backward recomputes the tiles from the saved per-row lse: one kernel
over (query tiles x dq column blocks) accumulates dq = sum_j w_ij b_j (and E_i = sum_j p_ij l_ij for the
temperature's gradient), one over (bank tiles x dbank column blocks) accumulates dbank_j = sum_i w_ij q_i; every
output element is written by one program (no atomics). FLOPs: forward 2 N K d, backward 6 N K d (2 N K d more per
extra column block); N K exps each. Bytes: bank read once per query tile (L2-resident at MoCo sizes), q, k once.

On the GPU: every dtype runs on tensor cores (fp16/bf16 mma; fp32 3xTF32 or TF32 as
torch.get_float32_matmul_precision() says, read by the launcher; fp64 DMMA with IEEE products). A score tile sums
q . b over d in chunks of BD, so registers do not grow with d (d <= BD: one chunk, q or the bank tile stays on chip
for the whole sweep); tile shapes, warps and stages are chosen per dtype and architecture (`blocks`) so that no
configuration spills or passes the shared memory per block of sm_80 / sm_90. exp/log are the GPU's approximate ones
(ex2.approx, about 2^-22 relative, below the dots' rounding); the smoothing mean divides with div_rn. Offsets into
q / bank / outputs are 64-bit.

Limits: d <= 256. In the Triton interpreter (TRITON_INTERPRET=1, how CI runs this) tl.dot on bf16 multiplies raw bits
(triton issue 11584), so bf16 tiles are cast to fp32 there, and dots are exact fp32 whatever the precision; blocks are
small so that CI's small shapes still cross tile, split, d-chunk and column-block boundaries.
"""
import contextlib
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from vkernels._dtypes import acc_dtype
from vkernels.triton import _launch
from vkernels.triton._dtypes import acc_type

MAX_D = 256


@triton.jit
def _load_rows(ptr, idx, imask, dcols, dmask, s_row, s_d, CAST_F32: tl.constexpr):
    # A (len(idx), len(dcols)) tile of q or the bank, zero-padded so padded rows/columns add nothing to tl.dot; 64-bit
    # offsets (K d passes 2^31 for large banks).
    off = idx.to(tl.int64)[:, None] * s_row + dcols.to(tl.int64)[None, :] * s_d
    t = tl.load(ptr + off, mask=imask[:, None] & dmask[None, :], other=0.0)
    if CAST_F32:
        t = t.to(tl.float32)
    return t


@triton.jit
def _keep(rows, rmask, cols, cmask, ex_ptr, E):
    # Valid bank columns of these rows: inside the bank and not named in the rows' exclude lists.
    keep = rmask[:, None] & cmask[None, :]
    for e in range(E):
        exv = tl.load(ex_ptr + rows.to(tl.int64) * E + e, mask=rmask, other=-1)
        keep = keep & (cols[None, :] != exv[:, None])
    return keep


@triton.jit
def _scores_chunked(q_ptr, b_ptr, rows, rmask, cols, cmask, D, sqn, sqd, sbk, sbd, x,
                    BD: tl.constexpr, CAST_F32: tl.constexpr, PREC: tl.constexpr):
    # x += q[rows] @ bank[cols]^T, d in chunks of BD (rows longer than one chunk: registers stay flat in d).
    for d0 in range(0, D, BD):
        dc = d0 + tl.arange(0, BD)
        dm = dc < D
        qc = _load_rows(q_ptr, rows, rmask, dc, dm, sqn, sqd, CAST_F32)
        bc = _load_rows(b_ptr, cols, cmask, dc, dm, sbk, sbd, CAST_F32)
        x = tl.dot(qc, tl.trans(bc), x, input_precision=PREC, out_dtype=x.dtype)
    return x


@triton.jit(do_not_specialize=["tiles_per_split"])  # 1 or more: one compiled kernel
def _fwd_split_kernel(q_ptr, b_ptr, ex_ptr, lpos_ptr, invt_ptr, pm_ptr, ps_ptr, pc_ptr, px_ptr,
                      N, K, D, E, tiles_per_split, sqn, sqd, sbk, sbd,
                      BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, ONE_D: tl.constexpr,
                      CAST_F32: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    sid = tl.program_id(1)
    acc_t = acc_type(q_ptr.dtype.element_ty)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < N
    dcols = tl.arange(0, BD)
    dmask = dcols < D
    if ONE_D:  # the whole row is one chunk: q stays on chip for the whole sweep
        q = _load_rows(q_ptr, rows, rmask, dcols, dmask, sqn, sqd, CAST_F32)
    inv_t = tl.load(invt_ptr).to(acc_t)
    lpos = tl.load(lpos_ptr + rows, mask=rmask, other=0.0).to(acc_t)
    m = tl.full([BM], float("-inf"), acc_t)
    s = tl.zeros([BM], acc_t)
    cnt = tl.zeros([BM], tl.int32)
    sx = tl.zeros([BM], acc_t)
    for t in range(0, tiles_per_split):
        cols = (sid * tiles_per_split + t) * BN + tl.arange(0, BN)
        cmask = cols < K
        x = tl.zeros([BM, BN], acc_t)
        if ONE_D:
            b = _load_rows(b_ptr, cols, cmask, dcols, dmask, sbk, sbd, CAST_F32)
            x = tl.dot(q, tl.trans(b), x, input_precision=PREC, out_dtype=x.dtype)
        else:
            x = _scores_chunked(q_ptr, b_ptr, rows, rmask, cols, cmask, D, sqn, sqd, sbk, sbd, x, BD, CAST_F32, PREC)
        x = x * inv_t
        keep = _keep(rows, rmask, cols, cmask, ex_ptr, E)
        sx += tl.sum(tl.where(keep, x, 0.0), 1)
        x = tl.where(keep, x, float("-inf"))
        cnt += tl.sum(tl.where(x > lpos[:, None], 1, 0), 1)
        mn = tl.maximum(m, tl.max(x, 1))
        base = tl.where(mn == float("-inf"), 0.0, mn)  # a row with nothing kept yet: exp(-inf - 0) = 0, no NaN
        s = s * tl.exp(m - base) + tl.sum(tl.exp(x - base[:, None]), 1)
        m = mn
    out = sid * N + rows
    tl.store(pm_ptr + out, m, mask=rmask)
    tl.store(ps_ptr + out, s, mask=rmask)
    tl.store(pc_ptr + out, cnt, mask=rmask)
    tl.store(px_ptr + out, sx, mask=rmask)


@triton.jit
def _fwd_merge_kernel(pm_ptr, ps_ptr, pc_ptr, px_ptr, lpos_ptr, count_ptr, loss_ptr, lse_ptr, rank_ptr, eps, N,
                      SPLITS, SMOOTH: tl.constexpr, BLOCK: tl.constexpr, WITH_POS: tl.constexpr):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < N
    lpos = tl.load(lpos_ptr + rows, mask=rmask, other=0.0)
    if WITH_POS:
        m = lpos  # the positive is always a candidate: start from (max, sumexp) = (l_pos, 1)
        s = lpos * 0.0 + 1.0
    else:  # infonce_bank_partial: the bank alone, empty (-inf, 0) until a split has a kept entry
        m = lpos * 0.0 + float("-inf")
        s = lpos * 0.0
    sx = lpos
    cnt = tl.zeros([BLOCK], tl.int64)
    for sp in range(0, SPLITS):  # in split order: deterministic
        mt = tl.load(pm_ptr + sp * N + rows, mask=rmask, other=float("-inf"))
        st = tl.load(ps_ptr + sp * N + rows, mask=rmask, other=0.0)
        mn = tl.maximum(m, mt)
        base = tl.where(mn == float("-inf"), 0.0, mn)  # both empty: exp(-inf - 0) = 0, no NaN
        s = s * tl.exp(m - base) + st * tl.exp(mt - base)
        m = mn
        cnt += tl.load(pc_ptr + sp * N + rows, mask=rmask, other=0).to(tl.int64)
        sx += tl.load(px_ptr + sp * N + rows, mask=rmask, other=0.0)
    lse = tl.where(s > 0, m + tl.log(s), float("-inf"))
    if SMOOTH:
        count = tl.load(count_ptr + rows, mask=rmask, other=1.0)
        if lpos_ptr.dtype.element_ty == tl.float64:
            mean = sx / count  # fp64 division is IEEE on the GPU
        else:
            mean = tl.math.div_rn(sx, count)  # fp32 `/` is div.full (2 ulp) on the GPU: round like the reference
        loss = lse - (1.0 - eps) * lpos - eps * mean
    else:
        loss = lse - lpos
    tl.store(lse_ptr + rows, lse, mask=rmask)
    tl.store(loss_ptr + rows, loss, mask=rmask)
    tl.store(rank_ptr + rows, cnt, mask=rmask)


@triton.jit
def _weights(x, rows, rmask, cols, cmask, ex_ptr, E, lse, coef, sm, inv_t):
    # From scaled logits x: w_ij = (coef_i p_ij - sm_i) / T on kept columns (0 elsewhere), p = exp(x - lse), and
    # p_ij (x_ij - lse_i).
    keep = _keep(rows, rmask, cols, cmask, ex_ptr, E)
    x = tl.where(keep, x, 0.0)
    p = tl.where(keep, tl.exp(x - lse[:, None]), 0.0)
    w = tl.where(keep, coef[:, None] * p - sm[:, None], 0.0) * inv_t
    return w, p * (x - lse[:, None])


@triton.jit
def _bwd_dq_kernel(q_ptr, b_ptr, ex_ptr, invt_ptr, lse_ptr, coef_ptr, sm_ptr, dq_ptr, es_ptr,
                   N, K, D, E, sqn, sqd, sbk, sbd,
                   BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, DO: tl.constexpr, ONE_D: tl.constexpr,
                   CAST_F32: tl.constexpr, PREC: tl.constexpr):
    # Program (i, c): rows i*BM.., dq columns c*DO.. (ONE_D: DO == BD, one column block, the bank tile is reused).
    acc_t = acc_type(q_ptr.dtype.element_ty)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < N
    ocols = tl.program_id(1) * DO + tl.arange(0, DO)
    omask = ocols < D
    if ONE_D:
        q = _load_rows(q_ptr, rows, rmask, ocols, omask, sqn, sqd, CAST_F32)
    inv_t = tl.load(invt_ptr).to(acc_t)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    coef = tl.load(coef_ptr + rows, mask=rmask, other=0.0)
    sm = tl.load(sm_ptr + rows, mask=rmask, other=0.0)
    dq = tl.zeros([BM, DO], acc_t)
    es = tl.zeros([BM], acc_t)
    for j0 in range(0, K, BN):
        cols = j0 + tl.arange(0, BN)
        cmask = cols < K
        x = tl.zeros([BM, BN], acc_t)
        if ONE_D:
            bo = _load_rows(b_ptr, cols, cmask, ocols, omask, sbk, sbd, CAST_F32)
            x = tl.dot(q, tl.trans(bo), x, input_precision=PREC, out_dtype=x.dtype)
        else:
            x = _scores_chunked(q_ptr, b_ptr, rows, rmask, cols, cmask, D, sqn, sqd, sbk, sbd, x, BD, CAST_F32, PREC)
            bo = _load_rows(b_ptr, cols, cmask, ocols, omask, sbk, sbd, CAST_F32)
        w, px = _weights(x * inv_t, rows, rmask, cols, cmask, ex_ptr, E, lse, coef, sm, inv_t)
        es += tl.sum(px, 1)
        dq = tl.dot(w.to(bo.dtype), bo, dq, input_precision=PREC, out_dtype=dq.dtype)
    tl.store(dq_ptr + rows.to(tl.int64)[:, None] * D + ocols[None, :], dq, mask=rmask[:, None] & omask[None, :])
    tl.store(es_ptr + rows, es, mask=rmask & (tl.program_id(1) == 0))


@triton.jit
def _bwd_dbank_kernel(q_ptr, b_ptr, ex_ptr, invt_ptr, lse_ptr, coef_ptr, sm_ptr, db_ptr,
                      N, K, D, E, sqn, sqd, sbk, sbd,
                      BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, DO: tl.constexpr,
                      ONE_D: tl.constexpr, CAST_F32: tl.constexpr, PREC: tl.constexpr):
    # Program (j, c): bank rows j*BN.., dbank columns c*DO.. (ONE_D as in _bwd_dq_kernel).
    acc_t = acc_type(q_ptr.dtype.element_ty)
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    cmask = cols < K
    ocols = tl.program_id(1) * DO + tl.arange(0, DO)
    omask = ocols < D
    if ONE_D:
        b = _load_rows(b_ptr, cols, cmask, ocols, omask, sbk, sbd, CAST_F32)
    inv_t = tl.load(invt_ptr).to(acc_t)
    db = tl.zeros([BN, DO], acc_t)
    for i0 in range(0, N, BM):
        rows = i0 + tl.arange(0, BM)
        rmask = rows < N
        x = tl.zeros([BM, BN], acc_t)
        if ONE_D:
            qo = _load_rows(q_ptr, rows, rmask, ocols, omask, sqn, sqd, CAST_F32)
            x = tl.dot(qo, tl.trans(b), x, input_precision=PREC, out_dtype=x.dtype)
        else:
            x = _scores_chunked(q_ptr, b_ptr, rows, rmask, cols, cmask, D, sqn, sqd, sbk, sbd, x, BD, CAST_F32, PREC)
            qo = _load_rows(q_ptr, rows, rmask, ocols, omask, sqn, sqd, CAST_F32)
        lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
        coef = tl.load(coef_ptr + rows, mask=rmask, other=0.0)
        sm = tl.load(sm_ptr + rows, mask=rmask, other=0.0)
        w, px = _weights(x * inv_t, rows, rmask, cols, cmask, ex_ptr, E, lse, coef, sm, inv_t)
        db = tl.dot(tl.trans(w.to(qo.dtype)), qo, db, input_precision=PREC, out_dtype=db.dtype)
    tl.store(db_ptr + cols.to(tl.int64)[:, None] * D + ocols[None, :], db.to(db_ptr.dtype.element_ty),
             mask=cmask[:, None] & omask[None, :])


# ------------------------------------------------------------------------------------------------------ launchers
# torch.get_float32_matmul_precision() -> tl.dot's input_precision for fp32 inputs, as torch's own fp32 matmuls
# follow it: "highest" keeps fp32 accuracy on tensor cores with 3xTF32 (hi*hi + hi*lo + lo*hi), "high" / "medium"
# round the inputs to TF32 (10-bit mantissa).
_FP32_PRECISION = {"highest": "tf32x3", "high": "tf32", "medium": "tf32"}


def dot_precision(dtype):
    """tl.dot's input_precision for inputs of `dtype`, read when the launcher runs (the kernels take it as a
    constexpr). fp64 has no tensor-core path in Triton; fp16/bf16 always use tensor cores (the value is unused)."""
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return _FP32_PRECISION[torch.get_float32_matmul_precision()]
    return "tf32"


def blocks(dtype, d, tgt):
    """Tile shapes and launch options per kernel for inputs of `dtype`, row length d, on target `tgt`:
    {"fwd" | "bwd": dict(BM, BN, BD, DO, ONE_D, num_warps, num_stages)}. BD is the d chunk of the score tile
    (ONE_D: the whole row is one chunk, held on chip across the sweep), DO the column block of dq / dbank that one
    program accumulates (ONE_D: DO = BD). Chosen so that nothing spills and shared memory fits the architecture
    (checked by compiling every choice for sm_80 and sm_90)."""
    p2 = max(16, triton.next_power_of_2(d))
    if tgt.interpret:  # small blocks: CI's small shapes still cover several tiles and splits; d > 32 (a test with
        # d = 40) covers d chunks and dq / dbank column blocks
        one = p2 <= 32
        bd = p2 if one else 32
        cfg = dict(BM=16, BN=32, BD=bd, DO=bd, ONE_D=one, num_warps=4, num_stages=1)
        return {"fwd": cfg, "bwd": cfg}
    # maxnreg: without it ptxas may cap a 256-thread kernel at 128 registers and spill rather than use more.
    gpu = dict(num_warps=8, maxnreg=255)
    if dtype == torch.float64:  # DMMA tiles; 4 warps
        one = p2 <= 32
        bd = p2 if one else 32
        fwd = dict(BM=32, BN=32, BD=bd, DO=bd, ONE_D=one, num_warps=4, num_stages=2, maxnreg=255)
        return {"fwd": fwd, "bwd": dict(fwd, DO=bd if one else 64)}
    if dtype == torch.float32:  # 3xTF32 ("highest") splits each operand into two TF32 halves: the tightest budget
        one = p2 <= 32
        bd = p2 if one else 16
        x3 = dot_precision(dtype) == "tf32x3"
        fwd = dict(BM=64, BN=32, BD=bd, DO=bd, ONE_D=one, num_stages=3, **gpu)
        bwd = dict(BM=32 if (x3 and tgt.arch < 90) else 64, BN=32, BD=bd,
                   DO=bd if one else (64 if tgt.arch < 90 else 128), ONE_D=one, num_stages=2, **gpu)
        return {"fwd": fwd, "bwd": bwd}
    one = p2 <= 128  # fp16 / bf16
    bd = p2 if one else 64
    # sm_80's mma.sync keeps the operands in registers: 128-row tiles spill there (24-76 B, triton 3.6 and 3.8)
    fwd = dict(BM=128 if tgt.arch >= 90 else 64, BN=64, BD=bd, DO=bd, ONE_D=one, num_stages=3, **gpu)
    bwd = dict(BM=64, BN=64, BD=bd, DO=bd if one else 128, ONE_D=one, num_stages=2, **gpu)
    return {"fwd": fwd, "bwd": bwd}


def prepare(q, k, bank, temperature, label_smoothing, exclude):
    """What every launcher computes first: (accumulation dtype, 1 / T as a 1-element tensor, the positives' logits
    l_i0, exclude as an (N, E) tensor, candidates per row, the target, the kernels' dot constexprs)."""
    if q.shape[1] > MAX_D:
        raise RuntimeError(f"infonce_bank_loss: the Triton kernel supports d <= {MAX_D}, got d = {q.shape[1]}")
    acc = acc_dtype(q.dtype)
    N, K = q.shape[0], bank.shape[0]
    inv_t = (1.0 / temperature.to(acc)).reshape(1)
    lpos = (q.to(acc) * k.to(acc)).sum(1) * inv_t
    if exclude is None:
        ex = torch.empty((N, 0), dtype=torch.long, device=q.device)
    else:
        ex = (exclude.unsqueeze(1) if exclude.ndim == 1 else exclude).contiguous()
        if ex.numel() and (bool((ex < -1).any()) or bool((ex >= K).any())):
            raise RuntimeError(f"infonce_bank_loss: exclude holds an index out of range for a bank of K = {K} "
                               "entries (-1 means none)")
    # Candidates per row: K + 1 minus the distinct valid indices named.
    srt = ex.sort(1).values
    first = torch.ones_like(srt, dtype=torch.bool)
    first[:, 1:] = srt[:, 1:] != srt[:, :-1]
    count = (K + 1 - ((srt >= 0) & first).sum(1)).to(acc)
    tgt = _launch.target(q.device)
    # The interpreter's tl.dot multiplies bf16's raw bits (triton issue 11584): bf16 tiles go through fp32 there.
    cast = tgt.interpret and q.dtype == torch.bfloat16
    consts = dict(CAST_F32=cast, PREC=dot_precision(q.dtype))
    return acc, inv_t, lpos, ex, count, tgt, consts


def cfg_args(cfg, *drop):
    """The launch options of a `blocks` entry without the keys `drop` (ones a kernel does not take)."""
    return {k: v for k, v in cfg.items() if k not in drop}


def device_of(t):
    """The CUDA device context of t (a no-op context on the CPU, where the interpreter runs)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def forward_rows(q, k, bank, temperature, label_smoothing, exclude, with_positive):
    """(loss, lse, rank) per row, as the C++ op infonce_bank_loss returns them (with_positive), or over the bank
    alone (loss then unused)."""
    acc, inv_t, lpos, ex, count, tgt, consts = prepare(q, k, bank, temperature, label_smoothing, exclude)
    N, D = q.shape
    K = bank.shape[0]
    cfg = blocks(q.dtype, D, tgt)["fwd"]
    bm, bn = cfg["BM"], cfg["BN"]
    m_tiles, n_tiles = max(1, triton.cdiv(N, bm)), triton.cdiv(K, bn)
    # Enough programs to fill the GPU (~4 per SM) even for small N; a few in the interpreter.
    target = 4 * tgt.sms
    splits = max(1, min(n_tiles, triton.cdiv(target, m_tiles)))
    per = triton.cdiv(n_tiles, splits)
    splits = triton.cdiv(n_tiles, per)
    pm = torch.empty((splits, N), dtype=acc, device=q.device)
    ps, px = torch.empty_like(pm), torch.empty_like(pm)
    pc = torch.empty((splits, N), dtype=torch.int32, device=q.device)
    loss, lse = torch.empty(N, dtype=acc, device=q.device), torch.empty(N, dtype=acc, device=q.device)
    rank = torch.empty(N, dtype=torch.long, device=q.device)
    if N == 0:
        return loss, lse, rank
    with device_of(q):
        _launch.launch(_fwd_split_kernel, (m_tiles, splits),
                       q, bank, ex if ex.numel() else lpos, lpos, inv_t, pm, ps, pc, px, N, K, D, ex.shape[1], per,
                       q.stride(0), q.stride(1), bank.stride(0), bank.stride(1), **cfg_args(cfg, "DO"), **consts)
        block = 128
        _launch.launch(_fwd_merge_kernel, (triton.cdiv(N, block),),
                       pm, ps, pc, px, lpos, count, loss, lse, rank, float(label_smoothing), N, splits,
                       SMOOTH=label_smoothing > 0, BLOCK=block, WITH_POS=with_positive, num_warps=4)
    return loss, lse, rank


class BankSweep(NamedTuple):
    """The bank's share of the backward (every term of dq that sums over the bank, E_i = sum_j p_ij (l_ij - lse_i),
    dbank) and the per-row values that the ops' launchers use for their own terms; in the accumulation dtype."""
    dq: torch.Tensor
    es: torch.Tensor
    dbank: torch.Tensor
    acc: torch.dtype
    inv_t: torch.Tensor
    lpos: torch.Tensor
    lse: torch.Tensor
    g: torch.Tensor
    h: torch.Tensor
    coef: torch.Tensor
    sm: torch.Tensor


def backward_bank_sweep(grad_loss, grad_lse, q, k, bank, temperature, label_smoothing, exclude, lse, bank_grad):
    """The backward's two kernels over the bank: dq's bank terms and E (one program per query tile and dq column
    block), dbank (one per bank tile and column block), with w_ij = ((g_i + h_i) p_ij - g_i eps / count_i) / T."""
    acc, inv_t, lpos, ex, count, tgt, consts = prepare(q, k, bank, temperature, label_smoothing, exclude)
    N, D = q.shape
    K = bank.shape[0]
    cfg = blocks(q.dtype, D, tgt)["bwd"]
    bm, bn = cfg["BM"], cfg["BN"]
    d_blocks = triton.cdiv(D, cfg["DO"])
    g, h = grad_loss.to(acc), grad_lse.to(acc)
    lse = lse.to(acc)
    coef = (g + h).contiguous()
    sm = (g * label_smoothing / count).contiguous()
    dq = torch.zeros((N, D), dtype=acc, device=q.device)
    es = torch.zeros(N, dtype=acc, device=q.device)
    dbank = torch.empty((K if bank_grad else 0, D), dtype=bank.dtype, device=q.device)
    if N > 0:
        exp_ = ex if ex.numel() else lpos
        with device_of(q):
            _launch.launch(_bwd_dq_kernel, (triton.cdiv(N, bm), d_blocks),
                           q, bank, exp_, inv_t, lse, coef, sm, dq, es, N, K, D, ex.shape[1],
                           q.stride(0), q.stride(1), bank.stride(0), bank.stride(1), **cfg_args(cfg), **consts)
            if bank_grad:
                _launch.launch(_bwd_dbank_kernel, (triton.cdiv(K, bn), d_blocks),
                               q, bank, exp_, inv_t, lse, coef, sm, dbank, N, K, D, ex.shape[1],
                               q.stride(0), q.stride(1), bank.stride(0), bank.stride(1), **cfg_args(cfg), **consts)
    elif bank_grad:
        dbank.zero_()
    return BankSweep(dq, es, dbank, acc, inv_t, lpos, lse, g, h, coef, sm)
