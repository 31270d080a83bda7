"""bias_act cases: StyleGAN2's layer epilogue, y = clamp(lrelu(x + b) * sqrt(2), -256, 256), b along channels.

Memory-bound: one call reads x and writes y (the C-length bias is negligible), ~5 FLOPs per element.
"""
import math

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls

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
