"""Backward of upsample_norm_act / upsample_norm_act_stats / spade_norm_act in Triton (first order; see
vkernels/ops/upsample_norm_act.py for how the ops' own gradients are formed).

One program per (n, c) plane, so the per-(n, c) reductions are in-program, in a fixed order (deterministic), in
fp64, and nothing of output size is ever written except dx's own plane:
- apply backward: pass 1 over the plane's upsampled pixels (recomputed from x: 1 or 4 loads) forms dz = dy * gain *
  act'(z) and sums dz, dz * (u - m) (for db, da); pass 2 forms dx per input pixel by gathering the output pixels
  whose stencil touches it (nearest: its s x s block; bilinear: a 3s x 3s window, weights from the same rational
  source coordinate the forward uses), recomputing their dz. Bytes: dy read ~2x (nearest) and x read through
  cache, dx written once; FLOPs: nearest ~10 + act' per output pixel per pass, bilinear ~9x more in pass 2 (it
  recomputes each neighbour's dz instead of scattering, which keeps it atomic-free and deterministic).
- stats backward: du = gmean / K + 2 gvar / K * (u - mean) (affine in u); nearest is closed form per input pixel
  (dx = s^2 du(x): reads x, writes dx), bilinear runs pass 2 above with that du.
- spade backward: one pass: reads dy, x, gamma, beta; writes dx, dgamma, dbeta; fp64 sums of dz (1 + gamma) and
  dz (1 + gamma) (x - m).
The activation derivative is bias_act's (_grad_x of vkernels/triton/bias_act.py), clamped elements get zero
gradient exactly as bias_act_grad's x-ref mode does. fp64 tensors take alpha/gain/clamp from an fp64 tensor.
Plane offsets are int64; the flat indices inside a plane are int32 unless one image of a tensor spans 2^31 elements
or more (a channels_last row stride times the height can): then INT64 carries each block's row and column in int32
from block to block and forms the addresses with int64 strides (an int64 division would compile to a ptxas subroutine
call that spills registers). Grids are 1-D (N C planes).
"""
import torch
import triton
import triton.language as tl

from vkernels.triton import _launch
from vkernels.triton.bias_act import ACT_IDS, _act, _grad_x
from vkernels.triton.upsample_norm_act import _device, _is_cl, _lin, _lin64, _scalar_args, _scalars, _up_value


@triton.jit
def _dz(dy, u, mv, av, bv, alpha, gain, clamp, ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, STATS: tl.constexpr):
    xc = u - mv
    if STATS:  # av = gmean / K, bv = 2 gvar / K
        r = av + bv * xc
    else:
        z = xc * av + bv
        r = dy * gain * _grad_x(z, alpha, ACT, 1)
        if HAS_CLAMP:
            r = tl.where(tl.abs(_act(z, alpha, ACT) * gain) < clamp, r, 0.0)
    return r, xc


