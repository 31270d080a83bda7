"""pixel_norm cases: StyleGAN2's mapping-network input (N=32, z=512) and ProGAN-style pixel norm of a feature map.

Memory-bound: x read (twice, the second usually from cache) and y written; ~3 FLOPs per element.
"""
import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls


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
