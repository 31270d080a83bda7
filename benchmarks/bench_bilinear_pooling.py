"""bilinear_pooling cases: B-CNN pooling of (B, C, H, W) features with itself, signed sqrt + L2 (the fine-grained
head), full C x C output and its upper triangle.

Compute-bound: the Gram GEMM is 2 B C^2 HW FLOPs; the epilogue is O(B C^2). The floor ("floor-gemm") is that GEMM
alone (torch.bmm of the fp32 features, the same call vkernels makes), so the goal "within 1.3x of the Gram GEMM"
reads off vs_floor. fwd+bwd adds two GEMMs of the
same size (dX = dG X, with dG symmetrised).
"""
from typing import Iterator

import torch
import torch.nn.functional as F

import vkernels
from benchmarks._harness import Case, vkernels_impls, fwd_bwd
from benchmarks._pooling import feature_maps
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, raw_ops


def _bcnn(triu):
    def fn(x):
        # The popular B-CNN head, verbatim (plus the triu gather when asked): the reference of the op.
        B, C, H, W = x.shape
        X = x.reshape(B, C, H * W)
        G = torch.bmm(X, X.transpose(1, 2)) / (H * W)
        if triu:
            iu = torch.triu_indices(C, C, device=x.device)
            z = G[:, iu[0], iu[1]]
        else:
            z = G.reshape(B, -1)
        return F.normalize(torch.sign(z) * torch.sqrt(torch.abs(z) + 1e-10), dim=1)
    return fn


def _gemm(x):
    B, C, H, W = x.shape
    X = x.reshape(B, C, H * W).float()
    return torch.bmm(X, X.transpose(1, 2))


def _gemm_fwd_bwd(x):
    # The floor of fwd+bwd: the forward Gram GEMM and the backward GEMM dX = dG X (what any implementation needs).
    G = _gemm(x)
    B, C, H, W = x.shape
    return torch.bmm(G, x.reshape(B, C, H * W).float())


def _impl(impl, triu):
    def fn(x):
        return vkernels.bilinear_pooling(x, normalize="signed_sqrt_l2", triu=triu, impl=impl)
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        sizes = [(4, 64, 14, 14)]
    else:
        sizes = [(32, 512, 28, 28), (32, 2048, 14, 14)]
    impls = vkernels_impls("bilinear_pooling", device)
    out = []
    for x, dtype, size in feature_maps(sizes, device):
        B, C, H, W = x.shape
        gemm = 2 * B * C * C * H * W
        for mode in ("fwd", "fwd+bwd"):
            wrap = (fwd_bwd) if mode == "fwd+bwd" else (lambda f: f)
            nflops = gemm * (2 if mode == "fwd+bwd" else 1)
            for triu in (False, True):
                out.append(Case(
                    op="bilinear_pooling", size=f"{size}-{'triu' if triu else 'full'}-{mode}", dtype=dtype,
                    inputs=(x,), reference=wrap(_bcnn(triu)),
                    impls={f"vkernels-{i}": wrap(_impl(i, triu)) for i in impls},
                    bytes=x.nbytes + B * C * C * x.element_size() // (2 if triu else 1), flops=nflops,
                    bound="compute", floor=_gemm_fwd_bwd if mode == "fwd+bwd" else _gemm))
    return out


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: ((B, C1, C2 or None, H, W), normalize, triu)
BILINEAR_CASES = {
    "sym_triu_sqrtl2": ((2, 6, None, 3, 5), "signed_sqrt_l2", True),
    "xy_full_none": ((3, 5, 4, 4, 3), "none", False),
    "xy_full_sqrtl2": ((2, 70, 9, 2, 3), "signed_sqrt_l2", False),  # rows longer than a Triton block
}


def smoke_bilinear_pooling(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    from vkernels.reference.bilinear_pooling import bilinear_pooling as reference

    ops = raw_ops("bilinear_pooling")
    for impl, dtype, dn, name, ((B, C1, C2, H, W), norm, triu), g in ctx.variants(
            "bilinear_pooling", BILINEAR_CASES, lambda name, dn: name != "xy_full_sqrtl2" and dn == "float32"):
        x = torch.randn(B, C1, H, W, generator=g, dtype=torch.float64).to(dtype)
        y = None if C2 is None else torch.randn(B, C2, H, W, generator=g, dtype=torch.float64).to(dtype)
        leaves = [x.double().requires_grad_()] + ([] if y is None else [y.double().requires_grad_()])
        out = reference(leaves[0], None if y is None else leaves[1], norm, triu)
        gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad((out * gout).sum(), leaves)
        xd, yd = x.to(ctx.device), None if y is None else y.to(ctx.device)
        args = (xd, yd, norm, triu, 1e-10)
        tol = TOL_NAMES[dn] * 4
        yield SmokeCase(f"bilinear_pooling/{impl}/{dn}/{name}/fwd", ops[impl], args, out.detach(), tol,
                        select=lambda o: o[0])
        bwd = ops[impl].replace("bilinear_pooling", "bilinear_pooling_backward")

        def bwd_args(fwd=getattr(torch.ops.vkernels, ops[impl]), args=args, gout=gout, dtype=dtype):
            out, nrm = fwd(*args)  # the backward reads the forward's output and per-image norm
            return (gout.to(device=ctx.device, dtype=dtype), *args[:2], out, nrm, *args[2:])

        gscale = max(1.0, *(float(t.abs().max()) for t in grads))
        n = len(grads)
        yield SmokeCase(f"bilinear_pooling/{impl}/{dn}/{name}/bwd", bwd, bwd_args, tuple(grads), tol * 4, gscale,
                        select=lambda o, n=n: tuple(o[:n]))
