"""upsample_norm_act cases: a generator block's upsample -> batch norm (train mode) -> lrelu, and BigGAN's
upsample -> class-conditional batch norm -> relu.

Memory-bound: reads the low-resolution x twice (statistics, then apply) and writes the s*s times larger output once;
~4 FLOPs per output (subtract, scale, shift, activation) plus 6 for bilinear interpolation. The floor is
allocating and writing an output-sized tensor (`clone` of an output-shaped input that the providers ignore).
"""
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, fwd_bwd, vkernels_impls
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES
from vkernels._dtypes import acc_dtype


def _reference(args):
    def fn(x, w, b, ss, sb, _floor):
        return vkernels.reference.upsample_norm_act(x, **args, weight=w, bias=b, style_scale=ss, style_bias=sb)
    return fn


def _impl(impl, args):
    def fn(x, w, b, ss, sb, _floor):
        return vkernels.upsample_norm_act(x, **args, weight=w, bias=b, style_scale=ss, style_bias=sb, impl=impl)
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    # name: (N, C, H, W), scale, mode, act, conditional. StyleGAN2-256 sizes (C=256, 32^2 -> 64^2) and a
    # BigGAN-128 G block (ch=96: 384 channels, 32^2 -> 64^2, class-conditional BN).
    if quick:
        shapes = {"small-nearest": ((2, 16, 8, 8), 2, "nearest", "lrelu", False),
                  "small-bilinear-cond": ((2, 16, 8, 8), 2, "bilinear", "relu", True)}
    else:
        shapes = {"sg2-32to64-nearest": ((32, 256, 32, 32), 2, "nearest", "lrelu", False),
                  "sg2-32to64-bilinear": ((32, 256, 32, 32), 2, "bilinear", "lrelu", False),
                  "biggan128-cbn-nearest": ((16, 384, 32, 32), 2, "nearest", "relu", True)}
    dtypes = [torch.float16, torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32]
    out = []
    for name, (shape, scale, mode, act, cond) in shapes.items():
        args = dict(scale=scale, mode=mode, norm="batch", act=act, alpha=0.2, gain=1.0)
        impls = {f"vkernels-{i}": _impl(i, args) for i in vkernels_impls("upsample_norm_act", device)}
        for dtype in dtypes:
            N, C, H, W = shape
            x = torch.randn(shape, device=device).to(dtype)
            w = torch.rand(C, device=device) + 0.5
            b = torch.randn(C, device=device)
            ss = torch.rand(N, C, device=device) + 0.5 if cond else None
            sb = torch.randn(N, C, device=device) if cond else None
            floor = torch.empty((N, C, H * scale, W * scale), device=device, dtype=dtype).normal_()
            out_elems = floor.numel()
            out.append(Case(op="upsample_norm_act", size=name + "-" + "x".join(map(str, shape)), dtype=dtype,
                            inputs=(x, w, b, ss, sb, floor), reference=_reference(args), impls=impls,
                            bytes=2 * x.nbytes + floor.nbytes, flops=(10 if mode == "bilinear" else 4) * out_elems,
                            bound="memory", clone_of=5))
            if cond or dtype != dtypes[-1] and device == "cpu":
                continue
            # Training: forward + backward w.r.t. x, weight, bias (the fused backward kernels: apply backward
            # reads dy and x, writes dx; stats backward reads x, writes dx). Bytes: forward's + dy read + x read
            # twice + dx written twice + their sum.
            bw = {k: fwd_bwd(f, (0, 1, 2)) for k, f in impls.items()}
            out.append(Case(op="upsample_norm_act", size=name + "-fwdbwd-" + "x".join(map(str, shape)), dtype=dtype,
                            inputs=(x, w, b, ss, sb, floor), reference=fwd_bwd(_reference(args), (0, 1, 2)),
                            impls=bw, bytes=5 * x.nbytes + 2 * floor.nbytes + 3 * x.nbytes,
                            flops=(30 if mode == "bilinear" else 12) * out_elems, bound="memory", clone_of=5,
                            loose=_LOOSE))
    return out



