"""random_maclaurin_pooling cases: sum-pooled degree-2 Random Maclaurin features of CNN features with themselves
(y is x, the usual fine-grained head), B x C x H x W -> B x D, w1, w2 Rademacher (D, C).

Compute-bound. Per image, gram route: 2 HW C^2 (G = X X^T) + 2 D C^2 (W1 G, the dominant GEMM) FLOPs; project
route: 4 HW D C. The backward doubles the dominant work (dG = W1^T diag(g) W2 is another D C^2 GEMM, then
dX = (dG + dG^T) X: 2 HW C^2). Providers: "eager" and "compile" run the best plain-PyTorch formulation of the route
vkernels' "auto" picks (gram: bmm, matmul W1 G, multiply by W2 and row-sum, which materialises B x D x C; project:
matmul W1 X and W2 X, multiply and row-sum over HW, which materialises 2 B x D x HW); "vkernels-<impl>";
"vkernels-<impl>-tiled" (project route, fwd+bwd: save_projections=False, the recomputing backward that runs past the
cap of saves_projections). "floor-gemm" times the dominant GEMM alone (gram: W1 @ [G_1 .. G_B] as one (D x C) @ (C x B C) GEMM with G given;
project: [W1; W2] @ [X_1 .. X_B], the two projections as one GEMM; fwd+bwd: that GEMM twice, the FLOPs of the
forward GEMM plus the backward's dG / dX GEMMs: with the projections saved (auto, within the cap of
saves_projections) the project route's fwd+bwd is exactly these two GEMMs plus O(B D HW) elementwise work).
"""


import math

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls, fwd_bwd
from vkernels.ops.random_maclaurin_pooling import choose_gram, saves_projections


def _plain(route):
    def fn(x, y, w1, w2):
        X, Y = x.flatten(2), y.flatten(2)
        if route == "gram":
            G = torch.bmm(X, Y.transpose(1, 2))
            out = (torch.matmul(w1, G) * w2).sum(-1)
        else:
            out = (torch.matmul(w1, X) * torch.matmul(w2, Y)).sum(-1)
        return out * (1.0 / math.sqrt(w1.shape[0]))
    return fn


def _impl(impl, route, save_projections=None):
    def fn(x, y, w1, w2):
        return vkernels.random_maclaurin_pooling(x, y, w1, w2, route=route, impl=impl,
                                                 save_projections=save_projections)
    return fn


def _floor(route, twice):
    def fn(x, y, w1, w2, G=None):
        B, C = x.shape[:2]
        if route == "gram":
            a, b = w1, G  # G: (C, B C), precomputed
        else:
            a, b = torch.cat([w1, w2]), x.flatten(2).transpose(0, 1).reshape(C, -1)
        out = torch.mm(a, b)
        return (out, torch.mm(a, b)) if twice else out
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        sizes = [(2, 64, 7, 7, 512)]
    elif device == "cuda":  # the sizes
        sizes = [(32, 512, 28, 28, 8192), (32, 512, 28, 28, 16000), (32, 2048, 14, 14, 8192)]
    else:  # a 2-core CPU: B = 8 (B = 2 at C = 2048): a B = 32 call takes 4-30 s there, and each case repeats it
        sizes = [(8, 512, 28, 28, 8192), (8, 512, 28, 28, 16000), (2, 2048, 14, 14, 8192)]
    dtype = torch.float32
    impls = vkernels_impls("random_maclaurin_pooling", device)
    out = []
    for B, C, H, W, D in sizes:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, C, H, W, generator=g).relu().to(device=device, dtype=dtype)  # post-ReLU features
        w1 = (2 * torch.randint(0, 2, (D, C), generator=g) - 1).float().to(device)
        w2 = (2 * torch.randint(0, 2, (D, C), generator=g) - 1).float().to(device)
        inputs = (x, x, w1, w2)
        nbytes = x.nbytes + w1.nbytes + w2.nbytes
        X = x.flatten(2)
        G = torch.bmm(X, X.transpose(1, 2)).transpose(0, 1).reshape(C, B * C).contiguous()
        for mode in ("fwd", "fwd+bwd"):
            # The route "auto" takes for this mode (the backward counts when x requires grad).
            bwd = mode == "fwd+bwd"
            route = "gram" if choose_gram(H * W, C, C, D, backward=bwd,
                                          saved=bwd and saves_projections(B, H * W, C, C, D, True)) else "project"
            size = f"{B}x{C}x{H}x{W}-D{D}-{route}"
            dom = 2 * B * D * C * C if route == "gram" else 4 * B * H * W * D * C
            flops_fwd = dom + (2 * B * H * W * C * C if route == "gram" else 0)
            wrap = (fwd_bwd) if mode == "fwd+bwd" else (lambda f: f)
            provs = {f"vkernels-{i}": wrap(_impl(i, "auto")) for i in impls}
            if bwd and route == "project":
                provs.update({f"vkernels-{i}-tiled": wrap(_impl(i, "project", False)) for i in impls})
            flops = flops_fwd * (2 if mode == "fwd+bwd" else 1)
            out.append(Case(op="random_maclaurin_pooling", size=f"{size}-{mode}", dtype=dtype, inputs=inputs,
                            reference=wrap(_plain(route)), impls=provs, bytes=nbytes, flops=flops, bound="compute",
                            floor=lambda x, y, u, v, fl=_floor(route, bwd), G=G: fl(x, y, u, v, G),
                            floor_flops=dom * (2 if bwd else 1),
                            # Each output is a sum of D-scaled C^2 (or HW D) signed products with heavy cancellation:
                            # any reordering (compile's fused reduction, the kernels' tiles) moves small entries by
                            # ~1e-6 of the largest one, past a per-element rtol.
                            loose={p: 2e-5 for p in ["compile", *provs]}))
    return out
