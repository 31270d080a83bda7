"""spade_norm_act cases: SPADE ResBlk normalization, batch norm (train mode) * (1 + gamma) + beta -> lrelu.

Memory-bound: reads x, gamma and beta, writes out; ~6 FLOPs per element. On CPU the training forward is one op
(spade_norm_act_train) that normalises each channel while it is still cached, so x comes from DRAM once;
"vkernels-cpu-twoop" is the earlier two-op path (statistics pass, then apply pass: x read twice) in the same run.
Floor: x.clone() (allocate and write one x-sized tensor).
"""
import importlib
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, fwd_bwd, vkernels_impls
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES
from vkernels._dtypes import acc_dtype

ARGS = dict(norm="batch", act="lrelu", alpha=0.2, gain=1.0)


def _reference(x, g, b):
    return vkernels.reference.spade_norm_act(x, g, b, **ARGS)


def _impl(impl):
    def fn(x, g, b):
        return vkernels.spade_norm_act(x, g, b, **ARGS, impl=impl)
    return fn


def _two_op():
    mod = importlib.import_module("vkernels.ops.spade_norm_act")  # vkernels.ops.spade_norm_act is the function

    def fn(x, g, b):
        mod.FUSED_TRAIN = False
        try:
            return vkernels.spade_norm_act(x, g, b, **ARGS, impl="cpu")
        finally:
            mod.FUSED_TRAIN = True
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    # SPADE generator at 256x256 (ngf=64): 1024 channels at 16^2 ... 128 channels at 128^2; batch 8.
    shapes = [(2, 16, 8, 8)] if quick else [(8, 256, 64, 64), (8, 128, 128, 128)]
    dtypes = [torch.float16, torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32]
    impls = {f"vkernels-{i}": _impl(i) for i in vkernels_impls("spade_norm_act", device)}
    if "vkernels-cpu" in impls:
        impls["vkernels-cpu-twoop"] = _two_op()
    out = []
    for shape in shapes:
        for dtype in dtypes:
            x = torch.randn(shape, device=device).to(dtype)
            g = (torch.randn(shape, device=device) * 0.3).to(dtype)
            b = (torch.randn(shape, device=device) * 0.3).to(dtype)
            out.append(Case(op="spade_norm_act", size="x".join(map(str, shape)), dtype=dtype, inputs=(x, g, b),
                            reference=_reference, impls=impls, bytes=5 * x.nbytes, flops=6 * x.numel(),
                            bound="memory"))
            if shape[-1] == 128:
                continue
            # Training: forward + backward w.r.t. x, gamma, beta (fused spade backward: reads dy, x, gamma, beta,
            # writes dx, dgamma, dbeta; stats backward reads x, writes dx; plus the dx sum).
            out.append(Case(op="spade_norm_act", size="fwdbwd-" + "x".join(map(str, shape)), dtype=dtype,
                            inputs=(x, g, b), reference=fwd_bwd(_reference, (0, 1, 2)),
                            impls={k: fwd_bwd(f, (0, 1, 2)) for k, f in impls.items()}, bytes=16 * x.nbytes,
                            flops=20 * x.numel(), bound="memory",
                            loose=_LOOSE))
    return out



# Weight/bias/gamma gradients are sums over N*H*W terms: compiled and fused backends sum them in other orders (fp32
# eager and compile disagree by ~1e-5 of the largest value themselves), so fwd+bwd cases compare at 1e-4.
_LOOSE = {"compile": 1e-4, "vkernels-cpu": 1e-4, "vkernels-cpu-twoop": 1e-4, "vkernels-triton": 1e-4,
          "vkernels-cuda": 1e-4}


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: (N, C, H, W), channels_last
SPADE_SMOKE_CASES = {
    "nearest2": ((2, 5, 7, 6), False),
    "bilinear3_cl": ((3, 4, 5, 9), True),
}


def smoke_spade_norm_act(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    from vkernels.reference.upsample_norm_act import act_gain_clamp

    sfx = {"cuda": "", "cpu": "", "triton": "_triton"}
    for impl, dtype, dn, name, (shape, cl), g in ctx.variants("spade_norm_act", SPADE_SMOKE_CASES,
                                                             lambda name, dn: dn == "float32"):
        ct = acc_dtype(dtype)
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
        yield SmokeCase(f"spade_norm_act/{impl}/{dn}/{name}", "spade_norm_act" + sfx[impl], args, expect,
                        TOL_NAMES[dn], 8.0)
        from vkernels.ops.spade_norm_act import backward_composite
        dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        dyd = dy.to(ctx.device)
        if cl:
            dyd = dyd.contiguous(memory_format=torch.channels_last)
        bexp = backward_composite(dy.double(), x.double(), m, r, gm.double(), bt.double(), "tanh", 0.2, 1.3,
                                  1.0, [True] * 5)
        yield SmokeCase(f"spade_norm_act_backward/{impl}/{dn}/{name}", "spade_norm_act_backward" + sfx[impl],
                        (dyd, *args[:5], *args[5:], [True] * 5), bexp, TOL_NAMES[dn], 16.0)
        if impl != "cpu":  # the fused training forward has only a CPU kernel
            continue
        for per_sample in (False, True):  # (2, 5, ...): 5 groups -> two-pass fallback, 10 -> fused
            var, mean = torch.var_mean(x.double(), (2, 3) if per_sample else (0, 2, 3), correction=0)
            rstd = torch.rsqrt(var + 1e-5)
            mb, rb = (t if per_sample else t.expand(N, C) for t in (mean, rstd))
            z = (x.double() - mb[:, :, None, None]) * rb[:, :, None, None] * (1 + gm.double()) + bt.double()
            texp = (act_gain_clamp(z, "tanh", 0.2, 1.3, 1.0), mean, var, rstd)
            yield SmokeCase(f"spade_norm_act_train/{impl}/{dn}/{name}/{per_sample}", "spade_norm_act_train",
                            (xd, gm.to(ctx.device), bt.to(ctx.device), per_sample, 1e-5, "tanh", 0.2, 1.3, 1.0),
                            texp, TOL_NAMES[dn], 8.0)
