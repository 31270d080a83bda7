"""compact_bilinear_pooling on GPU: Gram GEMMs by torch.bmm (cuBLAS, fp32 accumulation and fp32 output), the signed
scatter and gather in Triton. Deterministic: no atomics anywhere.

Forward: G = X Y^T (B, C1, C2) in fp32, then `_scatter_kernel`: every output bin d is owned by one lane, which adds
its pairs (i, j) with (h1[i] + h2[j]) mod D = d in a fixed order. The pair lists are a sliced ELL (`_ell_levels`):
bins sorted by pair count so that a block's lanes run about as many trips as each has pairs, each block's lists
stored [trip, lane] (padded with index -1) so that every trip's list loads are contiguous, and a list longer than a
few times the mean split into segments that further, small levels sum per bin: a block runs no longer than its
lanes' real work, whatever the hashes (the bin-per-lane CSR loop ran its busiest bin's count on every lane and read
the lists with one memory sector per lane). Built from h1, h2 and D (O(C1 C2 log) on the GPU) and cached (see
`_csr_cache`: reused while the same h/s tensors are unchanged, rebuilt when they are modified, replaced or moved).
Bytes per image: G read once (4 C1 C2) + the pair list (8 C1 C2 plus padding, L2-resident across images);
FLOPs 2 C1 C2. Backward: `_gather_kernel` writes dG[b, i, j] = s1[i] s2[j] grad_out[b, (h1[i] + h2[j]) mod D]
(4 C1 C2 bytes written per image, D read), then dX = dG Y and dY = dG^T X by torch.bmm.
Grid axes 1 and 2 (images, column / location blocks) past CUDA's 65,535 are split by _launch through pid1_base /
pid2_base. List indices and block offsets are int32 while the padded lists hold < 2^31 slots, int64 beyond.
"""
import weakref
from collections import OrderedDict

import torch
import triton
import triton.language as tl

from vkernels._dtypes import acc_dtype
from vkernels.triton import _launch
from vkernels.triton._dtypes import acc_type


def _blocks(t):
    """(bins per program of the scatter / sketch kernels, columns per program of the gather kernel) on target t."""
    return (32, 32) if t.interpret else (128, 256)


@triton.jit
def _scatter_kernel(src_ptr, idx_ptr, coef_ptr, base_ptr, dst_ptr, out_ptr, src_stride, out_stride, pid1_base,
                    BLOCK: tl.constexpr):
    # One sliced-ELL block (see `_ell_levels`) of one row b: lane r sums its list in order, out[b, dst[r]] = acc.
    blk = tl.program_id(0)
    b = (tl.program_id(1) + pid1_base).to(tl.int64)
    acc_t = acc_type(src_ptr.dtype.element_ty)
    lanes = tl.arange(0, BLOCK)
    s0 = tl.load(base_ptr + blk)
    s1 = tl.load(base_ptr + blk + 1)
    acc = tl.zeros([BLOCK], dtype=acc_t)
    row = src_ptr + b * src_stride
    for s in range(s0, s1, BLOCK):  # [k, lane] slots: unmasked, contiguous loads of the list
        p = tl.load(idx_ptr + s + lanes)
        c = tl.load(coef_ptr + s + lanes).to(acc_t)
        # Padding (p = -1) loads nothing: a coef-0 product with an inf in the source would make a NaN.
        acc += c * tl.load(row + p, mask=p >= 0, other=0.0).to(acc_t)
    d = tl.load(dst_ptr + blk * BLOCK + lanes)
    tl.store(out_ptr + b * out_stride + d, acc, mask=d >= 0)


