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
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls, fwd_bwd
from benchmarks._pooling import random_signs, seeded_feature_maps
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES
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
    for (B, C, H, W, D), g, x in seeded_feature_maps(sizes, device, dtype):
        w1, w2 = random_signs((D, C), g, device), random_signs((D, C), g, device)
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


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: (B, C1, C2 (None: y is x), H, W, D, route, channels_last)
RMP_CASES = {
    "gram_xy": (2, 5, 7, 3, 4, 11, "gram", False),  # odd D, C1 != C2; B below the CPU thread count
    "project_xy": (3, 6, 4, 2, 5, 9, "project", True),  # channels_last
    "gram_y_is_x_tiles": (2, 33, None, 3, 3, 150, "gram", False),  # D past a CPU tile (128) and Triton's blocks
    "project_y_is_x": (2, 17, None, 4, 3, 40, "project", False),
}


def smoke_random_maclaurin_pooling(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    from vkernels.reference.random_maclaurin_pooling import random_maclaurin_pooling as definition

    ops = {"cpu": "random_maclaurin_pooling", "triton": "random_maclaurin_pooling_triton"}  # no CUDA C++ kernel
    for impl, dtype, dn, name, (B, C1, C2, H, W, D, route, cl), g in ctx.variants(
            "rmp", RMP_CASES, lambda name, dn: dn == "float32", impls=ops):
        sym = C2 is None
        C2 = C1 if sym else C2
        x = torch.randn(B, C1, H, W, generator=g, dtype=torch.float64).to(dtype)
        y = x if sym else torch.randn(B, C2, H, W, generator=g, dtype=torch.float64).to(dtype)
        w1 = (2 * torch.randint(0, 2, (D, C1), generator=g) - 1).float()
        w2 = (2 * torch.randint(0, 2, (D, C2), generator=g) - 1).float()
        leaves = [t.double().requires_grad_() for t in (x, y, w1, w2)]
        if sym:
            leaves[1] = leaves[0]
        out = definition(*leaves)
        gout = torch.randn(B, D, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad((out * gout).sum(), [leaves[0], leaves[2], leaves[3]] +
                                    ([] if sym else [leaves[1]]))
        dx, dw1, dw2 = grads[:3]
        xd = x.to(ctx.device)
        if cl:
            xd = xd.to(memory_format=torch.channels_last)
        yd = None if sym else y.to(ctx.device)
        if cl and not sym:
            yd = yd.to(memory_format=torch.channels_last)
        wd = (w1.to(ctx.device), w2.to(ctx.device))
        tol = TOL_NAMES[dn] * 10  # sums of C1 C2 HW products per feature, not one rounded element
        yield SmokeCase(f"random_maclaurin_pooling/{impl}/{dn}/{name}/fwd", ops[impl], (xd, yd, *wd, route),
                        out.detach(), tol, max(1.0, float(out.abs().max())))
        bwd = ops[impl].replace("random_maclaurin_pooling", "random_maclaurin_pooling_backward")
        expect = (dx, torch.zeros(0, dtype=torch.float64) if sym else grads[3], dw1, dw2)
        yield SmokeCase(f"random_maclaurin_pooling/{impl}/{dn}/{name}/bwd", bwd,
                        (gout.to(device=ctx.device, dtype=dtype), xd, yd, *wd, route, [True, True, True, True]),
                        expect, tol * 4, max(1.0, *(float(t.abs().max()) for t in grads)))
        if route != "project":
            continue
        # The project route that keeps W1 X, W2 Y for its backward: out, the saved projections, and the
        # gradients from them.
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        X64 = x.double().flatten(2)
        Y64 = X64 if sym else y.double().flatten(2)
        proj = torch.stack([torch.matmul(w1.double(), X64), torch.matmul(w2.double(), Y64)]).transpose(1, 2)
        sfwd = ops[impl].replace("random_maclaurin_pooling", "random_maclaurin_pooling_saved")
        yield SmokeCase(f"random_maclaurin_pooling/{impl}/{dn}/{name}/saved_fwd", sfwd, (xd, yd, *wd),
                        (out.detach(), proj), tol, max(1.0, float(out.abs().max()), float(proj.abs().max())))
        sbwd = sfwd.replace("_saved", "_saved_backward")
        yield SmokeCase(f"random_maclaurin_pooling/{impl}/{dn}/{name}/saved_bwd", sbwd,
                        (gout.to(device=ctx.device, dtype=dtype), xd, yd, *wd,
                         proj.to(device=ctx.device, dtype=acc).contiguous(), [True, True, True, True]),
                        expect, tol * 4, max(1.0, *(float(t.abs().max()) for t in grads)))
