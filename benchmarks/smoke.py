#!/usr/bin/env python3
"""Smoke run: launch every compiled kernel of vkernels at small sizes and check each result against the reference.

Made to run under compute-sanitizer (benchmarks/gpu_check.sh runs it under memcheck, racecheck and initcheck), so it
is small and fast, calls the raw ops (torch.ops.vkernels.*) directly, and synchronizes after every launch so that an
error is reported against the variant that caused it. The checks are loose sanity bounds (float64 reference, dtype
tolerances); tests/ holds the strict numerics.

    python benchmarks/smoke.py                        # CUDA tensors: impls cuda + triton, scope "default"
    python benchmarks/smoke.py --scope quick          # fewer variants (for the slower sanitizer tools)
    python benchmarks/smoke.py --device cpu           # no GPU: C++ CPU kernels + Triton through its interpreter
    python benchmarks/smoke.py --list                 # print the variants without running them
    python benchmarks/smoke.py --large --jobs 8       # + >2**31-element cases; 8 parallel shards (no sanitizer)

Scopes: "full" runs every variant for every impl; "default" runs every variant of the C++/CUDA kernels and caps
Triton, where every variant is a separate JIT compile (about 0.2-1 s each; ~820 distinct ones in "full"): in float32
all acts x all modes on two layouts (strided bias; odd size + clamp) and lrelu/tanh/swish on every layout; in
float16/bfloat16/float64 lrelu/tanh/swish x all modes on four layouts (strided bias, odd, misaligned x, misaligned
grad). "quick" (for the slower sanitizer tools) caps both further. --jobs N runs N shards in parallel processes:
under no sanitizer that compiles the Triton variants N at a time and fills Triton's on-disk cache for later runs.

Exit status: 0 all passed; 1 a wrong result, an exception, or a kernel that was never launched; 3 stopped early by
--max-seconds (coverage incomplete). Unwritten outputs: by default the run turns on torch's deterministic mode
(warn_only), whose torch.utils.deterministic.fill_uninitialized_memory makes every empty()/empty_like() -- the ops'
outputs included -- come back filled with NaN, so an element a kernel never writes fails the comparison. Pass
--no-fill under compute-sanitizer's initcheck, which should see those reads of uninitialized memory itself.

Adding an op: write `smoke_<op>(ctx)` below, a generator of Case objects (one kernel launch each), and decorate it
with @smoke. An op registered in vkernels (vkernels._backend.OPS) without a smoke function fails the run, and so does
any vkernels::* op with a kernel for the device (a "*_triton" op counts as the triton impl) that no case launched.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent

# Loose sanity tolerances: |out - expect| <= TOL * (scale + |expect|), scale >= 1 set per case.
TOL_NAMES = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-5, "float64": 1e-7}


@dataclass
class Case:
    """One kernel launch: torch.ops.vkernels.<op>(*args) must return `expect` (float64, CPU) within tolerance."""
    name: str
    op: str
    args: object  # the op's arguments: a tuple, or a function returning one (built only if the case runs)
    expect: object  # a float64 CPU tensor, or a tuple of them for ops with several outputs
    tol: float
    scale: float = 1.0
    dont_care: object = None  # bool tensor (or tuple): elements excluded from the comparison
    like: object = None  # tensor (or tuple): each output must have its shape, dtype, device and strides
    select: object = None  # function of the output giving the part `expect` describes (default: all of it)


@dataclass
class Ctx:
    """What a smoke function may look at: where to run, which impls, how much."""
    torch: object
    device: str
    impls: tuple  # e.g. ("cuda", "triton") or ("cpu", "triton")
    scope: str  # quick | default | full
    dtypes: tuple  # torch dtypes to cover
    large: bool = False  # also the >2**31-element cases (64-bit indexing; several GB; never under a sanitizer)

    def gen(self, *key) -> object:
        """A CPU generator seeded from the case key: every variant draws fresh but reproducible inputs."""
        g = self.torch.Generator()
        g.manual_seed(zlib.crc32("/".join(map(str, key)).encode()))
        return g

    def variants(self, key: str, cases: dict, quick_triton=None, impls=None) -> Iterator[tuple]:
        """(impl, dtype, dtype name, case name, case params, generator) for every dtype x impl x case this run
        covers, in that loop order; the generator is gen(key, impl, dtype name, case name). quick_triton(case name,
        dtype name) says which cases Triton keeps under --scope quick (every Triton variant is a separate JIT
        compile); impls, where given, are the impls the op has (the others are skipped)."""
        for dtype in self.dtypes:
            dn = str(dtype).replace("torch.", "")
            for impl in self.impls:
                if impls is not None and impl not in impls:
                    continue
                for name, params in cases.items():
                    if (self.scope == "quick" and impl == "triton" and quick_triton is not None
                            and not quick_triton(name, dn)):
                        continue
                    yield impl, dtype, dn, name, params, self.gen(key, impl, dn, name)


SMOKES: dict[str, Callable[[Ctx], Iterator[Case]]] = {}


def smoke(fn):
    """Register smoke_<op> for the op <op>."""
    assert fn.__name__.startswith("smoke_"), fn.__name__
    SMOKES[fn.__name__[len("smoke_"):]] = fn
    return fn


def _ops(op: str) -> dict:
    """impl -> the raw op that runs it: the C++ op <op> for cpu and cuda, its Triton variant <op>_triton."""
    return {"cuda": op, "cpu": op, "triton": f"{op}_triton"}


# --------------------------------------------------------------------------------------------------------------------
# bias_act
# --------------------------------------------------------------------------------------------------------------------
# name: (shape, dim, has_bias, placement, clamp)
BIAS_ACT_LAYOUTS = {
    "bias_cs": ((2, 5, 6, 7), 1, True, "contiguous", None),  # bias along a strided dim (channel stride 42)
    "channels_last": ((2, 6, 5, 3), 1, True, "channels_last", 1.5),  # channels innermost in memory (stride 1)
    "no_bias": ((3, 64), 1, False, "contiguous", None),  # 192 elements: whole vectors only
    "odd": ((3, 7, 5), -1, True, "contiguous", 1.5),  # 105 elements: a tail for every vector width; negative dim
    "misaligned": ((4, 9, 7), 1, True, "offset1", None),  # x / ref starts one element past an aligned address
    "misaligned_g": ((4, 9, 7), 1, True, "offset1_g", 1.5),  # grads only: the incoming gradient is misaligned
    "multiblock": ((3, 37, 129), 1, True, "contiguous", None),  # 14319 elements: several blocks/programs, a tail
}
# mode name: (ref_is_y, order); None = forward
BIAS_ACT_MODES = {"fwd": None, "grad1_y": (True, 1), "grad1_x": (False, 1), "grad2_y": (True, 2),
                  "grad2_x": (False, 2)}
_CAPPED_ACTS = ("lrelu", "tanh", "swish")  # alpha; exp-based with a 2nd derivative and a y-ref path; x-ref only
_CAPPED_LAYOUTS = ("bias_cs", "odd", "misaligned", "misaligned_g")


def _bias_act_selected(scope, impl, dtype_name, act, layout):
    if scope == "full":
        return True
    triton = impl == "triton"
    capped = act in _CAPPED_ACTS
    if scope == "default":
        if not triton:
            return True
        if dtype_name == "float32":  # every act's math compiled once without and once with bias+clamp+tail
            return layout in ("bias_cs", "odd") or capped
        return capped and layout in _CAPPED_LAYOUTS
    # quick
    if not triton:
        return dtype_name == "float32" or capped
    if dtype_name == "float32":
        return capped and layout in ("odd", "misaligned")
    return act == "tanh" and layout in ("odd", "misaligned")


def _place(t, placement, device, torch):
    """t (CPU, contiguous) on `device` in the given memory placement."""
    if placement == "channels_last":
        return t.contiguous(memory_format=torch.channels_last).to(device)  # .to keeps dense strides
    if placement == "offset1":
        buf = torch.zeros(t.numel() + 1, dtype=t.dtype)
        buf[1:] = t.reshape(-1)
        return buf.to(device)[1:].view(t.shape)  # data pointer one element past the allocation's start
    return t.to(device)


@smoke
def smoke_bias_act(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.bias_act import ACTIVATIONS
    from vkernels.reference.bias_act import bias_act as reference

    ops = {"cuda": ("bias_act", "bias_act_grad"), "cpu": ("bias_act", "bias_act_grad"),
           "triton": ("bias_act_triton", "bias_act_grad_triton")}
    # float32 first and the impls interleaved: a run cut short (--max-seconds) has still covered both impls.
    order = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
    for dtype in [d for d in order if d in ctx.dtypes] + [d for d in ctx.dtypes if d not in order]:
        dn = str(dtype).replace("torch.", "")
        tol = TOL_NAMES[dn]
        for impl in ctx.impls:
            fwd_op, grad_op = ops[impl]
            for layout, (shape, dim, has_bias, placement, clamp) in BIAS_ACT_LAYOUTS.items():
                for act, (_, def_alpha, def_gain) in ACTIVATIONS.items():
                    if not _bias_act_selected(ctx.scope, impl, dn, act, layout):
                        continue
                    alpha, gain = float(def_alpha), float(def_gain)
                    g = ctx.gen("bias_act", impl, dn, layout, act)
                    # Inputs in the tested dtype; their exact float64 values feed the reference.
                    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
                    C = shape[dim]
                    b = (torch.randn((C,), generator=g, dtype=torch.float64)).to(dtype) if has_bias else None
                    bshape = [C if i == dim % len(shape) else 1 for i in range(len(shape))]
                    b64 = b.double().reshape(bshape) if has_bias else 0.0
                    # Keep z = x + b away from the kinks at 0 (relu/lrelu/elu/selu): a rounding there must not
                    # flip the side a kernel takes, which would be a false failure.
                    z = x.double() + b64
                    x = torch.where(z.abs() < 0.05, (x.double() + 0.25).to(dtype), x)
                    x64 = x.double()
                    bb = None if b is None else b.double()
                    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
                    dy64 = dy.double()
                    # Reference forward, and f'(z), f''(z) by autograd through the reference (gain 1, no clamp).
                    y64 = reference(x64, bb, dim, act, alpha, gain, clamp)
                    xr = x64.clone().requires_grad_()
                    f = reference(xr, bb, dim, act, alpha, 1.0, None)
                    (f1,) = torch.autograd.grad(f.sum(), xr, create_graph=True)
                    f2 = None
                    if f1.requires_grad:
                        (f2,) = torch.autograd.grad(f1.sum(), xr, allow_unused=True)
                    f1 = f1.detach()
                    f2 = torch.zeros_like(f1) if f2 is None else f2.detach()
                    pre = f.detach() * gain
                    yq = y64.to(dtype)  # the y a y-ref backward reads (forward output in the tested dtype)
                    yq64 = yq.double()
                    one = torch.ones_like(x64, dtype=torch.bool)
                    mask_y = yq64.abs() < clamp if clamp is not None else one
                    mask_x = pre.abs() < clamp if clamp is not None else one
                    band = (pre.abs() - clamp).abs() < 1e-3 * clamp if clamp is not None else ~one
                    ratio = torch.where(f1 != 0, f2 / torch.where(f1 != 0, f1, 1.0), 0.0)  # d f'(ya) / d ya
                    expects = {
                        "fwd": (y64, None),
                        "grad1_y": (torch.where(mask_y, dy64 * gain * f1, 0.0), None),
                        "grad2_y": (torch.where(mask_y, dy64 * ratio, 0.0), None),
                        "grad1_x": (torch.where(mask_x, dy64 * gain * f1, 0.0), band),
                        "grad2_x": (torch.where(mask_x, dy64 * gain * f2, 0.0), band),
                    }
                    x_place = {"offset1": "offset1", "offset1_g": "contiguous"}.get(placement, placement)
                    g_place = {"offset1": "contiguous", "offset1_g": "offset1"}.get(placement, placement)
                    xd = _place(x, x_place, ctx.device, torch)
                    yd = _place(yq, x_place, ctx.device, torch)
                    gd = _place(dy, g_place, ctx.device, torch)
                    bd = None if b is None else b.to(ctx.device)
                    scale = max(1.0, float(dy64.abs().max()) * abs(gain))
                    for mode, spec in BIAS_ACT_MODES.items():
                        expect, dont_care = expects[mode]
                        name = f"bias_act/{impl}/{dn}/{layout}/{act}/{mode}"
                        if spec is None:
                            if placement == "offset1_g":
                                continue  # same forward launch as bias_cs
                            yield Case(name, fwd_op, (xd, bd, dim, act, alpha, gain, clamp), expect, tol,
                                       max(1.0, float(expect.abs().max())), None, xd)
                            continue
                        ref_is_y, order = spec
                        if ref_is_y and act == "swish":
                            continue  # swish's derivative is not a function of its output (the op refuses it)
                        ref = yd if ref_is_y else xd
                        yield Case(name, grad_op, (gd, ref, bd, dim, act, alpha, gain, clamp, ref_is_y, order),
                                   expect, tol, scale, dont_care, ref)
    if ctx.large and ctx.device == "cuda":
        yield from _bias_act_large(ctx, ops, reference)


def _bias_act_large(ctx, ops, reference):
    """> 2**31 elements (bfloat16, 4.3 GB per tensor): the 64-bit index paths (CUDA int64 indexing, Triton INT64).
    Only the first and last 3 rows are checked (the rest is NaN-filled or garbage); tensors are made at run time."""
    torch = ctx.torch
    C, dt, dn = 37, torch.bfloat16, "bfloat16"
    rows = 2**31 // C + 2
    alpha, gain = 0.2, 2**0.5
    for impl in ctx.impls:
        fwd_op, grad_op = ops[impl]
        g = ctx.gen("bias_act", impl, dn, "large")
        ends = (torch.randn((6, C), generator=g, dtype=torch.float64) * 2).to(dt)  # rows 0-2 and the last 3
        ends = torch.where((ends.double()).abs() < 0.05, torch.full_like(ends, 0.5), ends)  # away from the kink
        b = torch.zeros((C,), dtype=dt)  # zero bias: z = x keeps the rows above away from the kink too
        dy = torch.randn((6, C), generator=g, dtype=torch.float64).to(dt)
        x64 = ends.double().requires_grad_()
        y64 = reference(x64, b.double(), 1, "lrelu", alpha, gain, None)
        (d64,) = torch.autograd.grad(y64, x64, dy.double())
        y64 = y64.detach()

        def make(with_g, ends=ends, dy=dy, b=b):
            x = torch.empty((rows, C), dtype=dt, device=ctx.device)
            x[:3], x[-3:] = ends[:3].to(ctx.device), ends[3:].to(ctx.device)
            bd = b.to(ctx.device)
            if not with_g:
                return (x, bd, 1, "lrelu", alpha, gain, None)
            gd = torch.empty_like(x)
            gd[:3], gd[-3:] = dy[:3].to(ctx.device), dy[3:].to(ctx.device)
            return (gd, x, bd, 1, "lrelu", alpha, gain, None, False, 1)

        def ends_of(out):
            assert out.numel() > 2**31 and out.is_contiguous(), (out.shape, out.stride())
            return torch.cat([out[:3], out[-3:]])

        tol = TOL_NAMES[dn]
        yield Case(f"bias_act/{impl}/{dn}/large/lrelu/fwd", fwd_op, lambda m=make: m(False), y64, tol,
                   max(1.0, float(y64.abs().max())), select=ends_of)
        yield Case(f"bias_act/{impl}/{dn}/large/lrelu/grad1_x", grad_op, lambda m=make: m(True), d64, tol,
                   max(1.0, float(dy.double().abs().max()) * gain), select=ends_of)


# --------------------------------------------------------------------------------------------------------------------
# upfirdn2d
# --------------------------------------------------------------------------------------------------------------------
# name: (x shape (N, C, H, W), filter (1-D taps or 2-D shape), up (x, y), down (x, y), padding (x0, x1, y0, y1), layout)
UPFIRDN2D_CASES = {
    "up2_sep": ((2, 3, 9, 7), [1.0, 3.0, 3.0, 1.0], (2, 2), (1, 1), (2, 1, 2, 1), "contiguous"),
    "down2_sep": ((2, 3, 10, 13), [1.0, 3.0, 3.0, 1.0], (1, 1), (2, 2), (1, 1, 1, 1), "contiguous"),
    "full2d_crop": ((1, 5, 11, 6), (3, 4), (1, 3), (2, 1), (-1, 2, 3, -2), "contiguous"),
    "up2_channels_last": ((2, 6, 5, 4), [1.0, 2.0, 1.0], (2, 2), (1, 1), (1, 1, 1, 1), "channels_last"),
    "misaligned": ((1, 4, 6, 6), (2, 2), (2, 1), (1, 2), (0, 1, 1, 0), "offset1"),
}


@smoke
def smoke_upfirdn2d(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.upfirdn2d import upfirdn2d as reference

    ops = _ops("upfirdn2d")
    for impl, dtype, dn, name, (shape, filt, up, down, pad, placement), g in ctx.variants(
            "upfirdn2d", UPFIRDN2D_CASES, lambda name, dn: name in ("up2_sep", "full2d_crop")):
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        f = (torch.tensor(filt, dtype=torch.float32) if isinstance(filt, list)
             else torch.rand(filt, generator=g, dtype=torch.float64).float())
        expect = reference(x.double(), f, up, down, pad, False, 1.0)
        xd = _place(x, placement, ctx.device, torch)
        args = (xd, f.to(ctx.device), *up, *down, *pad, False, 1.0)
        scale = max(1.0, float(expect.abs().max()))
        yield Case(f"upfirdn2d/{impl}/{dn}/{name}", ops[impl], args, expect, TOL_NAMES[dn], scale)

# --------------------------------------------------------------------------------------------------------------------
# infonce_bank_loss
# --------------------------------------------------------------------------------------------------------------------
# name: (N, K, d, label_smoothing, with exclude)
INFONCE_CASES = {
    "small": (5, 37, 16, 0.0, False),
    "tiles": (70, 300, 40, 0.1, True),  # several query tiles and bank splits, odd sizes everywhere
}


@smoke
def smoke_infonce_bank_loss(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.infonce_bank_loss import infonce_bank_loss as reference

    ops = _ops("infonce_bank_loss")
    for impl, dtype, dn, name, (N, K, d, ls, with_ex), g in ctx.variants("infonce", INFONCE_CASES, _infonce_quick):
        q, k, bank, ex, T, dev = _infonce_inputs(ctx, g, dtype, N, K, d, with_ex)
        q64, k64, b64 = (t.double().requires_grad_() for t in (q, k, bank))
        loss, lse, rank = reference(q64, k64, b64, T, ls, ex)
        gl = torch.randn(N, generator=g, dtype=torch.float64)
        dq, dk, db = torch.autograd.grad((loss * gl).sum(), [q64, k64, b64])
        args = (*dev[:4], ls, dev[4])
        tol = TOL_NAMES[dn] * 10  # a loss summed over K+1 candidates, not one rounded element
        yield Case(f"infonce_bank_loss/{impl}/{dn}/{name}/fwd", ops[impl], args, loss.detach(), tol,
                   max(1.0, float(loss.abs().max())), select=lambda out: out[0])
        bwd = ops[impl].replace("infonce_bank_loss", "infonce_bank_loss_backward")

        def bwd_args(fwd=getattr(torch.ops.vkernels, ops[impl]), args=args, gl=gl):
            out_loss, out_lse, _ = fwd(*args)  # the backward reads the forward's own lse and loss
            return (gl.to(device=ctx.device, dtype=out_loss.dtype), torch.zeros_like(out_lse), *args,
                    out_lse, out_loss, True)

        gscale = max(1.0, float(dq.abs().max()), float(db.abs().max()))
        yield Case(f"infonce_bank_loss/{impl}/{dn}/{name}/bwd", bwd, bwd_args, (dq, dk, db), tol, gscale,
                   select=lambda out: tuple(out[:3]))


def _infonce_quick(name, dn):
    return name == "small" and dn == "float32"


def _infonce_inputs(ctx, g, dtype, N, K, d, with_ex):
    """Unit-norm q, k (N, d) and bank (K, d) in `dtype` (CPU), exclude (N, 2) or None, the float64 temperature,
    and (q, k, bank, temperature in the kernel's compute dtype, exclude) on ctx.device: the arguments of both
    infonce ops."""
    torch = ctx.torch

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(shape, generator=g, dtype=torch.float64), dim=-1)

    q, k, bank = unit(N, d).to(dtype), unit(N, d).to(dtype), unit(K, d).to(dtype)
    ex = torch.randint(-1, K, (N, 2), generator=g) if with_ex else None
    T = torch.tensor(0.07, dtype=torch.float64)
    Td = T.to(dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=ctx.device)
    dev = (q.to(ctx.device), k.to(ctx.device), bank.to(ctx.device), Td, None if ex is None else ex.to(ctx.device))
    return q, k, bank, ex, T, dev


@smoke
def smoke_infonce_bank_partial(ctx: Ctx) -> Iterator[Case]:
    """The bank-only lse and rank (sharded banks) and its backward with the lse it returned."""
    torch = ctx.torch
    from vkernels.reference.infonce_bank_partial import infonce_bank_partial as reference

    ops = _ops("infonce_bank_partial")
    for impl, dtype, dn, name, (N, K, d, _, with_ex), g in ctx.variants("infonce_partial", INFONCE_CASES,
                                                                         _infonce_quick):
        q, k, bank, ex, T, args = _infonce_inputs(ctx, g, dtype, N, K, d, with_ex)
        q64, b64 = q.double().requires_grad_(), bank.double().requires_grad_()
        lse, _ = reference(q64, k.double(), b64, T, ex)
        gl = torch.randn(N, generator=g, dtype=torch.float64)
        dq, db = torch.autograd.grad((lse * gl).sum(), [q64, b64])
        tol = TOL_NAMES[dn] * 10
        yield Case(f"infonce_bank_partial/{impl}/{dn}/{name}/fwd", ops[impl], args, lse.detach(), tol,
                   max(1.0, float(lse.abs().max())), select=lambda out: out[0])
        bwd = ops[impl].replace("infonce_bank_partial", "infonce_bank_partial_backward")

        def bwd_args(fwd=getattr(torch.ops.vkernels, ops[impl]), args=args, gl=gl):
            out_lse, _ = fwd(*args)
            q_, _, b_, t_, e_ = args
            return (gl.to(device=ctx.device, dtype=out_lse.dtype), q_, b_, t_, e_, out_lse, True)

        gscale = max(1.0, float(dq.abs().max()), float(db.abs().max()))
        yield Case(f"infonce_bank_partial/{impl}/{dn}/{name}/bwd", bwd, bwd_args, (dq, db), tol, gscale,
                   select=lambda out: tuple(out[:2]))


# --------------------------------------------------------------------------------------------------------------------
# bilinear_pooling
# --------------------------------------------------------------------------------------------------------------------
# name: ((B, C1, C2 or None, H, W), normalize, triu)
BILINEAR_CASES = {
    "sym_triu_sqrtl2": ((2, 6, None, 3, 5), "signed_sqrt_l2", True),
    "xy_full_none": ((3, 5, 4, 4, 3), "none", False),
    "xy_full_sqrtl2": ((2, 70, 9, 2, 3), "signed_sqrt_l2", False),  # rows longer than a Triton block
}


@smoke
def smoke_bilinear_pooling(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.bilinear_pooling import bilinear_pooling as reference

    ops = _ops("bilinear_pooling")
    for impl, dtype, dn, name, ((B, C1, C2, H, W), norm, triu), g in ctx.variants(
            "bilinear_pooling", BILINEAR_CASES, lambda name, dn: name != "xy_full_sqrtl2" and dn == "float32"):
        x = torch.randn(B, C1, H, W, generator=g, dtype=torch.float64).to(dtype)
        y = None if C2 is None else torch.randn(B, C2, H, W, generator=g, dtype=torch.float64).to(dtype)
        leaves = [x.double().requires_grad_()] + ([] if y is None else [y.double().requires_grad_()])
        out = reference(leaves[0], None if y is None else leaves[1], norm, triu)
        gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad((out * gout).sum(), leaves)
        xd, yd = x.to(ctx.device), None if y is None else y.to(ctx.device)
        args = (xd, yd, norm, triu, 1e-10)
        tol = TOL_NAMES[dn] * 4
        yield Case(f"bilinear_pooling/{impl}/{dn}/{name}/fwd", ops[impl], args, out.detach(), tol,
                   select=lambda o: o[0])
        bwd = ops[impl].replace("bilinear_pooling", "bilinear_pooling_backward")

        def bwd_args(fwd=getattr(torch.ops.vkernels, ops[impl]), args=args, gout=gout, dtype=dtype):
            out, nrm = fwd(*args)  # the backward reads the forward's output and per-image norm
            return (gout.to(device=ctx.device, dtype=dtype), *args[:2], out, nrm, *args[2:])

        gscale = max(1.0, *(float(t.abs().max()) for t in grads))
        n = len(grads)
        yield Case(f"bilinear_pooling/{impl}/{dn}/{name}/bwd", bwd, bwd_args, tuple(grads), tol * 4, gscale,
                   select=lambda o, n=n: tuple(o[:n]))


# --------------------------------------------------------------------------------------------------------------------
# isqrt_cov
# --------------------------------------------------------------------------------------------------------------------
# name: ((B, C, H, W), iters, triu)
ISQRT_CASES = {
    "paper": ((2, 6, 4, 5), 5, True),
    "one_iter_full": ((3, 5, 3, 3), 1, False),
    "wide": ((2, 70, 3, 4), 3, True),  # rows longer than a Triton block
}


@smoke
def smoke_isqrt_cov(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.isqrt_cov import isqrt_cov as reference

    ops = _ops("isqrt_cov")
    for impl, dtype, dn, name, ((B, C, H, W), iters, triu), g in ctx.variants(
            "isqrt_cov", ISQRT_CASES, lambda name, dn: name != "wide" and dn == "float32"):
        x = (torch.randn(B, C, H, W, generator=g, dtype=torch.float64) + 0.5).to(dtype)
        leaf = x.double().requires_grad_()
        out = reference(leaf, iters, triu)
        gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
        grad, = torch.autograd.grad((out * gout).sum(), leaf)
        args = (x.to(ctx.device), iters, triu)
        tol = TOL_NAMES[dn] * 10  # several chained GEMMs
        scale = max(1.0, float(out.abs().max()))
        yield Case(f"isqrt_cov/{impl}/{dn}/{name}/fwd", ops[impl], args, out.detach(), tol, scale,
                   select=lambda o: o[0])
        bwd = ops[impl].replace("isqrt_cov", "isqrt_cov_backward")

        def bwd_args(fwd=getattr(torch.ops.vkernels, ops[impl]), args=args, gout=gout, dtype=dtype):
            _, A, t = fwd(*args)
            return (gout.to(device=ctx.device, dtype=dtype), args[0], A, t, *args[1:])

        yield Case(f"isqrt_cov/{impl}/{dn}/{name}/bwd", bwd, bwd_args, grad, tol * 4,
                   max(1.0, float(grad.abs().max())))


# --------------------------------------------------------------------------------------------------------------------
# compact_bilinear_pooling
# --------------------------------------------------------------------------------------------------------------------
# name: (B, C1, C2, H, W, D, channels_last)
CBP_CASES = {
    "small": (2, 5, 7, 3, 4, 11, False),  # odd D, C1 != C2, H != W; B below the CPU thread count
    "batch": (9, 33, 20, 5, 3, 100, True),  # D not a power of two, channels_last, several bin blocks
}


@smoke
def smoke_compact_bilinear_pooling(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.compact_bilinear_pooling import tensor_sketch_per_location as definition

    for impl, dtype, dn, name, (B, C1, C2, H, W, D, cl), g in ctx.variants(
            "cbp", CBP_CASES, lambda name, dn: dn == "float32", impls=("cpu", "triton")):  # no CUDA C++ kernel
        x = torch.randn(B, C1, H, W, generator=g, dtype=torch.float64).to(dtype)
        y = torch.randn(B, C2, H, W, generator=g, dtype=torch.float64).to(dtype)
        h1, h2 = torch.randint(0, D, (C1,), generator=g), torch.randint(0, D, (C2,), generator=g)
        s1 = (2 * torch.randint(0, 2, (C1,), generator=g) - 1).float()
        s2 = (2 * torch.randint(0, 2, (C2,), generator=g) - 1).float()
        x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
        out = definition(x64, y64, h1, s1, h2, s2, D)
        gout = torch.randn(B, D, generator=g, dtype=torch.float64)
        dx, dy = torch.autograd.grad((out * gout).sum(), [x64, y64])
        xd, yd = x.to(ctx.device), y.to(ctx.device)
        if cl:
            xd, yd = xd.to(memory_format=torch.channels_last), yd.to(memory_format=torch.channels_last)
        hs = tuple(t.to(ctx.device) for t in (h1, s1, h2, s2))
        tol = TOL_NAMES[dn] * 10  # sums of C1 C2 HW / D products per bin, not one rounded element
        sfx = "_triton" if impl == "triton" else ""
        for route in ("", "_freq"):  # the Gram and frequency routes, on the same inputs
            yield Case(f"compact_bilinear_pooling{route}/{impl}/{dn}/{name}/fwd",
                       f"compact_bilinear_pooling{route}{sfx}", (xd, yd, *hs, D), out.detach(), tol,
                       max(1.0, float(out.abs().max())))
            yield Case(f"compact_bilinear_pooling{route}/{impl}/{dn}/{name}/bwd",
                       f"compact_bilinear_pooling{route}_backward{sfx}",
                       (gout.to(device=ctx.device, dtype=dtype), xd, yd, *hs), (dx, dy), tol,
                       max(1.0, float(dx.abs().max()), float(dy.abs().max())))

# --------------------------------------------------------------------------------------------------------------------
# filtered_lrelu
# --------------------------------------------------------------------------------------------------------------------
# name: (shape, fu, fd, up, down, padding, clamp, placement); a filter is 1-D taps (int) or a 2-D shape (tuple)
FILTERED_LRELU_CASES = {
    "sg3_up2_down2": ((2, 3, 6, 7), 6, 6, 2, 2, (5, 4, 5, 4), 0.5, "contiguous"),
    "full2d_crop": ((1, 4, 5, 6), (3, 4), (2, 3), 2, 1, (1, -1, 2, 0), None, "contiguous"),
    "up4_channels_last": ((2, 5, 4, 5), 5, 3, 4, 2, (2, 3, 1, 2), 1.0, "channels_last"),
    "misaligned": ((1, 3, 6, 6), 3, 4, 1, 2, (1, 2, 2, 1), None, "offset1"),
}


@smoke
def smoke_filtered_lrelu(ctx: Ctx) -> Iterator[Case]:
    """The forward (y; the mask is checked through the gradient) and the masked op that is its gradient."""
    torch = ctx.torch
    from vkernels.ops.filtered_lrelu import _geometry, _transpose
    from vkernels.reference.filtered_lrelu import filtered_lrelu as reference

    fwds, grads = _ops("filtered_lrelu"), _ops("filtered_lrelu_masked")
    gain, slope = 1.4, 0.2
    for impl, dtype, dn, name, (shape, fus, fds, up, down, pad, clamp, placement), g in ctx.variants(
            "filtered_lrelu", FILTERED_LRELU_CASES, lambda name, dn: name == "sg3_up2_down2"):
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        b = torch.randn(shape[1], generator=g, dtype=torch.float64).to(dtype)
        fu, fd = ((torch.rand(s if isinstance(s, tuple) else (s,), generator=g, dtype=torch.float64) + 0.2)
                  .float() for s in (fus, fds))
        xe, be = x.double().requires_grad_(), b.double().requires_grad_()
        expect = reference(xe, fu, fd, be, up, down, pad, gain, slope, clamp, False)
        dy = torch.randn(expect.shape, generator=g, dtype=torch.float64).to(dtype)
        (dx,) = torch.autograd.grad(expect, xe, dy.double())
        fwd = fwds[impl]
        args = (_place(x, placement, ctx.device, torch), fu.to(ctx.device), fd.to(ctx.device),
                b.to(ctx.device), up, down, *pad, gain, slope, clamp, False, True)
        scale = max(1.0, float(expect.abs().max()))
        yield Case(f"filtered_lrelu/{impl}/{dn}/{name}/fwd", fwd, args, expect.detach(), TOL_NAMES[dn],
                   scale, select=lambda out: out[0])

        def bwd_args(fwd_op=getattr(torch.ops.vkernels, fwd), args=args, fu=fu, fd=fd, up=up, down=down,
                     pad=pad, dy=dy, oshape=tuple(expect.shape), shape=shape):
            _, mask = fwd_op(*args)
            (_, mw), _ = _geometry(shape[3], shape[2], fu, fd, up, down, pad)
            t = _transpose(fu, fd, mw, 0, 0, up, down, pad, float(up * up), 1.0, False, shape[2:],
                           oshape[2:])
            return (dy.to(ctx.device), t[0].to(ctx.device), t[1].to(ctx.device), mask, *t[2:13], gain,
                    slope, t[13])

        yield Case(f"filtered_lrelu/{impl}/{dn}/{name}/grad", grads[impl], bwd_args,
                   dx, TOL_NAMES[dn] * 4, max(1.0, float(dx.abs().max())))


# --------------------------------------------------------------------------------------------------------------------
# pixel_norm
# --------------------------------------------------------------------------------------------------------------------
# name: (shape, dim, placement)
PIXEL_NORM_CASES = {
    "latent": ((5, 37), 1, "contiguous"),  # the mapping network's input: C contiguous rows
    "fmap": ((2, 7, 5, 3), 1, "contiguous"),  # normalized over a strided dim
    "channels_last": ((2, 6, 5, 3), 1, "channels_last"),
    "misaligned": ((3, 9, 7), -1, "offset1"),
}


@smoke
def smoke_pixel_norm(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.pixel_norm import pixel_norm as reference

    ops = {"cuda": "pixel_norm", "cpu": "pixel_norm", "triton": "pixel_norm_triton"}
    for dtype in ctx.dtypes:
        dn = str(dtype).replace("torch.", "")
        for impl in ctx.impls:
            for name, (shape, dim, placement) in PIXEL_NORM_CASES.items():
                if ctx.scope == "quick" and impl == "triton" and name not in ("latent", "fmap"):
                    continue
                g = ctx.gen("pixel_norm", impl, dn, name)
                x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
                gr = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
                x64 = x.double().requires_grad_()
                y64 = reference(x64, dim, 1e-8)
                (dx64,) = torch.autograd.grad(y64, x64, gr.double())
                xd = _place(x, placement, ctx.device, torch)
                yield Case(f"pixel_norm/{impl}/{dn}/{name}/fwd", ops[impl], (xd, dim, 1e-8), y64.detach(),
                           TOL_NAMES[dn], 2.0)
                bwd = ops[impl].replace("pixel_norm", "pixel_norm_backward")
                yield Case(f"pixel_norm/{impl}/{dn}/{name}/bwd", bwd, (_place(gr, placement, ctx.device, torch), xd,
                                                                      dim, 1e-8), dx64, TOL_NAMES[dn] * 4,
                           max(1.0, float(dx64.abs().max())))


# --------------------------------------------------------------------------------------------------------------------
# modulated_conv2d (weight pass and epilogue)
# --------------------------------------------------------------------------------------------------------------------
@smoke
def smoke_modulated_conv2d_weight(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    ops = _ops("modulated_conv2d_weight")
    for impl, dtype, dn, name, (N, O, I, k), g in ctx.variants("modconv_weight",
                                                               {"3x3": (3, 5, 7, 3), "1x1": (2, 3, 33, 1)}):
        w = torch.randn(O, I, k, k, generator=g, dtype=torch.float64).to(dtype)
        s = (torch.randn(N, I, generator=g, dtype=torch.float64) + 1).to(dtype)
        wm = w.double()[None] * s.double()[:, None, :, None, None]
        d = (wm.square().sum([2, 3, 4]) + 1e-8).rsqrt()
        args = (w.to(ctx.device), s.to(ctx.device), True, True)
        yield Case(f"modulated_conv2d_weight/{impl}/{dn}/{name}/fused", ops[impl], args,
                   (wm * d[:, :, None, None, None], d), TOL_NAMES[dn] * 4, max(1.0, float(d.max())))
        yield Case(f"modulated_conv2d_weight/{impl}/{dn}/{name}/dcoefs", ops[impl],
                   (w.to(ctx.device), s.to(ctx.device), True, False), d, TOL_NAMES[dn] * 4,
                   max(1.0, float(d.max())), select=lambda out: out[1])


@smoke
def smoke_modulated_conv2d_epilogue(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    import math
    from vkernels.reference.bias_act import bias_act as ba_ref

    ops = _ops("modulated_conv2d_epilogue")
    # name: (shape, demod, noise batch (0 = none), bias, act, clamp)
    variants = {"full": ((2, 5, 6, 7), True, 2, True, "lrelu", 1.5), "bcast_noise": ((3, 4, 5, 5), True, 1, True,
                "tanh", None), "plain": ((2, 3, 4, 9), False, 0, False, "linear", None)}
    for impl, dtype, dn, name, (shape, demod, nb, has_b, act, clamp), g in ctx.variants(
            "modconv_epi", variants, lambda name, dn: name == "full"):
        N, O, H, W = shape
        x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
        d = (torch.rand(N, O, generator=g, dtype=torch.float64) + 0.5).to(dtype) if demod else None
        nz = torch.randn(nb, 1, H, W, generator=g, dtype=torch.float64).to(dtype) if nb else None
        ns = torch.tensor(0.7, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
        b = torch.randn(O, generator=g, dtype=torch.float64).to(dtype) if has_b else None
        gr = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        z = x.double()
        if d is not None:
            z = z * d.double()[:, :, None, None]
        if nz is not None:
            z = z + nz.double() * ns.double()
        zl = z.requires_grad_()
        gain = math.sqrt(2) if act == "lrelu" else 1.0
        y = ba_ref(zl, None if b is None else b.double(), 1, act, 0.2, gain, clamp)
        (dz,) = torch.autograd.grad(y, zl, gr.double())
        dev = [None if t is None else t.to(ctx.device) for t in (x, d, nz, ns, b)]
        if nz is None:
            dev[3] = None
        tail = (act, 0.2, gain, clamp)
        scale = max(1.0, float(y.abs().max()))
        yield Case(f"modulated_conv2d_epilogue/{impl}/{dn}/{name}/fwd", ops[impl], (*dev, *tail), y.detach(),
                   TOL_NAMES[dn] * 4, scale)
        bwd = ops[impl].replace("epilogue", "epilogue_backward")
        yield Case(f"modulated_conv2d_epilogue/{impl}/{dn}/{name}/bwd", bwd,
                   (gr.to(ctx.device), *dev, *tail), dz, TOL_NAMES[dn] * 4,
                   max(1.0, float(dz.abs().max())))


# --------------------------------------------------------------------------------------------------------------------
# upsample_norm_act / spade_norm_act (stats + apply kernels and their fused backward ops)
# --------------------------------------------------------------------------------------------------------------------
# name: (N, C, H, W), scale, mode, channels_last
NORM_ACT_CASES = {
    "nearest2": ((2, 5, 7, 6), 2, "nearest", False),
    "bilinear3_cl": ((3, 4, 5, 9), 3, "bilinear", True),
    "nearest2_3d": ((2, 3, 3, 4, 5), 2, "nearest", False),
    "trilinear2_cl3d": ((2, 3, 2, 3, 4), 2, "trilinear", True),
}


@smoke
def smoke_upsample_norm_act(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.upsample_norm_act import act_gain_clamp, upsample

    sfx = {"cuda": "", "cpu": "", "triton": "_triton"}
    for dtype in ctx.dtypes:
        dn = str(dtype).replace("torch.", "")
        ct = torch.float64 if dtype == torch.float64 else torch.float32
        for impl in ctx.impls:
            for name, (shape, s, mode, cl) in NORM_ACT_CASES.items():
                if ctx.scope == "quick" and impl == "triton" and dn != "float32":
                    continue
                g = ctx.gen("upsample_norm_act", impl, dn, name)
                x = (torch.randn(shape, generator=g, dtype=torch.float64) + 0.5).to(dtype)
                N, C = shape[:2]
                u = upsample(x.double(), s, mode)
                xd = x.to(ctx.device)
                sp = tuple(range(2, len(shape)))
                fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
                if cl:
                    xd = xd.contiguous(memory_format=fmt)
                for per_sample in (False, True):
                    dims = sp if per_sample else (0, *sp)
                    var, mean = torch.var_mean(u, dims, correction=0)
                    yield Case(f"upsample_norm_act_stats/{impl}/{dn}/{name}/{per_sample}",
                               "upsample_norm_act_stats" + sfx[impl], (xd, s, mode, per_sample), (mean, var),
                               TOL_NAMES[dn], 4.0)
                m, a, b = (torch.randn(N, C, generator=g, dtype=torch.float64) for _ in range(3))
                nc = (N, C) + (1,) * len(sp)
                z = (u - m.view(nc)) * a.view(nc) + b.view(nc)
                expect = act_gain_clamp(z, "lrelu", 0.2, 1.4, 3.0)
                args = (xd, *(t.to(device=ctx.device, dtype=ct) for t in (m, a, b)), s, mode, "lrelu", 0.2, 1.4, 3.0)
                yield Case(f"upsample_norm_act/{impl}/{dn}/{name}", "upsample_norm_act" + sfx[impl], args, expect,
                           TOL_NAMES[dn], 4.0)
                # Fused backward ops against their differentiable composites (fp64).
                from vkernels.ops.upsample_norm_act import apply_backward_composite, stats_backward_composite
                dy = torch.randn(N, C, *(d * s for d in shape[2:]), generator=g, dtype=torch.float64).to(dtype)
                dyd = dy.to(ctx.device)
                if cl:
                    dyd = dyd.contiguous(memory_format=fmt)
                bargs = (s, mode, "lrelu", 0.2, 1.4, 3.0, [True] * 4)
                bexp = apply_backward_composite(dy.double(), x.double(), m, a, b, *bargs)
                yield Case(f"upsample_norm_act_backward/{impl}/{dn}/{name}", "upsample_norm_act_backward" + sfx[impl],
                           (dyd, xd, *args[1:4], *bargs), bexp, TOL_NAMES[dn], 16.0)
                gm, gv, mn = (torch.randn(C, generator=g, dtype=torch.float64) for _ in range(3))
                sexp = stats_backward_composite(gm, gv, x.double(), mn, s, mode, False)
                yield Case(f"upsample_norm_act_stats_backward/{impl}/{dn}/{name}",
                           "upsample_norm_act_stats_backward" + sfx[impl],
                           (*(t.to(ctx.device, ct) for t in (gm, gv)), xd, mn.to(ctx.device, ct), s, mode, False), sexp,
                           TOL_NAMES[dn], 16.0)


@smoke
def smoke_spade_norm_act(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.upsample_norm_act import act_gain_clamp

    sfx = {"cuda": "", "cpu": "", "triton": "_triton"}
    for dtype in ctx.dtypes:
        dn = str(dtype).replace("torch.", "")
        ct = torch.float64 if dtype == torch.float64 else torch.float32
        for impl in ctx.impls:
            for name, (shape, _, _, cl) in NORM_ACT_CASES.items():
                if ctx.scope == "quick" and impl == "triton" and dn != "float32":
                    continue
                g = ctx.gen("spade_norm_act", impl, dn, name)
                x, gm, bt = (torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(3))
                N, C = shape[:2]
                m = torch.randn(N, C, generator=g, dtype=torch.float64)
                r = torch.rand(N, C, generator=g, dtype=torch.float64) + 0.5
                z = (x.double() - m[:, :, None, None]) * r[:, :, None, None] * (1 + gm.double()) + bt.double()
                expect = act_gain_clamp(z, "tanh", 0.2, 1.3, 1.0)
                xd = x.to(ctx.device)
                if cl:
                    xd = xd.contiguous(memory_format=torch.channels_last)
                args = (xd, m.to(ctx.device, ct), r.to(ctx.device, ct), gm.to(ctx.device), bt.to(ctx.device), "tanh",
                        0.2, 1.3, 1.0)
                yield Case(f"spade_norm_act/{impl}/{dn}/{name}", "spade_norm_act" + sfx[impl], args, expect,
                           TOL_NAMES[dn], 8.0)
                from vkernels.ops.spade_norm_act import backward_composite
                dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
                dyd = dy.to(ctx.device)
                if cl:
                    dyd = dyd.contiguous(memory_format=torch.channels_last)
                bexp = backward_composite(dy.double(), x.double(), m, r, gm.double(), bt.double(), "tanh", 0.2, 1.3,
                                          1.0, [True] * 5)
                yield Case(f"spade_norm_act_backward/{impl}/{dn}/{name}", "spade_norm_act_backward" + sfx[impl],
                           (dyd, *args[:5], *args[5:], [True] * 5), bexp, TOL_NAMES[dn], 16.0)
                if impl != "cpu":  # the fused training forward has only a CPU kernel
                    continue
                for per_sample in (False, True):  # (2, 5, ...): 5 groups -> two-pass fallback, 10 -> fused
                    var, mean = torch.var_mean(x.double(), (2, 3) if per_sample else (0, 2, 3), correction=0)
                    rstd = torch.rsqrt(var + 1e-5)
                    mb, rb = (t if per_sample else t.expand(N, C) for t in (mean, rstd))
                    z = (x.double() - mb[:, :, None, None]) * rb[:, :, None, None] * (1 + gm.double()) + bt.double()
                    texp = (act_gain_clamp(z, "tanh", 0.2, 1.3, 1.0), mean, var, rstd)
                    yield Case(f"spade_norm_act_train/{impl}/{dn}/{name}/{per_sample}", "spade_norm_act_train",
                               (xd, gm.to(ctx.device), bt.to(ctx.device), per_sample, 1e-5, "tanh", 0.2, 1.3, 1.0),
                               texp, TOL_NAMES[dn], 8.0)


# --------------------------------------------------------------------------------------------------------------------
# runner
# --------------------------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------------------------
# random_maclaurin_pooling
# --------------------------------------------------------------------------------------------------------------------
# name: (B, C1, C2 (None: y is x), H, W, D, route, channels_last)
RMP_CASES = {
    "gram_xy": (2, 5, 7, 3, 4, 11, "gram", False),  # odd D, C1 != C2; B below the CPU thread count
    "project_xy": (3, 6, 4, 2, 5, 9, "project", True),  # channels_last
    "gram_y_is_x_tiles": (2, 33, None, 3, 3, 150, "gram", False),  # D past a CPU tile (128) and Triton's blocks
    "project_y_is_x": (2, 17, None, 4, 3, 40, "project", False),
}


@smoke
def smoke_random_maclaurin_pooling(ctx: Ctx) -> Iterator[Case]:
    torch = ctx.torch
    from vkernels.reference.random_maclaurin_pooling import random_maclaurin_pooling as definition

    ops = {"cpu": "random_maclaurin_pooling", "triton": "random_maclaurin_pooling_triton"}  # no CUDA C++ kernel
    for impl, dtype, dn, name, (B, C1, C2, H, W, D, route, cl), g in ctx.variants(
            "rmp", RMP_CASES, lambda name, dn: dn == "float32", impls=ops):
        sym = C2 is None
        C2 = C1 if sym else C2
        x = torch.randn(B, C1, H, W, generator=g, dtype=torch.float64).to(dtype)
        y = x if sym else torch.randn(B, C2, H, W, generator=g, dtype=torch.float64).to(dtype)
        w1 = (2 * torch.randint(0, 2, (D, C1), generator=g) - 1).float()
        w2 = (2 * torch.randint(0, 2, (D, C2), generator=g) - 1).float()
        leaves = [t.double().requires_grad_() for t in (x, y, w1, w2)]
        if sym:
            leaves[1] = leaves[0]
        out = definition(*leaves)
        gout = torch.randn(B, D, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad((out * gout).sum(), [leaves[0], leaves[2], leaves[3]] +
                                    ([] if sym else [leaves[1]]))
        dx, dw1, dw2 = grads[:3]
        xd = x.to(ctx.device)
        if cl:
            xd = xd.to(memory_format=torch.channels_last)
        yd = None if sym else y.to(ctx.device)
        if cl and not sym:
            yd = yd.to(memory_format=torch.channels_last)
        wd = (w1.to(ctx.device), w2.to(ctx.device))
        tol = TOL_NAMES[dn] * 10  # sums of C1 C2 HW products per feature, not one rounded element
        yield Case(f"random_maclaurin_pooling/{impl}/{dn}/{name}/fwd", ops[impl], (xd, yd, *wd, route),
                   out.detach(), tol, max(1.0, float(out.abs().max())))
        bwd = ops[impl].replace("random_maclaurin_pooling", "random_maclaurin_pooling_backward")
        expect = (dx, torch.zeros(0, dtype=torch.float64) if sym else grads[3], dw1, dw2)
        yield Case(f"random_maclaurin_pooling/{impl}/{dn}/{name}/bwd", bwd,
                   (gout.to(device=ctx.device, dtype=dtype), xd, yd, *wd, route, [True, True, True, True]),
                   expect, tol * 4, max(1.0, *(float(t.abs().max()) for t in grads)))
        if route != "project":
            continue
        # The project route that keeps W1 X, W2 Y for its backward: out, the saved projections, and the
        # gradients from them.
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        X64 = x.double().flatten(2)
        Y64 = X64 if sym else y.double().flatten(2)
        proj = torch.stack([torch.matmul(w1.double(), X64), torch.matmul(w2.double(), Y64)]).transpose(1, 2)
        sfwd = ops[impl].replace("random_maclaurin_pooling", "random_maclaurin_pooling_saved")
        yield Case(f"random_maclaurin_pooling/{impl}/{dn}/{name}/saved_fwd", sfwd, (xd, yd, *wd),
                   (out.detach(), proj), tol, max(1.0, float(out.abs().max()), float(proj.abs().max())))
        sbwd = sfwd.replace("_saved", "_saved_backward")
        yield Case(f"random_maclaurin_pooling/{impl}/{dn}/{name}/saved_bwd", sbwd,
                   (gout.to(device=ctx.device, dtype=dtype), xd, yd, *wd,
                    proj.to(device=ctx.device, dtype=acc).contiguous(), [True, True, True, True]),
                   expect, tol * 4, max(1.0, *(float(t.abs().max()) for t in grads)))


def _as_tuple(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _check(torch, case: Case, out) -> str | None:
    """None if out matches, else a one-line reason."""
    if case.select is not None:
        out = case.select(out)
    outs, exps = _as_tuple(out), _as_tuple(case.expect)
    if len(outs) != len(exps):
        return f"{len(outs)} outputs, expected {len(exps)}"
    likes = _as_tuple(case.like) if case.like is not None else (None,) * len(outs)
    dcs = _as_tuple(case.dont_care) if case.dont_care is not None else (None,) * len(outs)
    for k, (o, e, lk, dc) in enumerate(zip(outs, exps, likes, dcs)):
        tag = f"output {k}: " if len(outs) > 1 else ""
        if tuple(o.shape) != tuple(e.shape):
            return f"{tag}shape {tuple(o.shape)} != {tuple(e.shape)}"
        if lk is not None:
            if o.dtype != lk.dtype or o.device != lk.device:
                return f"{tag}{o.dtype} on {o.device}, expected {lk.dtype} on {lk.device}"
            if o.numel() > 1 and o.stride() != lk.stride():
                return f"{tag}strides {o.stride()} != input's {lk.stride()} (layout not kept)"
        if o.numel() == 0:
            continue
        od = o.detach().double().cpu()
        err = (od - e).abs()
        allowed = case.tol * (case.scale + e.abs())
        bad = ~(err <= allowed)  # NaN in the output counts as bad
        if dc is not None:
            bad &= ~dc
        if bool(bad.any()):
            idx = int(torch.nonzero(bad.reshape(-1))[0])
            n = int(bad.sum())
            return (f"{tag}{n}/{o.numel()} elements off; first at flat index {idx}: got {od.reshape(-1)[idx]:.6g}, "
                    f"expected {e.reshape(-1)[idx]:.6g} (allowed +-{allowed.reshape(-1)[idx]:.3g}); "
                    f"max err {float(torch.nan_to_num(err, nan=float('inf')).max()):.3g}")
    return None


def _is_fatal_device_error(e: BaseException) -> bool:
    msg = str(e)
    return type(e).__name__ == "AcceleratorError" or "CUDA error" in msg or "illegal memory access" in msg \
        or "unspecified launch failure" in msg


def _required_ops(torch, device, impls):
    """vkernels::* ops with a kernel for this device that the selected impls must launch."""
    key = "CUDA" if device == "cuda" else "CPU"
    try:
        names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("vkernels::")]
    except AttributeError:  # not in this torch: skip the coverage check rather than fail
        return None
    req = set()
    for n in names:
        op = n.split("::", 1)[1]
        impl = "triton" if op.endswith("_triton") else ("cuda" if device == "cuda" else "cpu")
        if impl in impls and torch._C._dispatch_has_kernel_for_dispatch_key(n, key):
            req.add(op)
    return req


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None,
                    help="cuda (default when a GPU is visible) or cpu (C++ CPU kernels + Triton interpreter)")
    ap.add_argument("--impls", default=None, help="comma list: cuda,triton (cuda device) / cpu,triton (cpu device)")
    ap.add_argument("--scope", choices=("quick", "default", "full"), default="default")
    ap.add_argument("--ops", default=None, help="comma list of ops (default: every registered op)")
    ap.add_argument("--dtypes", default="float16,bfloat16,float32,float64")
    ap.add_argument("--max-seconds", type=float, default=0.0, help="stop starting new cases after this (exit 3)")
    ap.add_argument("--max-failures", type=int, default=25, help="stop after this many failures")
    ap.add_argument("--large", action="store_true",
                    help="add >2**31-element cases (CUDA only; ~13 GB of GPU memory; not under a sanitizer)")
    ap.add_argument("--no-fill", action="store_true",
                    help="don't NaN-fill new tensors (for initcheck, which must see uninitialized memory)")
    ap.add_argument("--shard", default="0/1", help="k/n: run only cases k, k+n, k+2n, ... (coverage check off)")
    ap.add_argument("--jobs", type=int, default=1, help="run --shard 0/N .. N-1/N in N parallel processes")
    ap.add_argument("--list", action="store_true", help="print the cases (no launches) and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per case")
    args = ap.parse_args(argv)

    t_start = time.time()
    if args.jobs > 1 and not args.list:
        return _run_jobs(args.jobs, sys.argv[1:] if argv is None else list(argv), args.max_seconds)
    shard_k, shard_n = (int(v) for v in args.shard.split("/"))
    if not 0 <= shard_k < shard_n:
        ap.error(f"--shard must be k/n with 0 <= k < n, got {args.shard}")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    if device is None:
        print("smoke: no CUDA GPU visible; pass --device cpu for the CPU / Triton-interpreter run", flush=True)
        return 1
    if device == "cuda" and not torch.cuda.is_available():
        print("smoke: --device cuda but torch.cuda.is_available() is False", flush=True)
        return 1
    impls = tuple(s for s in (args.impls or ("cuda,triton" if device == "cuda" else "cpu,triton")).split(",") if s)
    if device == "cpu" and "triton" in impls and os.environ.get("TRITON_INTERPRET") != "1":
        # Must be set before vkernels defines its Triton kernels (i.e. before the import below).
        os.environ["TRITON_INTERPRET"] = "1"
    if os.environ.get("TRITON_INTERPRET") == "1":
        import warnings  # the interpreter evaluates both sides of tl.where in numpy (0/0 on the discarded side)

        for msg in ("invalid value encountered", "divide by zero encountered", "overflow encountered"):
            warnings.filterwarnings("ignore", message=msg, category=RuntimeWarning)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script: don't let benchmarks/ shadow anything
    sys.path.insert(0, str(ROOT))  # the in-place build in this checkout, installed or not
    import vkernels
    from vkernels import _backend

    dtypes = tuple(getattr(torch, d) for d in args.dtypes.split(",") if d)
    if args.large and device != "cuda":
        print("smoke: --large applies to --device cuda only; ignored", flush=True)
    ctx = Ctx(torch, device, impls, args.scope, dtypes, args.large)
    wanted = sorted(_backend.OPS) if args.ops is None else [o for o in args.ops.split(",") if o]

    failures: list[str] = []
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"smoke: device {device} ({gpu}), impls {','.join(impls)}, scope {args.scope}, torch {torch.__version__}"
          f", triton {_triton_version()}, NaN-filled outputs {not args.no_fill}, PYTORCH_NO_CUDA_MEMORY_CACHING="
          f"{os.environ.get('PYTORCH_NO_CUDA_MEMORY_CACHING', '0')}, TRITON_INTERPRET="
          f"{os.environ.get('TRITON_INTERPRET', '0')}", flush=True)

    # Every requested impl must exist for this device; a GPU check that silently skips one proves nothing.
    for op in wanted:
        if op not in _backend.OPS:
            failures.append(f"{op}: not a registered vkernels op (known: {', '.join(sorted(_backend.OPS))})")
            continue
        avail = vkernels.available_impls(op, device)
        for impl in impls:
            if impl not in avail:
                failures.append(f"{op}: impl {impl} not available for {device} tensors (available: "
                                f"{', '.join(avail)}); see python -m vkernels info")
        if op not in SMOKES:
            failures.append(f"{op}: no smoke_{op}() in benchmarks/smoke.py: its kernels are never launched here")
    impls_ok = {op: tuple(i for i in impls if op in _backend.OPS and i in vkernels.available_impls(op, device))
                for op in wanted}

    if not args.no_fill:
        # NaN-filled empty tensors (outputs included): an element no kernel wrote fails the comparison.
        torch.use_deterministic_algorithms(True, warn_only=True)
        import torch.utils.deterministic

        torch.utils.deterministic.fill_uninitialized_memory = True
    launched: set[str] = set()
    n_cases = n_ok = 0
    n_seen = -1
    stopped = None
    groups: dict[tuple, list] = {}  # (op, impl, dtype) -> [cases, ok, seconds]
    for op in wanted:
        if op not in SMOKES or not impls_ok.get(op):
            continue
        sub = Ctx(torch, device, impls_ok[op], args.scope, dtypes, args.large)
        it = SMOKES[op](sub)
        while True:
            if args.max_seconds and time.time() - t_start > args.max_seconds:
                stopped = f"--max-seconds {args.max_seconds:g} reached"
                break
            if len(failures) >= args.max_failures:
                stopped = f"{len(failures)} failures (--max-failures)"
                break
            t0 = time.time()
            try:
                case = next(it)
            except StopIteration:
                break
            except Exception as e:  # a bug in the smoke function itself
                failures.append(f"{op}: building cases raised {type(e).__name__}: {e}")
                break
            n_seen += 1
            if n_seen % shard_n != shard_k:
                continue
            if args.list:
                print(case.name)
                continue
            n_cases += 1
            parts = case.name.split("/")
            gkey = tuple(parts[:3])
            grp = groups.setdefault(gkey, [0, 0, 0.0])
            grp[0] += 1
            try:
                launched.add(case.op)
                cargs = case.args() if callable(case.args) else case.args
                out = getattr(torch.ops.vkernels, case.op)(*cargs)
                del cargs  # free large inputs before the next case
                if device == "cuda":
                    torch.cuda.synchronize()
                why = _check(torch, case, out)
                out = None  # free (large) outputs before the next case
            except Exception as e:
                why = f"raised {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                if _is_fatal_device_error(e):
                    failures.append(f"{case.name}: {why}")
                    stopped = "device error: the CUDA context is unusable after it"
                    print(f"FAIL {case.name}: {why}", flush=True)
                    break
            grp[2] += time.time() - t0
            if why is None:
                n_ok += 1
                grp[1] += 1
                if args.verbose:
                    print(f"ok   {case.name}", flush=True)
            else:
                failures.append(f"{case.name}: {why}")
                print(f"FAIL {case.name}: {why}", flush=True)
        if stopped:
            break
    if args.list:
        return 0

    for (op, impl, dn), (n, ok, secs) in groups.items():
        print(f"  {op:<12} {impl:<7} {dn:<9} {ok:>4}/{n:<4} ok  {secs:6.1f} s", flush=True)

    if stopped is None and args.ops is None and shard_n == 1:
        req = _required_ops(torch, device, impls)
        if req is None:
            print("smoke: coverage check skipped (torch._C._dispatch_get_all_op_names missing)")
        else:
            for op in sorted(req - launched):
                failures.append(f"vkernels::{op} has a {device} kernel but no smoke case launched it")

    dt = time.time() - t_start
    status = "FAIL" if failures else ("INCOMPLETE" if stopped else "PASS")
    shard = f" (shard {shard_k}/{shard_n})" if shard_n > 1 else ""
    print(f"smoke{shard}: {status}: {n_ok}/{n_cases} cases ok, {len(failures)} failures, ops launched: "
          f"{', '.join(sorted(launched)) or 'none'}; {dt:.1f} s" + (f"; stopped early: {stopped}" if stopped else ""),
          flush=True)
    for f in failures[:10]:
        print(f"  - {f}", flush=True)
    if failures:
        return 1
    return 3 if stopped else 0


def _run_jobs(jobs: int, argv: list, max_seconds: float = 0.0) -> int:
    """Run this script as `jobs` shards in parallel; print each shard's output in order; worst exit status wins.
    With max_seconds, shards still running 10 s past it (e.g. stuck importing on a busy machine) are stopped."""
    import subprocess
    import tempfile

    rest, skip = [], False
    for a in argv:  # drop --jobs N / --jobs=N / --shard from the children's arguments
        if skip:
            skip = False
            continue
        if a in ("--jobs", "--shard"):
            skip = True
            continue
        if a.startswith(("--jobs=", "--shard=")):
            continue
        rest.append(a)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        logs = [open(Path(tmp) / f"shard{k}.log", "w+") for k in range(jobs)]
        procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *rest, "--shard", f"{k}/{jobs}"],
                                  stdout=logs[k], stderr=subprocess.STDOUT, text=True) for k in range(jobs)]
        rcs = []
        for k, p in enumerate(procs):
            try:
                left = max(1.0, t0 + max_seconds + 10 - time.time()) if max_seconds else None
                p.wait(timeout=left)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                logs[k].write("\nsmoke: shard stopped by the parent: past --max-seconds\n")
            rcs.append(3 if p.returncode < 0 else p.returncode)  # killed: incomplete, not failed
            logs[k].flush()
            logs[k].seek(0)
            print(f"--- shard {k}/{jobs}: exit {p.returncode}", flush=True)
            print(logs[k].read().rstrip(), flush=True)
            logs[k].close()
    rc = 1 if any(r not in (0, 3) for r in rcs) else (3 if 3 in rcs else 0)
    print(f"smoke: {jobs} shards, exit statuses {rcs}: {'PASS' if rc == 0 else 'FAIL' if rc == 1 else 'INCOMPLETE'}"
          f"; {time.time() - t0:.1f} s (the coverage check runs only unsharded)", flush=True)
    return rc


def _triton_version():
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001 - absent or broken: report, don't fail
        return "none"


if __name__ == "__main__":
    sys.exit(main())
