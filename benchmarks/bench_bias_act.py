"""bias_act cases: StyleGAN2's layer epilogue, y = clamp(lrelu(x + b) * sqrt(2), -256, 256), b along channels.

Memory-bound: one call reads x and writes y (the C-length bias is negligible), ~5 FLOPs per element.
"""
import math
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, place

ARGS = dict(dim=1, act="lrelu", alpha=None, gain=math.sqrt(2), clamp=256.0)
FLOPS_PER_ELEM = 5  # add bias, lrelu slope multiply, gain multiply, clamp min and max


def _reference(x, b):
    return vkernels.reference.bias_act(x, b, **ARGS)


def _impl(impl):
    def fn(x, b):
        return vkernels.bias_act(x, b, **ARGS, impl=impl)
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    # (N, C, H, W), channels_last. 32x512x64x64 is the target: a StyleGAN2 64x64 layer at batch 32.
    if quick:
        shapes = [((2, 64, 16, 16), False)]
    elif device == "cuda":
        shapes = [((32, 512, 64, 64), False)]
    else:
        shapes = [((32, 512, 64, 64), False), ((32, 512, 64, 64), True), ((8, 512, 32, 32), False)]
    dtypes = [torch.float16, torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32]
    impls = {f"vkernels-{i}": _impl(i) for i in vkernels_impls("bias_act", device)}
    out = []
    for shape, channels_last in shapes:
        for dtype in dtypes:
            # sigma 64: about 0.2% of outputs pass 256, so the clamp path runs too.
            x = (torch.randn(shape, device=device) * 64).to(dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            b = torch.randn(shape[1], device=device, dtype=dtype)
            out.append(Case(op="bias_act", size="x".join(map(str, shape)) + ("-cl" if channels_last else ""),
                            dtype=dtype, inputs=(x, b), reference=_reference, impls=impls,
                            bytes=2 * x.nbytes + b.nbytes, flops=FLOPS_PER_ELEM * x.numel(), bound="memory"))
    return out


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
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


def smoke_bias_act(ctx: SmokeCtx) -> Iterator[SmokeCase]:
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
                    xd = place(x, x_place, ctx.device, torch)
                    yd = place(yq, x_place, ctx.device, torch)
                    gd = place(dy, g_place, ctx.device, torch)
                    bd = None if b is None else b.to(ctx.device)
                    scale = max(1.0, float(dy64.abs().max()) * abs(gain))
                    for mode, spec in BIAS_ACT_MODES.items():
                        expect, dont_care = expects[mode]
                        name = f"bias_act/{impl}/{dn}/{layout}/{act}/{mode}"
                        if spec is None:
                            if placement == "offset1_g":
                                continue  # same forward launch as bias_cs
                            yield SmokeCase(name, fwd_op, (xd, bd, dim, act, alpha, gain, clamp), expect, tol,
                                            max(1.0, float(expect.abs().max())), None, xd)
                            continue
                        ref_is_y, order = spec
                        if ref_is_y and act == "swish":
                            continue  # swish's derivative is not a function of its output (the op refuses it)
                        ref = yd if ref_is_y else xd
                        yield SmokeCase(name, grad_op, (gd, ref, bd, dim, act, alpha, gain, clamp, ref_is_y, order),
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
        yield SmokeCase(f"bias_act/{impl}/{dn}/large/lrelu/fwd", fwd_op, lambda m=make: m(False), y64, tol,
                        max(1.0, float(y64.abs().max())), select=ends_of)
        yield SmokeCase(f"bias_act/{impl}/{dn}/large/lrelu/grad1_x", grad_op, lambda m=make: m(True), d64, tol,
                        max(1.0, float(dy.double().abs().max()) * gain), select=ends_of)