@triton.jit
def _gather_kernel(go_ptr, h1_ptr, s1_ptr, h2_ptr, s2_ptr, dg_ptr, C1, C2, D, pid1_base, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * C1 + i
    b = row // C1
    i = row % C1
    acc_t = dg_ptr.dtype.element_ty
    cols = (tl.program_id(1) + pid1_base) * BLOCK + tl.arange(0, BLOCK)
    m = cols < C2
    hi = tl.load(h1_ptr + i)
    si = tl.load(s1_ptr + i).to(acc_t)
    d = hi + tl.load(h2_ptr + cols, mask=m, other=0)
    d = tl.where(d >= D, d - D, d)
    v = tl.load(go_ptr + b * D + d, mask=m, other=0.0).to(acc_t) * si * tl.load(s2_ptr + cols, mask=m, other=0.0)
    tl.store(dg_ptr + row * C2 + cols, v, mask=m)


def gram(x, y):
    """G_b = X_b Y_b^T, (B, C1, C2) in fp32 (fp64 for fp64)."""
    acc = acc_dtype(x.dtype)
    X, Y = x.flatten(2), y.flatten(2)
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        return torch.bmm(X, Y.transpose(1, 2), out_dtype=torch.float32)  # tensor cores, fp32 accumulate and output
    return torch.bmm(X.to(acc), Y.to(acc).transpose(1, 2))


# The bin lists (sliced ELL, see `_ell_levels`) of the last few (h, s) tensors: a module's hash buffers are the same
# tensors call after call, so the sorts and sign gathers are done once. Keyed by each tensor's identity, storage
# pointer, version counter (bumped by every in-place write: h.copy_(...), h[i] = ..., load_state_dict), device, dtype,
# shape and strides; an entry also holds weak references to its tensors and is used only while they are alive and
# the same objects (a new tensor that reuses a freed one's id and storage does not hit a stale entry).
_CSR_CACHE_SIZE = 16
_csr_cache: OrderedDict = OrderedDict()
csr_builds = 0  # how many bin lists were built (tests read it)
# Pair lists longer than max(_SEGMENT_MIN, 4 x the mean list length) are split into segments summed by a further
# level (O(B D) more traffic against a serial chain of up to C1 C2 loads). Channel lists are not: there a further
# level is a pass over the (B, L, D) sketch, about what the longest chain of C channel loads costs.
_SEGMENT_MIN = 64


def _tensor_key(t):
    return (id(t), t.data_ptr(), t._version, str(t.device), t.dtype, tuple(t.shape), t.stride())


def _cached(kind, tensors, extra, build):
    global csr_builds
    key = (kind, *(_tensor_key(t) for t in tensors), *extra)
    hit = _csr_cache.get(key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)):
        _csr_cache.move_to_end(key)
        return hit[1]
    csr_builds += 1
    value = build()
    try:
        refs = [weakref.ref(t) for t in tensors]
    except TypeError:  # not weak-referenceable: build every call
        return value
    _csr_cache[key] = (refs, value)
    while len(_csr_cache) > _CSR_CACHE_SIZE:
        _csr_cache.popitem(last=False)
    return value


