"""upfirdn2d cases: StyleGAN2's resampling at 256^2 (batch 32), the [1, 3, 3, 1] filter made 2-D by setup_filter.

upsample2d (2x, what the synthesis network's up layers and ToRGB skips do) and downsample2d (2x, the
discriminator's). Polyphase cost: an upsample output needs 4x4/(2*2) = 4 MACs, a downsample output 16 MACs.
Bytes: x read once, out written once. The clone floor is a clone of the larger of x and out: the third input is
an output-sized tensor used only for that (upsampling cannot beat allocating and writing out; downsampling cannot
beat reading x, and a clone of x reads it once and writes a tensor of its size).
"""
import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls


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
