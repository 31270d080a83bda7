"""pixel_norm cases: StyleGAN2's mapping-network input (N=32, z=512) and ProGAN-style pixel norm of a feature map.

Memory-bound: x read (twice, the second usually from cache) and y written; ~3 FLOPs per element.
"""
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, place


def _reference(x):
    return vkernels.reference.pixel_norm(x, 1, 1e-8)


def _impl(impl):
    def fn(x):
        return vkernels.pixel_norm(x, 1, 1e-8, impl=impl)
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    # (shape, channels_last): StyleGAN2 mapping input, ProGAN-style feature maps (NCHW and channels_last).
    if quick:
        shapes = [((4, 64), False), ((2, 16, 8, 8), False), ((2, 16, 8, 8), True)]
    elif device == "cuda":
        shapes = [((32, 512), False), ((32, 512, 32, 32), False), ((32, 256, 64, 64), False),
                  ((32, 512, 32, 32), True)]
    else:
        shapes = [((32, 512), False), ((8, 512, 32, 32), False), ((32, 512, 32, 32), False),
                  ((8, 256, 64, 64), False), ((8, 512, 32, 32), True)]
    dtypes = [torch.float16, torch.bfloat16, torch.float32] if device == "cuda" else [torch.float32, torch.bfloat16]
    impls = {f"vkernels-{i}": _impl(i) for i in vkernels_impls("pixel_norm", device)}
    out = []
    for shape, cl in shapes:
        for dtype in dtypes:
            x = torch.randn(shape, device=device).to(dtype)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            size = "x".join(map(str, shape)) + ("-cl" if cl else "")
            out.append(Case(op="pixel_norm", size=size, dtype=dtype, inputs=(x,),
                            reference=_reference, impls=impls, bytes=2 * x.nbytes, flops=3 * x.numel(),
                            bound="memory"))
    return out


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: (shape, dim, placement)
PIXEL_NORM_CASES = {
    "latent": ((5, 37), 1, "contiguous"),  # the mapping network's input: C contiguous rows
    "fmap": ((2, 7, 5, 3), 1, "contiguous"),  # normalized over a strided dim
    "channels_last": ((2, 6, 5, 3), 1, "channels_last"),
    "misaligned": ((3, 9, 7), -1, "offset1"),
}


def smoke_pixel_norm(ctx: SmokeCtx) -> Iterator[SmokeCase]:
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
                xd = place(x, placement, ctx.device, torch)
                yield SmokeCase(f"pixel_norm/{impl}/{dn}/{name}/fwd", ops[impl], (xd, dim, 1e-8), y64.detach(),
                                TOL_NAMES[dn], 2.0)
                bwd = ops[impl].replace("pixel_norm", "pixel_norm_backward")
                yield SmokeCase(f"pixel_norm/{impl}/{dn}/{name}/bwd", bwd, (place(gr, placement, ctx.device, torch), xd,
                                                                           dim, 1e-8), dx64, TOL_NAMES[dn] * 4,
                                max(1.0, float(dx64.abs().max())))
