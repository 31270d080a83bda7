"""filtered_lrelu in Triton: one fused kernel for the forward (lrelu + clamp, writing the 2-bit mask) and for the
masked linear op (the gradient, reading the mask).

Persistent programs (a fixed grid, each looping over output tiles of TOH x TOW pixels of one plane) so the mid
(upsampled) samples of a tile live in a per-program scratch slot (L1/L2-resident; grid x ~30 KB), never as a whole
tensor. Per tile: (1) separable fu: filter the needed input rows horizontally (zero insertion and padding by masked
gathers) into scratch; (2) vertical up taps -> the tile's mid samples, then lrelu*gain+clamp (or the mask factors),
into scratch, with the mask bits packed 4 per byte by a reshape + sum; (3) separable fd: horizontal down taps into
scratch; (4) vertical down taps -> y. 2-D filters gather their taps directly instead of (1)/(3).
FLOPs per mid sample: polyphase, only the taps that land on input samples: 2*(fuw + fuh)/up separable or
2*fuh*fuw/up**2 2-D (each column/row loops over ceil(f/up) taps of its own phase);
down: 2*(fdw + fdh) / down per mid sample. Bytes: x read ~once (tile halos re-read, from cache), y written once,
mask Mh*Mw/4 bytes. Index arithmetic is kept non-negative (padding folded into positive offsets) because `//` and
`%` on negative integers differ between Triton on GPU and the interpreter. Plane bases and row / column offsets
are int64 (no 2^31-element limit). Tile sizes and warps per geometry and dtype come from _tiles(target(device)):
the mid tile bounds the registers, so long filters at down = 4 get smaller output tiles. No approximate math: the
kernel only adds and multiplies (no division, exp or sqrt on floats). Not yet run or timed on a GPU.
"""
import contextlib

import torch
import triton
import triton.language as tl

from vkernels._dtypes import acc_dtype
from vkernels.triton._dtypes import acc_type
from vkernels.triton._launch import launch as _launch_kernel, target