def _segment_cap(entries, rows):
    return max(_SEGMENT_MIN, 4 * -(-entries // max(1, rows)))


def _ell_levels(off, src, coef, block, split=True, group=1):
    """Sliced ELL of a CSR reduction out[r] = sum_{e in off[r]:off[r+1]} coef[e] in[src[e]] (entries in summation
    order): a list of levels (idx, coef, base, dst, width), run one after another by `_scatter_kernel`.

    A level's lanes are virtual rows: a row's list, cut into segments of at most `_segment_cap` entries when `split`
    (an empty row keeps one empty segment, so its lane writes the 0). Aligned groups of `group` consecutive virtual
    rows are sorted by their longest list, longest first (stable; a group's rows stay in order in adjacent lanes, so
    group = 8 keeps an fp32 output sector's bins together), and taken `block` lanes at a time: block q's slots are
    idx/coef[base[q] + k block + lane] for k below its longest list's length, padded with idx -1 and coef 0.
    dst[q block + lane] is where the lane's sum goes (-1: padding lane): the output row when no row was split (the
    last level), else column q block + lane of a (rows, width) partial buffer that the next level sums per row, its
    segments in order. Every sum keeps a fixed order.
    """
    dev = off.device
    levels = []
    while True:
        R, N = off.numel() - 1, src.numel()
        cap = _segment_cap(N, R) if split else max(1, N)
        n = off[1:] - off[:-1]
        nseg = ((n + cap - 1) // cap).clamp_(min=1)
        V = int(nseg.sum())
        row = torch.repeat_interleave(torch.arange(R, device=dev), nseg, output_size=V)
        seg = torch.arange(V, device=dev) - (torch.cumsum(nseg, 0) - nseg)[row]
        vlen = (n[row] - seg * cap).clamp_(0, cap)
        # Sort aligned groups of `group` lanes by their longest list (the lanes of a group stay together, in order).
        nblk = triton.cdiv(V, block)
        P = nblk * block
        vlen_p = torch.zeros(P, dtype=torch.int64, device=dev)
        vlen_p[:V] = vlen
        gorder = torch.argsort(vlen_p.view(-1, group).amax(1), descending=True, stable=True)
        order = (gorder[:, None] * group + torch.arange(group, device=dev)).reshape(-1)  # lane -> virtual row
        real = order < V
        lens = vlen_p[order]
        start = torch.zeros(P, dtype=torch.int64, device=dev)
        start[:V] = off[:-1][row] + seg * cap
        start = start[order]
        base = torch.zeros(nblk + 1, dtype=torch.int64, device=dev)
        base[1:] = torch.cumsum(lens.view(nblk, block).amax(1) * block, 0)
        total = int(base[-1])
        it = torch.int32 if total + block < 2**31 else torch.int64
        lane = torch.repeat_interleave(torch.arange(P, device=dev), lens, output_size=N)
        k = torch.arange(N, device=dev) - (torch.cumsum(lens, 0) - lens)[lane]
        slot = base[lane // block] + k * block + lane % block
        e = start[lane] + k
        eidx = torch.full((total,), -1, dtype=it, device=dev)
        eidx[slot] = src[e].to(it)
        ecoef = torch.zeros(total, dtype=coef.dtype, device=dev)
        ecoef[slot] = coef[e]
        last = V == R
        lanes = torch.arange(P, device=dev)
        dst = torch.where(real, row[order.clamp(max=V - 1)] if last else lanes, -1).to(torch.int32)
        levels.append((eidx, ecoef, base.to(it), dst, P))
        if last:
            return levels
        pos = torch.empty(V, dtype=torch.int64, device=dev)
        pos[order[real]] = lanes[real]
        src, coef = pos, torch.ones(V, dtype=coef.dtype, device=dev)  # row r's segments, in order
        off = torch.zeros(R + 1, dtype=torch.int64, device=dev)
        off[1:] = torch.cumsum(nseg, 0)


def _run_levels(levels, src, out, block):
    """The scatter levels, src (rows, W) -> out (rows, D); intermediate (rows, width) sums in out's dtype."""
    for i, (idx, coef, base, dst, width) in enumerate(levels):
        dest = out if i == len(levels) - 1 else torch.empty(src.shape[0], width, dtype=out.dtype, device=out.device)
        _launch.launch(_scatter_kernel, (base.numel() - 1, src.shape[0]), src, idx, coef, base, dst, dest,
                       src.stride(0), dest.stride(0), BLOCK=block)
        src = dest


def pair_lists(h1, s1, h2, s2, output_dim, acc, block):
    """The forward's scatter levels (`_ell_levels`), cached: bin d sums s1[i] s2[j] G[i, j] over its pairs, in
    row-major (i, j) order."""
    def build():
        order, off = pair_csr(h1, h2, output_dim, acc)
        coef = (s1.to(acc)[:, None] * s2.to(acc)[None, :]).reshape(-1)[order]
        return _ell_levels(off, order, coef, block)
    return _cached("pair", (h1, s1, h2, s2), (output_dim, acc, block, _SEGMENT_MIN), build)


def pair_csr(h1, h2, output_dim, dtype):
    """Pairs (i, j) sorted by output bin: flat indices i * C2 + j (int64, row-major inside a bin), their signs
    s1[i] s2[j] are applied by the caller through `coef`; offsets (D + 1,) int64."""
    bins = ((h1[:, None] + h2[None, :]) % output_dim).reshape(-1)
    order = torch.argsort(bins, stable=True)
    counts = torch.bincount(bins, minlength=output_dim)
    off = torch.zeros(output_dim + 1, dtype=torch.int64, device=h1.device)
    off[1:] = torch.cumsum(counts, 0)
    return order, off


def forward(x, y, h1, s1, h2, s2, output_dim):
    B, C1, C2 = x.shape[0], x.shape[1], y.shape[1]
    acc = acc_dtype(x.dtype)
    if B == 0 or C1 == 0 or C2 == 0:
        return torch.zeros(B, output_dim, dtype=x.dtype, device=x.device)
    out = torch.empty(B, output_dim, dtype=acc, device=x.device)  # every bin is written, empty ones with 0
    G = gram(x, y).contiguous().view(B, C1 * C2)
    block_d = _blocks(_launch.target(x.device))[0]
    _run_levels(pair_lists(h1, s1, h2, s2, output_dim, acc, block_d), G, out, block_d)
    return out.to(x.dtype)


def backward(grad_out, x, y, h1, s1, h2, s2):
    B, C1, C2 = x.shape[0], x.shape[1], y.shape[1]
    D = grad_out.shape[1]
    acc = acc_dtype(x.dtype)
    if B == 0 or C1 == 0 or C2 == 0 or x.shape[2] * x.shape[3] == 0:
        return torch.zeros(x.shape, dtype=x.dtype, device=x.device), torch.zeros(y.shape, dtype=y.dtype,
                                                                                 device=y.device)
    g = grad_out.to(acc).contiguous()
    dG = torch.empty(B, C1, C2, dtype=acc, device=x.device)
    block_j = _blocks(_launch.target(x.device))[1]
    _launch.launch(
        _gather_kernel, (B * C1, triton.cdiv(C2, block_j)), g, h1.to(torch.int32).contiguous(),
        s1.to(acc).contiguous(), h2.to(torch.int32).contiguous(), s2.to(acc).contiguous(), dG, C1, C2, D,
        BLOCK=block_j)
    X, Y = x.to(acc).flatten(2), y.to(acc).flatten(2)
    dX = torch.bmm(dG, Y).reshape(x.shape).to(x.dtype)
    dY = torch.bmm(dG.transpose(1, 2), X).reshape(y.shape).to(y.dtype)
    return dX.contiguous(), dY.contiguous()


# ---------------------------------------------------------------------------------------------------------------------
# Frequency-pooled route: out_b = irfft(sum_l rfft(CS1(x_l)) rfft(CS2(y_l)), n=D), locations a chunk at a time.
# Per chunk of L locations (all images at once): `_sketch_kernel` writes the count sketches (B, L, D) (each bin owned
# by one lane, summing its channels in a fixed order from a sliced-ELL list like the pair lists', unsplit and with
# bins sorted 8 at a time so that its stores stay whole sectors: no atomics; bytes: x's chunk read once through the
# gather, 4 B L D written), torch.fft.rfft (cuFFT), then `_spec_mac_kernel` adds sum_l F1_l F2_l into the (B, K) fp32
# spectrum (4 B L K complex reads, 8 FLOPs per complex pair). One irfft at the end. Memory: the chunk's sketches and
# spectra, bounded by FREQ_CHUNK_ELEMS, never all locations.
# ---------------------------------------------------------------------------------------------------------------------
FREQ_CHUNK_ELEMS = 1 << 24  # B * L * D reals per sketch per chunk (at most)


def _freq_sizes(t):
    """(reals per sketch per chunk, locations per sketch program, spectrum bins per MAC program) on target t."""
    return (1 << 22, 8, 32) if t.interpret else (FREQ_CHUNK_ELEMS, 16, 256)


@triton.jit
def _sketch_kernel(x_ptr, sxb, sxc, sxl, ch_ptr, sg_ptr, base_ptr, dst_ptr, cs_ptr, l0, L, LC, D, pid1_base, pid2_base,
                   BLOCK_L: tl.constexpr, BLOCK: tl.constexpr):
    # One sliced-ELL block (see `_ell_levels`) of BLOCK_L locations of image b: lane r sums its signed channels
    # into cs[b, l, dst[r]].
    blk = tl.program_id(0)
    pid_l = tl.program_id(1) + pid1_base
    b = (tl.program_id(2) + pid2_base).to(tl.int64)
    acc_t = acc_type(cs_ptr.dtype.element_ty)
    lanes = tl.arange(0, BLOCK)
    ls = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    lmask = ls < L
    s0 = tl.load(base_ptr + blk)
    s1 = tl.load(base_ptr + blk + 1)
    acc = tl.zeros([BLOCK_L, BLOCK], dtype=acc_t)
    xl = x_ptr + b * sxb + (l0 + ls[:, None]).to(tl.int64) * sxl
    for s in range(s0, s1, BLOCK):  # [k, lane] slots: unmasked, contiguous loads of the list
        c = tl.load(ch_ptr + s + lanes)
        sg = tl.load(sg_ptr + s + lanes).to(acc_t)
        v = tl.load(xl + c.to(tl.int64)[None, :] * sxc, mask=(c >= 0)[None, :] & lmask[:, None], other=0.0)
        acc += sg[None, :] * v.to(acc_t)
    d = tl.load(dst_ptr + blk * BLOCK + lanes)
    tl.store(cs_ptr + (b * LC + ls[:, None]) * D + d[None, :], acc, mask=lmask[:, None] & (d >= 0)[None, :])


@triton.jit
def _spec_mac_kernel(f1_ptr, f2_ptr, spec_ptr, L, K, pid1_base, BLOCK: tl.constexpr):
    # f1, f2: (B, L, K, 2) real views of the chunk's spectra; spec: (B, K, 2) running sum, updated in place.
    pid = tl.program_id(0)
    b = (tl.program_id(1) + pid1_base).to(tl.int64)
    acc_t = spec_ptr.dtype.element_ty
    ks = pid * BLOCK + tl.arange(0, BLOCK)
    m = ks < K
    sp = spec_ptr + (b * K + ks) * 2
    re = tl.load(sp, mask=m, other=0.0)
    im = tl.load(sp + 1, mask=m, other=0.0)
    for l in range(0, L):
        o = ((b * L + l) * K + ks) * 2
        ar = tl.load(f1_ptr + o, mask=m, other=0.0).to(acc_t)
        ai = tl.load(f1_ptr + o + 1, mask=m, other=0.0).to(acc_t)
        cr = tl.load(f2_ptr + o, mask=m, other=0.0).to(acc_t)
        ci = tl.load(f2_ptr + o + 1, mask=m, other=0.0).to(acc_t)
        re += ar * cr - ai * ci
        im += ar * ci + ai * cr
    tl.store(sp, re, mask=m)
    tl.store(sp + 1, im, mask=m)


def channel_lists(h, s, output_dim, acc, block):
    """A count sketch's one sliced-ELL level (`_ell_levels`, unsplit, bins sorted 8 at a time: the sketch's stores
    are its main traffic and stay whole sectors), cached like the pair lists: bin d sums s[c] x[c] over its channels
    in increasing channel order."""
    def build():
        order = torch.argsort(h, stable=True)
        off = torch.zeros(output_dim + 1, dtype=torch.int64, device=h.device)
        off[1:] = torch.cumsum(torch.bincount(h, minlength=output_dim), 0)
        return _ell_levels(off, order, s.to(acc)[order], block, split=False, group=8)[0]
    return _cached("channel", (h, s), (output_dim, acc, block), build)


def freq_chunk(B, D, HW, elems=FREQ_CHUNK_ELEMS):
    """Locations per chunk: keeps B L D (per sketch) under elems."""
    return max(1, min(HW, elems // max(1, B * D)))


class _FreqChunks:
    """Spectra (B, L, K) of both sketches, chunk by chunk."""

    def __init__(self, x, y, h1, s1, h2, s2, D):
        self.acc = acc_dtype(x.dtype)
        self.B, self.HW, self.D = x.shape[0], x.shape[2] * x.shape[3], D
        self.X, self.Y = x.flatten(2), y.flatten(2)  # views for NCHW and channels_last (strides passed)
        elems, self.block_l, _ = _freq_sizes(_launch.target(x.device))
        self.block_d = _blocks(_launch.target(x.device))[0]
        self.lists = (channel_lists(h1, s1, D, self.acc, self.block_d), channel_lists(h2, s2, D, self.acc,
                                                                                     self.block_d))
        self.L = freq_chunk(self.B, D, self.HW, elems)
        self.cs = torch.empty(2, self.B, self.L, D, dtype=self.acc, device=x.device)

    def __iter__(self):
        for l0 in range(0, self.HW, self.L):
            L = min(self.L, self.HW - l0)
            cs = self.cs[:, :, :L] if L == self.L else torch.empty(2, self.B, L, self.D, dtype=self.acc,
                                                                   device=self.cs.device)
            for t, M, (ch, sg, base, dst, _) in ((0, self.X, self.lists[0]), (1, self.Y, self.lists[1])):
                grid = (base.numel() - 1, triton.cdiv(L, self.block_l), self.B)
                _launch.launch(_sketch_kernel, grid, M, M.stride(0), M.stride(1), M.stride(2), ch, sg, base, dst,
                               cs[t], l0, L, L, self.D, BLOCK_L=self.block_l, BLOCK=self.block_d)
            yield l0, L, torch.fft.rfft(cs, dim=-1)  # (2, B, L, K)


def forward_freq(x, y, h1, s1, h2, s2, output_dim):
    B, C1, C2, HW = x.shape[0], x.shape[1], y.shape[1], x.shape[2] * x.shape[3]
    acc = acc_dtype(x.dtype)
    if B == 0 or C1 == 0 or C2 == 0 or HW == 0:
        return torch.zeros(B, output_dim, dtype=x.dtype, device=x.device)
    K = output_dim // 2 + 1
    spec = torch.zeros(B, K, 2, dtype=acc, device=x.device)
    block_k = _freq_sizes(_launch.target(x.device))[2]
    for _, L, F in _FreqChunks(x, y, h1, s1, h2, s2, output_dim):
        F = torch.view_as_real(F)
        _launch.launch(_spec_mac_kernel, (triton.cdiv(K, block_k), B), F[0], F[1], spec, L, K, BLOCK=block_k)
    return torch.fft.irfft(torch.view_as_complex(spec), n=output_dim, dim=-1).to(x.dtype)


def backward_freq(grad_out, x, y, h1, s1, h2, s2):
    B, C1, C2, HW = x.shape[0], x.shape[1], y.shape[1], x.shape[2] * x.shape[3]
    D = grad_out.shape[1]
    acc = acc_dtype(x.dtype)
    if B == 0 or C1 == 0 or C2 == 0 or HW == 0:
        return torch.zeros(x.shape, dtype=x.dtype, device=x.device), torch.zeros(y.shape, dtype=y.dtype,
                                                                                 device=y.device)
    Gf = torch.fft.rfft(grad_out.to(acc), dim=-1)[None, :, None]  # (1, B, 1, K)
    s1a, s2a = s1.to(acc), s2.to(acc)
    dX, dY = [], []
    for l0, L, F in _FreqChunks(x, y, h1, s1, h2, s2, D):
        # dCS1_l = irfft(Gf conj(F2_l)), dCS2_l = irfft(Gf conj(F1_l)): circular correlations with g. A physical
        # conj and no in-place slice writes: with a lazy conj view and dX[:, l0:l0 + L] = ..., the results under
        # AOT autograd differed from eager (opcheck's test_aot_dispatch failed).
        dcs = torch.fft.irfft(Gf * torch.conj_physical(F.flip(0)), n=D, dim=-1)  # (2, B, L, D)
        dX.append(dcs[0][:, :, h1] * s1a)  # gathers: each gradient element written once
        dY.append(dcs[1][:, :, h2] * s2a)
    return (torch.cat(dX, 1).transpose(1, 2).reshape(x.shape).to(x.dtype).contiguous(),
            torch.cat(dY, 1).transpose(1, 2).reshape(y.shape).to(y.dtype).contiguous())
