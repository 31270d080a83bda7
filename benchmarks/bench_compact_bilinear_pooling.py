"""compact_bilinear_pooling cases: sum-pooled Tensor Sketch of CNN features, B x C x H x W -> B x D.

Compute-bound: the Gram GEMM, 2 B HW C^2 FLOPs (forward), 4 B HW C^2 more for the backward; the rest is O(B (C^2 +
D)). Providers: "eager" and "compile" run the best plain-PyTorch formulation (Gram by bmm, then a signed index_add
of G into D bins: vkernels.reference); "eager-freq": the plain-PyTorch frequency-pooled route (chunked count sketches,
rfft, spectrum products summed, one irfft); "vkernels-<impl>" (route="auto") and "vkernels-<impl>-gram" /
"vkernels-<impl>-freq" (each route forced: the measurement behind the auto choice); "port-fft": the per-location FFT
algorithm of the popular ports (per_location_fft_cbp below). "floor-gemm" times the Gram GEMM(s) alone.
"""
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls, fwd_bwd
from benchmarks._pooling import random_signs, seeded_feature_maps
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling as _reference
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling_freq as _reference_freq


def per_location_fft_cbp(x, y, h1, s1, h2, s2, output_dim):
    """What gdlg/pytorch_compact_bilinear_pooling, DeepInsight-PCALab/CompactBilinearPooling-Pytorch and the
    TensorFlow port compute, re-implemented step by step: move channels last, count-sketch every location by a scatter
    (index_add) of the signed channels into D bins, rfft every location's sketch, multiply the two spectra, irfft
    (n = D), and only then sum over locations. Memory: several (B, H, W, D) real and (B, H, W, D/2+1) complex
    tensors, kept for the backward too."""
    B, C1, H, W = x.shape
    xl = x.permute(0, 2, 3, 1).reshape(-1, C1)  # (B H W, C1)
    yl = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
    sk1 = xl.new_zeros(xl.shape[0], output_dim).index_add_(1, h1, xl * s1.to(xl.dtype))
    sk2 = yl.new_zeros(yl.shape[0], output_dim).index_add_(1, h2, yl * s2.to(yl.dtype))
    f1 = torch.fft.rfft(sk1, dim=1)
    f2 = torch.fft.rfft(sk2, dim=1)
    ts = torch.fft.irfft(f1 * f2, n=output_dim, dim=1)
    return ts.view(B, H, W, output_dim).sum((1, 2))


def _impl(impl, route="auto"):
    def fn(x, y, h1, s1, h2, s2, d):
        return vkernels.compact_bilinear_pooling(x, y, h1, s1, h2, s2, d, impl=impl, route=route)
    return fn


def _gemm_floor(x, y, *rest):
    X = x.flatten(2)
    return torch.bmm(X, X.transpose(1, 2))