@triton.jit
def _flrelu_kernel(out_ptr, x_ptr, b_ptr, wa_ptr, wb_ptr, prm_ptr, mask_ptr, scratch_ptr,
                   C, H, W, OH, OW, MH, MW, n_tiles, tiles_x, tiles_y,
                   sxn, sxc, sxh, sxw, son, soc, soh, sow,
                   U, D, P0X, P0Y, OFFX, OFFY, mask_h, mask_w, RB, SX, SY,
                   AW: tl.constexpr, AH: tl.constexpr, AJW: tl.constexpr, AJH: tl.constexpr, BW: tl.constexpr, BH: tl.constexpr,
                   SEP_A: tl.constexpr, SEP_B: tl.constexpr, MASKED: tl.constexpr, WRITE: tl.constexpr,
                   HAS_B: tl.constexpr, TOH: tl.constexpr, TOW: tl.constexpr, IRB: tl.constexpr,
                   MTHB: tl.constexpr, MTWB: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    acc_ty = acc_type(x_ptr.dtype.element_ty)
    s1 = scratch_ptr + pid * (IRB * MTWB + MTHB * MTWB + MTHB * TOW)
    s2 = s1 + IRB * MTWB
    s3 = s2 + MTHB * MTWB
    gain = tl.load(prm_ptr + 0)
    slope = tl.load(prm_ptr + 1)
    clamp = tl.load(prm_ptr + 2)
    r_i = tl.arange(0, IRB)[:, None]
    c_m = tl.arange(0, MTWB)[None, :]
    r_m = tl.arange(0, MTHB)[:, None]
    r_o = tl.arange(0, TOH)[:, None]
    c_o = tl.arange(0, TOW)[None, :]
    for t in range(pid, n_tiles, nprog):
        tx = t % tiles_x
        t2 = t // tiles_x
        ty = t2 % tiles_y
        pl = t2 // tiles_y
        n = (pl // C).to(tl.int64)
        c = (pl % C).to(tl.int64)
        oy0 = ty * TOH
        ox0 = tx * TOW
        my0 = oy0 * D
        mx0 = ox0 * D
        xb = x_ptr + n * sxn + c * sxc
        bias = 0.0
        if HAS_B:
            bias = tl.load(b_ptr + c).to(acc_ty)
        mx = mx0 + c_m  # mid columns of the tile
        my = my0 + r_m  # mid rows
        # First up tap of each column's / row's phase: the taps j with (m + j - P0) % U == 0 (all others hit
        # inserted zeros); the AJW = ceil(AW / U) taps j0 + t*U cover them (j >= AW masked off).
        j0x = (U - (mx - P0X + OFFX) % U) % U
        i0y = (U - (my - P0Y + OFFY) % U) % U
        if SEP_A:
            # (1) input rows iy0 + r, filtered horizontally onto the tile's mid columns.
            iy0 = (my0 - P0Y + OFFY) // U - OFFY // U
            iy = iy0 + r_i
            vrow = (iy >= 0) & (iy < H)
            h = tl.zeros([IRB, MTWB], dtype=acc_ty)
            for t in range(AJW):
                j = j0x + t * U  # polyphase: only the taps of this column's phase
                u = mx + j - P0X + OFFX
                ix = u // U - OFFX // U
                v = vrow & (j < AW) & (ix >= 0) & (ix < W)
                xv = tl.load(xb + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw, mask=v, other=0.0).to(acc_ty)
                xv = tl.where(v, xv + bias, 0.0)
                h += tl.load(wa_ptr + j, mask=j < AW, other=0.0).to(acc_ty) * xv
            tl.store(s1 + r_i * MTWB + c_m, h)
            tl.debug_barrier()
            # (2) vertical up taps.
            mid = tl.zeros([MTHB, MTWB], dtype=acc_ty)
            for t in range(AJH):
                i = i0y + t * U
                u = my + i - P0Y + OFFY
                r = u // U - OFFY // U - iy0
                v = (i < AH) & (r >= 0) & (r < IRB)
                hv = tl.load(s1 + r * MTWB + c_m, mask=v & (c_m >= 0), other=0.0)
                mid += tl.load(wa_ptr + i, mask=i < AH, other=0.0).to(acc_ty) * hv
        else:
            mid = tl.zeros([MTHB, MTWB], dtype=acc_ty)
            for ti in range(AJH):
                i = i0y + ti * U
                uy = my + i - P0Y + OFFY
                iy = uy // U - OFFY // U
                vy = (i < AH) & (iy >= 0) & (iy < H)
                for tj in range(AJW):
                    j = j0x + tj * U
                    ux = mx + j - P0X + OFFX
                    ix = ux // U - OFFX // U
                    v = vy & (j < AW) & (ix >= 0) & (ix < W)
                    xv = tl.load(xb + iy.to(tl.int64) * sxh + ix.to(tl.int64) * sxw, mask=v, other=0.0).to(acc_ty)
                    xv = tl.where(v, xv + bias, 0.0)
                    mid += tl.load(wa_ptr + i * AW + j, mask=v, other=0.0).to(acc_ty) * xv
        if MASKED:
            # Row and column validity apart ([MTHB, 1] and [1, MTWB]): one full-tile value fewer live.
            row = my + SY
            col = mx + SX
            vr = (row >= 0) & (row < mask_h)
            vc = (col >= 0) & (col < mask_w)
            rowc = tl.where(vr, row, 0)
            colc = tl.where(vc, col, 0)
            mb = mask_ptr + pl.to(tl.int64) * mask_h * RB
            byte = tl.load(mb + rowc.to(tl.int64) * RB + colc // 4, mask=vr & vc, other=0).to(tl.int32)
            code = (byte >> ((colc % 4) * 2)) & 3
            fac = tl.where(code == 1, gain, tl.where(code == 2, gain * slope, 0.0))
            act = mid * fac
        else:
            pos = mid > 0
            act = tl.where(pos, mid, mid * slope) * gain
            code = tl.where(pos, 1, 2)
            clamped = (act > clamp) | (act < -clamp)
            act = tl.where(clamped, tl.where(act > 0, clamp, -clamp), act)
            if WRITE:
                code = tl.where(clamped, 0, code)
                code = tl.where((mx < MW) & (my < MH), code, 0)
                # Bytes this tile owns: its own rows/columns of mid samples (the last tile: to the end), so no
                # byte has two writers. mx0 is a multiple of 4 (TOW is), so bytes never straddle tiles.
                own_y = (my < my0 + TOH * D) | (ty == tiles_y - 1)
                shifts = (tl.arange(0, 4) * 2)[None, None, :]
                packed = tl.sum(tl.reshape(code, [MTHB, MTWB // 4, 4]) << shifts, axis=2)
                q = tl.arange(0, MTWB // 4)[None, :]
                qcol = mx0 // 4 + q
                own_x = (qcol < (mx0 + TOW * D) // 4) | (tx == tiles_x - 1)
                wm = own_y & (my < MH) & own_x & (qcol < RB)
                tl.store(mask_ptr + pl.to(tl.int64) * mask_h * RB + my.to(tl.int64) * RB + qcol, packed.to(tl.uint8),
                         mask=wm)
        tl.store(s2 + r_m * MTWB + c_m, act)
        tl.debug_barrier()
        oy = oy0 + r_o
        ox = ox0 + c_o
        if SEP_B:
            # (3) horizontal down taps for every mid row of the tile, (4) vertical down taps.
            c_t = tl.arange(0, TOW)[None, :]
            d = tl.zeros([MTHB, TOW], dtype=acc_ty)
            for l in range(BW):
                cc = c_t * D + l
                d += tl.load(wb_ptr + l).to(acc_ty) * tl.load(s2 + r_m * MTWB + cc, mask=cc < MTWB, other=0.0)
            tl.store(s3 + r_m * TOW + c_t, d)
            tl.debug_barrier()
            y = tl.zeros([TOH, TOW], dtype=acc_ty)
            for k in range(BH):
                rr = r_o * D + k
                y += tl.load(wb_ptr + k).to(acc_ty) * tl.load(s3 + rr * TOW + c_o, mask=(rr < MTHB) & (c_o >= 0),
                                                             other=0.0)
        else:
            y = tl.zeros([TOH, TOW], dtype=acc_ty)
            for k in range(BH):
                rr = r_o * D + k
                for l in range(BW):
                    cc = c_o * D + l
                    y += tl.load(wb_ptr + k * BW + l).to(acc_ty) * tl.load(s2 + rr * MTWB + cc,
                                                                           mask=(rr < MTHB) & (cc < MTWB), other=0.0)
        tl.store(out_ptr + n * son + c * soc + oy.to(tl.int64) * soh + ox.to(tl.int64) * sow,
                 y.to(out_ptr.dtype.element_ty), mask=(oy < OH) & (ox < OW))
        tl.debug_barrier()


def _taps(f, flip_filter, gain, dtype):
    # StyleGAN's reference rounding: f * gain ** (f.ndim / 2) in float32, flipped unless flip_filter.
    w = f.detach().to(torch.float32) * (gain ** (f.ndim / 2))
    return (w if flip_filter else w.flip(list(range(w.ndim)))).contiguous().reshape(-1).to(dtype)


def _p2(v):
    return 1 << max(0, int(v) - 1).bit_length()


# Mid samples per thread in one [MTHB, MTWB] tile value: the kernel keeps a few such values live (mid, the mask code,
# the activation, their addresses), so this bounds its registers; fp64 values take two registers each.
_PER_THREAD = {torch.float32: 16, torch.float64: 8}


def _tiles(tgt, up, down, ah, aw, bh, bw, acc, tight, masked):
    """(TOH, TOW, MTHB, MTWB, IRB, num_warps): output tile, mid tile (rows, columns: the mid samples an output tile
    reads, to powers of two), input rows of the separable up pass, warps. On a GPU: the largest output tile of 16, 8
    or 4 (TOW stays a multiple of 4: whole mask bytes) whose mid tile fits _PER_THREAD samples a thread with 4 or 8
    warps, so no geometry spills (up=2/down=4 with 24 taps, the backward of up=4/down=2, gets 8x8 output tiles);
    `tight` (a 2-D filter: its taps gather from full-tile addresses, more live tile values) halves the samples a
    thread, and 8 warps outside the masked pass (ptxas spilled 4-8 B at 4 warps there, and in the masked pass at 8).
    The interpreter (programs one after another) gets 8x8 tiles and 4 warps, as CI always had."""
    def mid(to):
        return _p2((to - 1) * down + bh), max(_p2((to - 1) * down + bw), 4)

    if tgt.interpret:
        to, warps = 8, 4
    else:
        for to in (16, 8, 4):
            mthb, mtwb = mid(to)
            per_thread = _PER_THREAD[acc] // (2 if tight else 1)
            warps = next((w for w in ((8,) if tight and not masked else (4, 8)) if mthb * mtwb <= per_thread * 32 * w),
                         None)
            if warps is not None:
                break
        else:
            warps = 8  # filters too long for any tile within the budget: the smallest tile, the most warps
    mthb, mtwb = mid(to)
    # Input rows the separable up pass reads: (MTHB + AH - 2) // up + 2 cover every phase; with up = 1 exactly
    # MTHB + AH - 1.
    irb = _p2((mthb + ah - 2) // up + 2 if up > 1 else mthb + ah - 1)
    return to, to, mthb, mtwb, irb, warps


def launch(x, fa, fb, b, mask, up, down, px0, py0, gain_a, gain_b, gain, slope, clamp, flip_filter, masked,
           write, sx, sy, mask_w, out_size, out_format, geometry):
    """Runs the kernel; arguments already checked. geometry = ((OW, MW), (OH, MH)). Returns out."""
    (ow, mw), (oh, mh) = geometry
    out = torch.empty(out_size, dtype=x.dtype, device=x.device, memory_format=out_format)
    if out.numel() == 0:
        return out
    acc = acc_dtype(x.dtype)
    wa, wb = _taps(fa.to(x.device), flip_filter, gain_a, acc), _taps(fb.to(x.device), flip_filter, gain_b, acc)
    prm = torch.tensor([gain, slope, float("inf") if clamp is None else clamp], dtype=acc, device=x.device)
    aw, ah, bw, bh = fa.shape[-1], fa.shape[0], fb.shape[-1], fb.shape[0]
    tgt = target(x.device)
    tight = fa.ndim == 2 or fb.ndim == 2
    toh, tow, mthb, mtwb, irb, warps = _tiles(tgt, up, down, ah, aw, bh, bw, acc, tight, masked)
    n, c = x.shape[0], x.shape[1]
    tiles_x, tiles_y = triton.cdiv(ow, tow), triton.cdiv(oh, toh)
    n_tiles = n * c * tiles_x * tiles_y
    grid = min(n_tiles, 4 if tgt.interpret else tgt.sms * 8)
    scratch = torch.empty(grid * (irb * mtwb + mthb * mtwb + mthb * tow), dtype=acc, device=x.device)
    offx, offy = up * (max(px0, 0) // up + 1), up * (max(py0, 0) // up + 1)
    b_arg = b if b is not None else wa
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _launch_kernel(
            _flrelu_kernel, (grid,), out, x, b_arg, wa, wb, prm, mask, scratch, c, x.shape[2], x.shape[3], oh, ow, mh,
            mw, n_tiles, tiles_x, tiles_y, *x.stride(), *out.stride(), up, down, px0, py0, offx, offy,
            mask.shape[2] if mask.ndim == 4 else 0, mask_w, (mask_w + 3) // 4, sx, sy,
            AW=aw, AH=ah, AJW=triton.cdiv(aw, up), AJH=triton.cdiv(ah, up), BW=bw, BH=bh, SEP_A=fa.ndim == 1,
            SEP_B=fb.ndim == 1, MASKED=masked, WRITE=write, HAS_B=b is not None, TOH=toh, TOW=tow, IRB=irb, MTHB=mthb,
            MTWB=mtwb, num_warps=warps)
    return out
