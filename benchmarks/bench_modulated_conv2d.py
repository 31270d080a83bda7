"""modulated_conv2d cases at StyleGAN2 256^2 layer sizes (C=512 -> 256, 32^2 -> 64^2 with up=2, and 64^2 -> 128^2).

"epilogue-*": the post-convolution pass alone on the conv output (N, O, H, W): demodulation scale per (n, o),
    noise (N, 1, H, W) * strength, bias, lrelu * sqrt(2), clamp 256 (non-fused path). Memory-bound: reads x and the
    noise (1/O of x), writes y; ~7 FLOPs per element. Eager reference: x * d + noise * s, then bias_act.
"layer-*": the whole layer (modulation, grouped transposed conv, FIR, epilogue), ours vs the eager reference;
    compute-bound by the convolution (2 * N * O * I * 9 * H_in * W_in * 4 FLOPs for up=2 via conv_transpose).
CPU sizes use a smaller batch so that the eager reference stays well under a second per call.
"""
import math
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, raw_ops

EPI = dict(act="lrelu", alpha=0.2, gain=math.sqrt(2), clamp=256.0)


def _epi_reference(x, d, noise, ns, b):
    y = x * d[:, :, None, None] + noise * ns
    return vkernels.reference.bias_act(y, b, 1, EPI["act"], EPI["alpha"], EPI["gain"], EPI["clamp"])


def _epi_impl(impl):
    op = torch.ops.vkernels.modulated_conv2d_epilogue_triton if impl == "triton" else \
        torch.ops.vkernels.modulated_conv2d_epilogue

    def fn(x, d, noise, ns, b):
        return op(x, d, noise, ns, b, EPI["act"], EPI["alpha"], EPI["gain"], EPI["clamp"])
    return fn


def _layer_reference(x, weight, styles, noise, ns, b, f):
    return vkernels.reference.modulated_conv2d(x, weight, styles, up=2, padding=1, resample_filter=f,
                                               flip_weight=False, noise=noise, noise_strength=ns, bias=b,
                                               act="lrelu", clamp=256.0)


def _layer_impl(impl):
    def fn(x, weight, styles, noise, ns, b, f):
        return vkernels.modulated_conv2d(x, weight, styles, up=2, resample_filter=f, flip_weight=False, noise=noise,
                                         noise_strength=ns, bias=b, act="lrelu", clamp=256.0, impl=impl)
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        epi = [(2, 16, 16, 16)]
        layers = [(2, 16, 8, 8, 8)]
    elif device == "cuda":
        epi = [(32, 256, 64, 64), (32, 256, 128, 128)]
        layers = [(32, 512, 256, 32, 32), (32, 256, 256, 64, 64)]
    else:
        epi = [(8, 256, 64, 64), (4, 256, 128, 128)]
        layers = [(2, 512, 256, 32, 32), (2, 256, 256, 64, 64)]
    dtypes = [torch.float16, torch.bfloat16] if device == "cuda" else [torch.float32]
    out = []
    eimpls = {f"vkernels-{i}": _epi_impl(i) for i in vkernels_impls("modulated_conv2d_epilogue", device)}
    limpls = {f"vkernels-{i}": _layer_impl(i) for i in vkernels_impls("modulated_conv2d_epilogue", device)}
    f = vkernels.setup_filter([1, 3, 3, 1], device=device)
    for shape in epi:
        n, o, h, w = shape
        for dtype in dtypes:
            x = (torch.randn(shape, device=device) * 64).to(dtype)
            d = torch.rand(n, o, device=device).add(0.5).to(dtype)
            noise = torch.randn(n, 1, h, w, device=device).to(dtype)
            ns = torch.tensor(0.3, device=device)
            b = torch.randn(o, device=device).to(dtype)
            out.append(Case(op="modulated_conv2d", size="epilogue-" + "x".join(map(str, shape)), dtype=dtype,
                            inputs=(x, d, noise, ns, b), reference=_epi_reference, impls=eimpls,
                            bytes=2 * x.nbytes + noise.nbytes, flops=7 * x.numel(), bound="memory"))
    for n, i, o, h, w in layers:
        for dtype in dtypes:
            x = torch.randn(n, i, h, w, device=device).to(dtype)
            weight = torch.randn(o, i, 3, 3, device=device)
            styles = torch.randn(n, i, device=device) + 1
            noise = torch.randn(n, 1, 2 * h, 2 * w, device=device).to(dtype)
            ns = torch.tensor(0.3, device=device)
            b = torch.randn(o, device=device).to(dtype)
            ybytes = n * o * 4 * h * w * x.element_size()
            out.append(Case(op="modulated_conv2d", size=f"layer-{n}x{i}x{h}x{w}-to-{o}x{2 * h}x{2 * w}", dtype=dtype,
                            inputs=(x, weight, styles, noise, ns, b, f), reference=_layer_reference, impls=limpls,
                            bytes=x.nbytes + ybytes + n * weight.nbytes, flops=2 * n * o * i * 9 * h * w * 4,
                            bound="compute",
                            # A 512 x 9-tap fp32 conv: inductor and our transposed-conv path sum in other orders
                            # (1.1e-5 absolute seen at 512 -> 256 channels against a fixed 1e-5 bound).
                            loose={p: 1e-5 for p in ("compile", *limpls)}))
    return out


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
def smoke_modulated_conv2d_weight(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    ops = raw_ops("modulated_conv2d_weight")
    for impl, dtype, dn, name, (N, O, I, k), g in ctx.variants("modconv_weight",
                                                               {"3x3": (3, 5, 7, 3), "1x1": (2, 3, 33, 1)}):
        w = torch.randn(O, I, k, k, generator=g, dtype=torch.float64).to(dtype)
        s = (torch.randn(N, I, generator=g, dtype=torch.float64) + 1).to(dtype)
        wm = w.double()[None] * s.double()[:, None, :, None, None]
        d = (wm.square().sum([2, 3, 4]) + 1e-8).rsqrt()
        args = (w.to(ctx.device), s.to(ctx.device), True, True)
        yield SmokeCase(f"modulated_conv2d_weight/{impl}/{dn}/{name}/fused", ops[impl], args,
                        (wm * d[:, :, None, None, None], d), TOL_NAMES[dn] * 4, max(1.0, float(d.max())))
        yield SmokeCase(f"modulated_conv2d_weight/{impl}/{dn}/{name}/dcoefs", ops[impl],
                        (w.to(ctx.device), s.to(ctx.device), True, False), d, TOL_NAMES[dn] * 4,
                        max(1.0, float(d.max())), select=lambda out: out[1])


def smoke_modulated_conv2d_epilogue(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    import math
    from vkernels.reference.bias_act import bias_act as ba_ref

    ops = raw_ops("modulated_conv2d_epilogue")
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
        yield SmokeCase(f"modulated_conv2d_epilogue/{impl}/{dn}/{name}/fwd", ops[impl], (*dev, *tail), y.detach(),
                        TOL_NAMES[dn] * 4, scale)
        bwd = ops[impl].replace("epilogue", "epilogue_backward")
        yield SmokeCase(f"modulated_conv2d_epilogue/{impl}/{dn}/{name}/bwd", bwd,
                        (gr.to(ctx.device), *dev, *tail), dz, TOL_NAMES[dn] * 4,
                        max(1.0, float(dz.abs().max())))