@triton.jit
def _plane(C):
    # This program's (n, c) plane: flat index g = n * C + c; n, c in int64 for the plane offsets.
    g = tl.program_id(0)
    return g, (g // C).to(tl.int64), (g % C).to(tl.int64)


@triton.jit
def _w1(o, i, s, size, valid, F64: tl.constexpr):
    # Weight of input coordinate i in output coordinate o of 1-D linear interpolation (0 when o is outside).
    oc = tl.where(valid, o, 0)
    if F64:
        i0, i1, l1 = _lin64(oc, s, size)
    else:
        i0, i1, l1 = _lin(oc, s, size)
    w = tl.where(i0 == i, 1.0 - l1, 0.0) + tl.where(i1 == i, l1, 0.0)
    return oc, tl.where(valid, w, 0.0)


@triton.jit
def _pos(start, r0, c0, n, width, BLOCK: tl.constexpr, INT64: tl.constexpr):
    # Row, column and in-range mask of the flat plane indices start + [0, BLOCK) (n of them, width per row). INT64
    # (n may pass int32): from the carried row r0 / column c0 of start (_advance), all in int32, since an int64
    # division compiles to a ptxas subroutine call that spills; the products with (int64) strides carry the rest.
    if INT64:
        t = c0 + tl.arange(0, BLOCK)
        row = r0 + t // width
        col = t % width
        mask = tl.cast(row, tl.int64) * width + col < n
    else:
        i = start + tl.arange(0, BLOCK)
        row = i // width
        col = i % width
        mask = i < n
    return row, col, mask


@triton.jit
def _advance(r0, c0, width, BLOCK: tl.constexpr):
    c = c0 + BLOCK
    return r0 + c // width, c % width


@triton.jit
def _adjoint_kernel(dx_ptr, db_ptr, da_ptr, dy_ptr, x_ptr, m_ptr, a_ptr, b_ptr, C, H, W, sn, sc, sh, sw, dsn, dsc,
                    dsh, dsw, osn, osc, osh, osw, s, post_mult, alpha, gain, clamp, scalars_ptr,
                    SCALARS_IN_TENSOR: tl.constexpr, BILINEAR: tl.constexpr, ACT: tl.constexpr,
                    HAS_CLAMP: tl.constexpr, F64: tl.constexpr, NEED_DX: tl.constexpr, NEED_RED: tl.constexpr,
                    STATS: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    g, n, c = _plane(C)
    ct = tl.float64 if F64 else tl.float32
    alpha, gain, clamp = _scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    mv = tl.load(m_ptr + g)
    av = tl.load(a_ptr + g)
    bv = tl.load(b_ptr + g)
    xb = n * sn + c * sc
    db_ = n * dsn + c * dsc
    OH = H * s
    OW = W * s
    if INT64:
        OHW = tl.cast(OH, tl.int64) * OW
        HW = tl.cast(H, tl.int64) * W
        sh = tl.cast(sh, tl.int64)
        sw = tl.cast(sw, tl.int64)
        dsh = tl.cast(dsh, tl.int64)
        dsw = tl.cast(dsw, tl.int64)
        osh = tl.cast(osh, tl.int64)
        osw = tl.cast(osw, tl.int64)
    else:
        OHW = OH * OW
        HW = H * W
    if NEED_RED:
        s1 = tl.zeros([BLOCK], dtype=tl.float64)
        s2 = tl.zeros([BLOCK], dtype=tl.float64)
        r0 = tl.full([], 0, tl.int32)
        c0 = tl.full([], 0, tl.int32)
        for start in range(0, OHW, BLOCK):
            oh, ow, mask = _pos(start, r0, c0, OHW, OW, BLOCK, INT64)
            if INT64:
                r0, c0 = _advance(r0, c0, OW, BLOCK)
            u = _up_value(x_ptr, xb, oh, ow, H, W, sh, sw, s, mask, BILINEAR, F64)
            dy = tl.load(dy_ptr + db_ + oh * dsh + ow * dsw, mask=mask, other=0.0).to(ct)
            d, xc = _dz(dy, u, mv, av, bv, alpha, gain, clamp, ACT, HAS_CLAMP, STATS)
            d = tl.where(mask, d, 0.0)
            s1 += d.to(tl.float64)
            s2 += d.to(tl.float64) * xc.to(tl.float64)
        tl.store(db_ptr + g, tl.sum(s1, axis=0).to(db_ptr.dtype.element_ty))
        tl.store(da_ptr + g, tl.sum(s2, axis=0).to(da_ptr.dtype.element_ty))
    if NEED_DX:
        post = post_mult if STATS else av
        ob = n * osn + c * osc
        r0 = tl.full([], 0, tl.int32)
        c0 = tl.full([], 0, tl.int32)
        for start in range(0, HW, BLOCK):
            h, w, mask = _pos(start, r0, c0, HW, W, BLOCK, INT64)
            if INT64:
                r0, c0 = _advance(r0, c0, W, BLOCK)
            acc = tl.zeros([BLOCK], dtype=ct)
            if BILINEAR:
                for dh in range(0, 3 * s):
                    oh = h * s - s + dh
                    ohc, wh = _w1(oh, h, s, H, (oh >= 0) & (oh < OH), F64)
                    for dw in range(0, 3 * s):
                        ow = w * s - s + dw
                        owc, ww = _w1(ow, w, s, W, (ow >= 0) & (ow < OW), F64)
                        wt = wh * ww
                        mk = mask & (wt != 0.0)
                        u = _up_value(x_ptr, xb, ohc, owc, H, W, sh, sw, s, mk, BILINEAR, F64)
                        if STATS:
                            dy = u
                        else:
                            dy = tl.load(dy_ptr + db_ + ohc * dsh + owc * dsw, mask=mk, other=0.0).to(ct)
                        d, xc = _dz(dy, u, mv, av, bv, alpha, gain, clamp, ACT, HAS_CLAMP, STATS)
                        acc += tl.where(mk, wt * d, 0.0)
            else:
                u = tl.load(x_ptr + xb + h * sh + w * sw, mask=mask, other=0.0).to(ct)
                for dh in range(0, s):
                    for dw in range(0, s):
                        if STATS:
                            dy = u
                        else:
                            dy = tl.load(dy_ptr + db_ + (h * s + dh) * dsh + (w * s + dw) * dsw, mask=mask,
                                         other=0.0).to(ct)
                        d, xc = _dz(dy, u, mv, av, bv, alpha, gain, clamp, ACT, HAS_CLAMP, STATS)
                        acc += tl.where(mask, d, 0.0)
            tl.store(dx_ptr + ob + h * osh + w * osw, (acc * post).to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _spade_bwd_kernel(dx_ptr, dg_ptr, dt_ptr, s1_ptr, s2_ptr, dy_ptr, x_ptr, g_ptr, t_ptr, m_ptr, r_ptr, C, W, HW,
                      sy0, sy1, sy2, sy3, sx0, sx1, sx2, sx3, sg0, sg1, sg2, sg3, st0, st1, st2, st3,
                      so0, so1, so2, so3, alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR: tl.constexpr,
                      ACT: tl.constexpr, HAS_CLAMP: tl.constexpr, F64: tl.constexpr, NEED_DX: tl.constexpr,
                      NEED_DG: tl.constexpr, NEED_DT: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    g, n, c = _plane(C)
    ct = tl.float64 if F64 else tl.float32
    alpha, gain, clamp = _scalar_args(alpha, gain, clamp, scalars_ptr, SCALARS_IN_TENSOR)
    mv = tl.load(m_ptr + g)
    rv = tl.load(r_ptr + g)
    a1 = tl.zeros([BLOCK], dtype=tl.float64)
    a2 = tl.zeros([BLOCK], dtype=tl.float64)
    if INT64:
        sy2 = tl.cast(sy2, tl.int64)
        sy3 = tl.cast(sy3, tl.int64)
        sx2 = tl.cast(sx2, tl.int64)
        sx3 = tl.cast(sx3, tl.int64)
        sg2 = tl.cast(sg2, tl.int64)
        sg3 = tl.cast(sg3, tl.int64)
        st2 = tl.cast(st2, tl.int64)
        st3 = tl.cast(st3, tl.int64)
        so2 = tl.cast(so2, tl.int64)
        so3 = tl.cast(so3, tl.int64)
    r0 = tl.full([], 0, tl.int32)
    c0 = tl.full([], 0, tl.int32)
    for start in range(0, HW, BLOCK):
        h, w, mask = _pos(start, r0, c0, HW, W, BLOCK, INT64)
        if INT64:
            r0, c0 = _advance(r0, c0, W, BLOCK)
        dy = tl.load(dy_ptr + n * sy0 + c * sy1 + h * sy2 + w * sy3, mask=mask, other=0.0).to(ct)
        xv = tl.load(x_ptr + n * sx0 + c * sx1 + h * sx2 + w * sx3, mask=mask, other=0.0).to(ct)
        gv = tl.load(g_ptr + n * sg0 + c * sg1 + h * sg2 + w * sg3, mask=mask, other=0.0).to(ct)
        tv = tl.load(t_ptr + n * st0 + c * st1 + h * st2 + w * st3, mask=mask, other=0.0).to(ct)
        xc = xv - mv
        xn = xc * rv
        g1 = 1.0 + gv
        z = xn * g1 + tv
        dz = dy * gain * _grad_x(z, alpha, ACT, 1)
        if HAS_CLAMP:
            dz = tl.where(tl.abs(_act(z, alpha, ACT) * gain) < clamp, dz, 0.0)
        dz = tl.where(mask, dz, 0.0)
        dxn = dz * g1
        o = n * so0 + c * so1 + h * so2 + w * so3
        if NEED_DX:
            tl.store(dx_ptr + o, (dxn * rv).to(dx_ptr.dtype.element_ty), mask=mask)
        if NEED_DG:
            tl.store(dg_ptr + o, (dz * xn).to(dg_ptr.dtype.element_ty), mask=mask)
        if NEED_DT:
            tl.store(dt_ptr + o, dz.to(dt_ptr.dtype.element_ty), mask=mask)
        a1 += dxn.to(tl.float64)
        a2 += dxn.to(tl.float64) * xc.to(tl.float64)
    tl.store(s1_ptr + g, tl.sum(a1, axis=0).to(s1_ptr.dtype.element_ty))
    tl.store(s2_ptr + g, tl.sum(a2, axis=0).to(s2_ptr.dtype.element_ty))


def _empty_fmt(x, shape):
    return torch.empty(shape, dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last if _is_cl(x) else torch.contiguous_format)


def _block(t, n, fp64_bilinear=False):
    """Elements per step of the per-plane loops over n elements on target t (bigger in the interpreter). The fp64
    bilinear adjoint (9 s^2 neighbours' dz recomputed per input pixel) spilled 312 B at 1024 on sm_80: 512 there."""
    gpu = 512 if fp64_bilinear else 1024
    return min(4096 if t.interpret else gpu, max(16, triton.next_power_of_2(max(n, 1))))


def _image_int64(*tensors):
    """True when a flat index inside one image of any of `tensors` ((N, C, H, W), any strides) may pass int32."""
    return any(sum((d - 1) * abs(st) for d, st in zip(t.shape[1:], t.stride()[1:])) + 1 + 4096 >= 2**31
               for t in tensors if t is not None and t.numel() > 0)


def _adjoint(dx, db, da, dy, x, m, a, b, scale, bil, act, alpha, gain, clamp, post_mult, need_dx, need_red, stats):
    N, C, H, W = x.shape
    vals, st, exact = _scalars(x, alpha, gain, clamp)
    dxs = dx.stride() if need_dx else (0, 0, 0, 0)
    dys = dy.stride() if dy is not None else (0, 0, 0, 0)
    t = _launch.target(x.device)
    with _device(x):
        _launch.launch(_adjoint_kernel, (N * C,),
            dx if need_dx else x, db, da, dy if dy is not None else x, x, m, a, b, C, H, W, *x.stride(), *dys, *dxs,
            scale, float(post_mult), *vals, st, SCALARS_IN_TENSOR=exact, BILINEAR=bil, ACT=ACT_IDS[act],
            HAS_CLAMP=clamp is not None, F64=x.dtype == torch.float64, NEED_DX=need_dx, NEED_RED=need_red,
            STATS=stats, BLOCK=_block(t, H * W * scale * scale if need_red else H * W, bil and exact),
            INT64=_image_int64(x, dy, dx if need_dx else None) or H * W * scale * scale + 4096 >= 2**31, num_warps=4)


def apply_backward(dy, x, m, a, b, scale, mode, act, alpha, gain, clamp, mask):
    N, C, H, W = x.shape
    ct = m.dtype
    dx = _empty_fmt(x, x.shape) if mask[0] else x.new_empty(0)
    red = mask[1] or mask[2] or mask[3]
    db = torch.zeros((N, C), dtype=ct, device=x.device)
    da = torch.zeros((N, C), dtype=ct, device=x.device)
    if x.numel() > 0 and (mask[0] or red):
        _adjoint(dx, db, da, dy, x, m.contiguous(), a.contiguous(), b.contiguous(), scale,
                mode == "bilinear" and scale > 1, act, alpha, gain, clamp, 1.0, mask[0], red, False)
    e = m.new_empty(0)
    return dx, -(db * a) if mask[1] else e, da if mask[2] else e, db if mask[3] else e


def stats_backward(gmean, gvar, x, mean, scale, mode, per_sample):
    N, C, H, W = x.shape
    dx = _empty_fmt(x, x.shape)
    if x.numel() == 0:
        return dx
    K = (1 if per_sample else N) * H * W * scale * scale
    c1 = (gmean / K).expand(N, C).contiguous()
    c2 = (gvar * (2.0 / K)).expand(N, C).contiguous()
    mc = mean.expand(N, C).contiguous()
    bil = mode == "bilinear" and scale > 1
    # Nearest: the adjoint of repeating each pixel s^2 times is s^2 times the pixel's own du (run as scale 1).
    _adjoint(dx, c1, c1, None, x, mc, c1, c2, scale if bil else 1, bil, "linear", 0.0, 1.0, None,
            1.0 if bil else scale * scale, True, False, True)
    return dx


def spade_backward(dy, x, m, r, gamma, beta, act, alpha, gain, clamp, mask):
    N, C, H, W = x.shape
    ct = m.dtype
    full = [_empty_fmt(x, x.shape) if k else x.new_empty(0) for k in (mask[0], mask[3], mask[4])]
    s1 = torch.zeros((N, C), dtype=ct, device=x.device)
    s2 = torch.zeros((N, C), dtype=ct, device=x.device)
    if x.numel() > 0:
        ref = next((t for t in full if t.numel() > 0), None)
        so = ref.stride() if ref is not None else (0, 0, 0, 0)
        vals, st, exact = _scalars(x, alpha, gain, clamp)
        with _device(x):
            _launch.launch(_spade_bwd_kernel, (N * C,),
                *(t if t.numel() > 0 else x for t in full), s1, s2, dy, x, gamma, beta, m.contiguous(),
                r.contiguous(), C, W, H * W, *dy.stride(), *x.stride(), *gamma.stride(), *beta.stride(), *so, *vals,
                st, SCALARS_IN_TENSOR=exact, ACT=ACT_IDS[act], HAS_CLAMP=clamp is not None,
                F64=x.dtype == torch.float64, NEED_DX=mask[0], NEED_DG=mask[3], NEED_DT=mask[4],
                BLOCK=_block(_launch.target(x.device), H * W), INT64=_image_int64(dy, x, gamma, beta, ref),
                num_warps=4)
    e = m.new_empty(0)
    return full[0], -(s1 * r) if mask[1] else e, s2 if mask[2] else e, full[1], full[2]