def _gemm_floor_fwd_bwd(x, y, *rest):
    # Forward G = X X^T, backward dX = dG X + dG^T X (one GEMM each): what any Gram-route method must do.
    X = x.flatten(2)
    G = torch.bmm(X, X.transpose(1, 2))
    return G, torch.bmm(G, X) + torch.bmm(G.transpose(1, 2), X)


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        sizes = [(2, 64, 7, 7, 1000)]
    elif device == "cuda":  # the sizes
        sizes = [(32, 512, 28, 28, 8192), (32, 512, 28, 28, 16000), (32, 2048, 14, 14, 8192)]
    else:  # B = 8 on a 2-core CPU: the per-location port needs ~1.5 GB per call at B = 8 (x4 at B = 32)
        sizes = [(8, 512, 28, 28, 8192), (8, 512, 28, 28, 16000), (8, 2048, 14, 14, 8192)]
    dtype = torch.float32
    impls = vkernels_impls("compact_bilinear_pooling", device)
    out = []
    for (B, C, H, W, D), g, x in seeded_feature_maps(sizes, device, dtype):
        h1 = torch.randint(0, D, (C,), generator=g).to(device)
        h2 = torch.randint(0, D, (C,), generator=g).to(device)
        s1, s2 = random_signs((C,), g, device), random_signs((C,), g, device)
        inputs = (x, x, h1, s1, h2, s2, D)  # y is x: the usual CBP head
        size = f"{B}x{C}x{H}x{W}-D{D}"
        gemm = 2 * B * H * W * C * C
        nbytes = x.numel() * x.element_size()
        for mode in ("fwd", "fwd+bwd"):
            wrap = (fwd_bwd) if mode == "fwd+bwd" else (lambda f: f)
            provs = {f"vkernels-{i}": wrap(_impl(i)) for i in impls}
            provs.update({f"vkernels-{i}-{r}": wrap(_impl(i, r)) for i in impls for r in ("gram", "freq")})
            provs["eager-freq"] = wrap(_reference_freq)
            provs["port-fft"] = wrap(per_location_fft_cbp)
            flops = gemm * (3 if mode == "fwd+bwd" else 1)
            out.append(Case(op="compact_bilinear_pooling", size=f"{size}-{mode}", dtype=dtype, inputs=inputs,
                            reference=wrap(_reference), impls=provs, bytes=nbytes * (3 if mode == "fwd+bwd" else 1),
                            flops=flops, bound="compute",
                            floor=_gemm_floor_fwd_bwd if mode == "fwd+bwd" else _gemm_floor,
                            # fp32 FFTs (per location, or rfft/irfft of summed spectra): ~1e-5 of the largest entry
                            loose={"port-fft": 1e-4, "eager-freq": 1e-4,
                                   **{f"vkernels-{i}{r}": 1e-4 for i in impls for r in ("", "-freq")}}))
    return out


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: (B, C1, C2, H, W, D, channels_last)
CBP_CASES = {
    "small": (2, 5, 7, 3, 4, 11, False),  # odd D, C1 != C2, H != W; B below the CPU thread count
    "batch": (9, 33, 20, 5, 3, 100, True),  # D not a power of two, channels_last, several bin blocks
}


def smoke_compact_bilinear_pooling(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    from vkernels.reference.compact_bilinear_pooling import tensor_sketch_per_location as definition

    for impl, dtype, dn, name, (B, C1, C2, H, W, D, cl), g in ctx.variants(
            "cbp", CBP_CASES, lambda name, dn: dn == "float32", impls=("cpu", "triton")):  # no CUDA C++ kernel
        x = torch.randn(B, C1, H, W, generator=g, dtype=torch.float64).to(dtype)
        y = torch.randn(B, C2, H, W, generator=g, dtype=torch.float64).to(dtype)
        h1, h2 = torch.randint(0, D, (C1,), generator=g), torch.randint(0, D, (C2,), generator=g)
        s1 = (2 * torch.randint(0, 2, (C1,), generator=g) - 1).float()
        s2 = (2 * torch.randint(0, 2, (C2,), generator=g) - 1).float()
        x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
        out = definition(x64, y64, h1, s1, h2, s2, D)
        gout = torch.randn(B, D, generator=g, dtype=torch.float64)
        dx, dy = torch.autograd.grad((out * gout).sum(), [x64, y64])
        xd, yd = x.to(ctx.device), y.to(ctx.device)
        if cl:
            xd, yd = xd.to(memory_format=torch.channels_last), yd.to(memory_format=torch.channels_last)
        hs = tuple(t.to(ctx.device) for t in (h1, s1, h2, s2))
        tol = TOL_NAMES[dn] * 10  # sums of C1 C2 HW / D products per bin, not one rounded element
        sfx = "_triton" if impl == "triton" else ""
        for route in ("", "_freq"):  # the Gram and frequency routes, on the same inputs
            yield SmokeCase(f"compact_bilinear_pooling{route}/{impl}/{dn}/{name}/fwd",
                            f"compact_bilinear_pooling{route}{sfx}", (xd, yd, *hs, D), out.detach(), tol,
                            max(1.0, float(out.abs().max())))
            yield SmokeCase(f"compact_bilinear_pooling{route}/{impl}/{dn}/{name}/bwd",
                            f"compact_bilinear_pooling{route}_backward{sfx}",
                            (gout.to(device=ctx.device, dtype=dtype), xd, yd, *hs), (dx, dy), tol,
                            max(1.0, float(dx.abs().max()), float(dy.abs().max())))
