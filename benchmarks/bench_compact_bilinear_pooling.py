"""compact_bilinear_pooling cases: sum-pooled Tensor Sketch of CNN features, B x C x H x W -> B x D.

Compute-bound: the Gram GEMM, 2 B HW C^2 FLOPs (forward), 4 B HW C^2 more for the backward; the rest is O(B (C^2 +
D)). Providers: "eager" and "compile" run the best plain-PyTorch formulation (Gram by bmm, then a signed index_add
of G into D bins: vkernels.reference); "eager-freq": the plain-PyTorch frequency-pooled route (chunked count sketches,
rfft, spectrum products summed, one irfft); "vkernels-<impl>" (route="auto") and "vkernels-<impl>-gram" /
"vkernels-<impl>-freq" (each route forced: the measurement behind the auto choice); "port-fft": the per-location FFT algorithm of the popular
ports (benchmarks/cbp_per_location_port.py). A separate case "...-gemm-floor" times the Gram GEMM(s) alone (its
reference is the bmm): the floor the issue's 1.3x target is measured against.
"""
import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls, fwd_bwd
from benchmarks.cbp_per_location_port import per_location_fft_cbp
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling as _reference
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling_freq as _reference_freq


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
    for B, C, H, W, D in sizes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, H, W, generator=g).relu().to(device=device, dtype=dtype)  # post-ReLU features
        h1 = torch.randint(0, D, (C,), generator=g).to(device)
        h2 = torch.randint(0, D, (C,), generator=g).to(device)
        s1 = (2 * torch.randint(0, 2, (C,), generator=g) - 1).float().to(device)
        s2 = (2 * torch.randint(0, 2, (C,), generator=g) - 1).float().to(device)
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
                            flops=flops, bound="compute", clone_of=0,
                            targets=[(f"vkernels-{i}", "speedup_vs_compile", ">=", 1.2) for i in impls],
                            loose={"port-fft": 1e-4, "eager-freq": 1e-4,  # fp32 FFTs: ~1e-5 of the largest entry
                                   **{f"vkernels-{i}{r}": 1e-4 for i in impls for r in ("", "-freq")}}))  # fp32 rfft/irfft per location: ~1e-5 of the largest entry
            out.append(Case(op="compact_bilinear_pooling", size=f"{size}-{mode}-gemm-floor", dtype=dtype,
                            inputs=inputs, reference=_gemm_floor_fwd_bwd if mode == "fwd+bwd" else _gemm_floor,
                            impls={}, bytes=nbytes, flops=flops, bound="compute", clone_of=0))
    return out
