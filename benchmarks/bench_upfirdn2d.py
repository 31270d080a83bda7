"""upfirdn2d cases: StyleGAN2's resampling at 256^2 (batch 32), the [1, 3, 3, 1] filter made 2-D by setup_filter.

upsample2d (2x, what the synthesis network's up layers and ToRGB skips do) and downsample2d (2x, the
discriminator's). Polyphase cost: an upsample output needs 4x4/(2*2) = 4 MACs, a downsample output 16 MACs.
Bytes: x read once, out written once. The clone floor is a clone of the larger of x and out: the third input is
an output-sized tensor used only for that (upsampling cannot beat allocating and writing out; downsampling cannot
beat reading x, and a clone of x reads it once and writes a tensor of its size).
"""
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, place, raw_ops


def _reference(kind):
    def fn(x, f, _floor):
        if kind == "up":
            return vkernels.upsample2d(x, f, impl="reference")
        return vkernels.downsample2d(x, f, impl="reference")
    return fn


def _impl(kind, impl):
    def fn(x, f, _floor):
        if kind == "up":
            return vkernels.upsample2d(x, f, impl=impl)
        return vkernels.downsample2d(x, f, impl=impl)
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    # (kind, (N, C, H, W) of x, channels_last). GPU: the real StyleGAN2 256^2 shapes at batch 32. CPU: the same
    # layers at a smaller batch, so that the eager reference runs in well under a second.
    if quick:
        shapes = [("up", (2, 32, 16, 16), False), ("down", (2, 32, 16, 16), False)]
    elif device == "cuda":
        shapes = [("up", (32, 512, 32, 32), False), ("up", (32, 256, 64, 64), False),
                  ("up", (32, 256, 64, 64), True), ("down", (32, 256, 128, 128), False)]
    else:
        shapes = [("up", (8, 512, 32, 32), False), ("up", (4, 256, 64, 64), False),
                  ("up", (4, 256, 64, 64), True), ("down", (4, 256, 128, 128), False)]
    dtypes = [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float32]
    f = vkernels.setup_filter([1, 3, 3, 1], device=device)
    out = []
    for kind, shape, channels_last in shapes:
        impls = {f"vkernels-{i}": _impl(kind, i) for i in vkernels_impls("upfirdn2d", device)}
        for dtype in dtypes:
            x = torch.randn(shape, device=device).to(dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            n, c, h, w = shape
            oh, ow = (2 * h, 2 * w) if kind == "up" else (h // 2, w // 2)
            floor = torch.empty((n, c, oh, ow), device=device, dtype=dtype)
            y_numel = n * c * oh * ow
            macs = 4 if kind == "up" else 16
            out.append(Case(op="upfirdn2d", size=f"{kind}-" + "x".join(map(str, shape)) + ("-cl" if channels_last else ""),
                            dtype=dtype, inputs=(x, f, floor), reference=_reference(kind), impls=impls,
                            bytes=x.nbytes + floor.nbytes, flops=2 * macs * y_numel, bound="memory", clone_of=2 if kind == "up" else 0))
    return out


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: (x shape (N, C, H, W), filter (1-D taps or 2-D shape), up (x, y), down (x, y), padding (x0, x1, y0, y1), layout)
UPFIRDN2D_CASES = {
    "up2_sep": ((2, 3, 9, 7), [1.0, 3.0, 3.0, 1.0], (2, 2), (1, 1), (2, 1, 2, 1), "contiguous"),
    "down2_sep": ((2, 3, 10, 13), [1.0, 3.0, 3.0, 1.0], (1, 1), (2, 2), (1, 1, 1, 1), "contiguous"),
    "full2d_crop": ((1, 5, 11, 6), (3, 4), (1, 3), (2, 1), (-1, 2, 3, -2), "contiguous"),
    "up2_channels_last": ((2, 6, 5, 4), [1.0, 2.0, 1.0], (2, 2), (1, 1), (1, 1, 1, 1), "channels_last"),
    "misaligned": ((1, 4, 6, 6), (2, 2), (2, 1), (1, 2), (0, 1, 1, 0), "offset1"),
}


def smoke_upfirdn2d(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    from vkernels.reference.upfirdn2d import upfirdn2d as reference

    ops = raw_ops("upfirdn2d")
    for impl, dtype, dn, name, (shape, filt, up, down, pad, placement), g in ctx.variants(
            "upfirdn2d", UPFIRDN2D_CASES, lambda name, dn: name in ("up2_sep", "full2d_crop")):
        x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        f = (torch.tensor(filt, dtype=torch.float32) if isinstance(filt, list)
             else torch.rand(filt, generator=g, dtype=torch.float64).float())
        expect = reference(x.double(), f, up, down, pad, False, 1.0)
        xd = place(x, placement, ctx.device, torch)
        args = (xd, f.to(ctx.device), *up, *down, *pad, False, 1.0)
        scale = max(1.0, float(expect.abs().max()))
        yield SmokeCase(f"upfirdn2d/{impl}/{dn}/{name}", ops[impl], args, expect, TOL_NAMES[dn], scale)
