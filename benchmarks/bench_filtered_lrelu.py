"""filtered_lrelu cases: StyleGAN3's synthesis-layer nonlinearity (bias, 2x up with a 12-tap separable low-pass,
leaky ReLU * sqrt(2), clamp 256, 12-tap low-pass, 2x down) at 64^2 feature maps with StyleGAN3's 10-pixel margin
(x 74x74 -> y 74x74, mid 158x158 per plane: the upsampled samples the down filter reads).

Work counted (polyphase, separable 12-tap filters): the up filter costs 12/2 MACs per mid column of each input row
plus 12/2 per mid sample (half of the taps land on inserted zeros), the down filter 12 MACs per kept column of each
mid row plus 12 per output pixel: ~78 MACs per output pixel at 74x74 (425,952 MACs per plane; no separable order
needs fewer, the activation between the filters forces the 158x158 mid plane). The case is compute-bound: its
achieved rate is the tflops column of results.csv (flops = 2 x those MACs) and frac_matmul its fraction of the
machine's measured matmul rate (the ceiling-matmul row).
Bytes: x read once, y written once (the 2-bit mask is only written when a gradient is wanted, not in these
forward-only cases). The floor is allocating and writing an output-sized tensor (x.clone() of the third input, which has y's shape).
"""
import math
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, place, raw_ops

PAD = (10, 11, 10, 11)  # (74*2 + 21 - 11 - 11 + 1) // 2 = 74


def _lowpass(device):
    # A 12-tap windowed-sinc low-pass (cutoff at the input Nyquist), normalised: the shape of StyleGAN3's filters.
    n = torch.arange(12, dtype=torch.float64) - 5.5
    f = torch.sinc(n / 2) * torch.hann_window(14, periodic=False, dtype=torch.float64)[1:-1]
    return (f / f.sum()).float().to(device)


def _reference(x, fu, fd, b, _floor):
    return vkernels.filtered_lrelu(x, fu, fd, b, 2, 2, PAD, math.sqrt(2), 0.2, 256, impl="reference")


def _impl(impl):
    def fn(x, fu, fd, b, _floor):
        return vkernels.filtered_lrelu(x, fu, fd, b, 2, 2, PAD, math.sqrt(2), 0.2, 256, impl=impl)
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        shapes = [((2, 16, 20, 20), False)]
    elif device == "cuda":
        shapes = [((32, 512, 74, 74), False), ((32, 256, 74, 74), False), ((32, 256, 74, 74), True)]
    else:  # the same layer at a batch the eager reference runs in about a second
        shapes = [((8, 256, 74, 74), False), ((8, 256, 74, 74), True)]
    dtypes = [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float32]
    fu = fd = _lowpass(device)
    out = []
    for shape, channels_last in shapes:
        impls = {f"vkernels-{i}": _impl(i) for i in vkernels_impls("filtered_lrelu", device)}
        n, c, h, w = shape
        oh, ow = (h * 2 + PAD[2] + PAD[3] - 22 + 1) // 2, (w * 2 + PAD[0] + PAD[1] - 22 + 1) // 2
        mid = (oh - 1) * 2 + 12
        for dtype in dtypes:
            x = torch.randn(shape, device=device).to(dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            b = torch.randn(c, device=device).to(dtype)
            floor = torch.empty((n, c, oh, ow), device=device, dtype=dtype)
            # polyphase up (6 of 12 taps per phase): horizontal on the input rows, vertical on the mid rows; down: 12
            # taps per kept column of each mid row, then 12 per output pixel
            macs = 6 * h * mid + 6 * mid * mid + 12 * mid * ow + 12 * oh * ow
            out.append(Case(op="filtered_lrelu", size="x".join(map(str, shape)) + ("-cl" if channels_last else ""),
                            dtype=dtype, inputs=(x, fu, fd, b, floor), reference=_reference, impls=impls,
                            bytes=x.nbytes + floor.nbytes, flops=int(2 * macs * n * c), bound="compute",
                            clone_of=4))
    return out


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: (shape, fu, fd, up, down, padding, clamp, placement); a filter is 1-D taps (int) or a 2-D shape (tuple)
FILTERED_LRELU_CASES = {
    "sg3_up2_down2": ((2, 3, 6, 7), 6, 6, 2, 2, (5, 4, 5, 4), 0.5, "contiguous"),
    "full2d_crop": ((1, 4, 5, 6), (3, 4), (2, 3), 2, 1, (1, -1, 2, 0), None, "contiguous"),
    "up4_channels_last": ((2, 5, 4, 5), 5, 3, 4, 2, (2, 3, 1, 2), 1.0, "channels_last"),
    "misaligned": ((1, 3, 6, 6), 3, 4, 1, 2, (1, 2, 2, 1), None, "offset1"),
}


def smoke_filtered_lrelu(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    """The forward (y; the mask is checked through the gradient) and the masked op that is its gradient."""
    torch = ctx.torch
    from vkernels.ops.filtered_lrelu import _geometry, _transpose
    from vkernels.reference.filtered_lrelu import filtered_lrelu as reference

    fwds, grads = raw_ops("filtered_lrelu"), raw_ops("filtered_lrelu_masked")
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
        args = (place(x, placement, ctx.device, torch), fu.to(ctx.device), fd.to(ctx.device),
                b.to(ctx.device), up, down, *pad, gain, slope, clamp, False, True)
        scale = max(1.0, float(expect.abs().max()))
        yield SmokeCase(f"filtered_lrelu/{impl}/{dn}/{name}/fwd", fwd, args, expect.detach(), TOL_NAMES[dn],
                        scale, select=lambda out: out[0])

        def bwd_args(fwd_op=getattr(torch.ops.vkernels, fwd), args=args, fu=fu, fd=fd, up=up, down=down,
                     pad=pad, dy=dy, oshape=tuple(expect.shape), shape=shape):
            _, mask = fwd_op(*args)
            (_, mw), _ = _geometry(shape[3], shape[2], fu, fd, up, down, pad)
            t = _transpose(fu, fd, mw, 0, 0, up, down, pad, float(up * up), 1.0, False, shape[2:],
                           oshape[2:])
            return (dy.to(ctx.device), t[0].to(ctx.device), t[1].to(ctx.device), mask, *t[2:13], gain,
                    slope, t[13])

        yield SmokeCase(f"filtered_lrelu/{impl}/{dn}/{name}/grad", grads[impl], bwd_args,
                        dx, TOL_NAMES[dn] * 4, max(1.0, float(dx.abs().max())))