# Weight/bias/gamma gradients are sums over N*H*W terms: compiled and fused backends sum them in other orders (fp32
# eager and compile disagree by ~1e-5 of the largest value themselves), so fwd+bwd cases compare at 1e-4.
_LOOSE = {"compile": 1e-4, "vkernels-cpu": 1e-4, "vkernels-triton": 1e-4, "vkernels-cuda": 1e-4}


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: (N, C, H, W), scale, mode, channels_last
NORM_ACT_CASES = {
    "nearest2": ((2, 5, 7, 6), 2, "nearest", False),
    "bilinear3_cl": ((3, 4, 5, 9), 3, "bilinear", True),
    "nearest2_3d": ((2, 3, 3, 4, 5), 2, "nearest", False),
    "trilinear2_cl3d": ((2, 3, 2, 3, 4), 2, "trilinear", True),
}


def smoke_upsample_norm_act(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    from vkernels.reference.upsample_norm_act import act_gain_clamp, upsample

    sfx = {"cuda": "", "cpu": "", "triton": "_triton"}
    for impl, dtype, dn, name, (shape, s, mode, cl), g in ctx.variants("upsample_norm_act", NORM_ACT_CASES,
                                                                      lambda name, dn: dn == "float32"):
        ct = acc_dtype(dtype)
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
            yield SmokeCase(f"upsample_norm_act_stats/{impl}/{dn}/{name}/{per_sample}",
                            "upsample_norm_act_stats" + sfx[impl], (xd, s, mode, per_sample), (mean, var),
                            TOL_NAMES[dn], 4.0)
        m, a, b = (torch.randn(N, C, generator=g, dtype=torch.float64) for _ in range(3))
        nc = (N, C) + (1,) * len(sp)
        z = (u - m.view(nc)) * a.view(nc) + b.view(nc)
        expect = act_gain_clamp(z, "lrelu", 0.2, 1.4, 3.0)
        args = (xd, *(t.to(device=ctx.device, dtype=ct) for t in (m, a, b)), s, mode, "lrelu", 0.2, 1.4, 3.0)
        yield SmokeCase(f"upsample_norm_act/{impl}/{dn}/{name}", "upsample_norm_act" + sfx[impl], args, expect,
                        TOL_NAMES[dn], 4.0)
        # Fused backward ops against their differentiable composites (fp64).
        from vkernels.ops.upsample_norm_act import apply_backward_composite, stats_backward_composite
        dy = torch.randn(N, C, *(d * s for d in shape[2:]), generator=g, dtype=torch.float64).to(dtype)
        dyd = dy.to(ctx.device)
        if cl:
            dyd = dyd.contiguous(memory_format=fmt)
        bargs = (s, mode, "lrelu", 0.2, 1.4, 3.0, [True] * 4)
        bexp = apply_backward_composite(dy.double(), x.double(), m, a, b, *bargs)
        yield SmokeCase(f"upsample_norm_act_backward/{impl}/{dn}/{name}",
                        "upsample_norm_act_backward" + sfx[impl],
                        (dyd, xd, *args[1:4], *bargs), bexp, TOL_NAMES[dn], 16.0)
        gm, gv, mn = (torch.randn(C, generator=g, dtype=torch.float64) for _ in range(3))
        sexp = stats_backward_composite(gm, gv, x.double(), mn, s, mode, False)
        yield SmokeCase(f"upsample_norm_act_stats_backward/{impl}/{dn}/{name}",
                        "upsample_norm_act_stats_backward" + sfx[impl],
                        (*(t.to(ctx.device, ct) for t in (gm, gv)), xd, mn.to(ctx.device, ct), s, mode, False),
                        sexp, TOL_NAMES[dn], 16.0)
