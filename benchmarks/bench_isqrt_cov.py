"""isqrt_cov cases: iSQRT-COV pooling (5 Newton-Schulz iterations, triu output) of (B, C, H, W) features.

Compute-bound. Forward: covariance 2 B C^2 HW + Newton-Schulz (3 iters - 1) C x C GEMMs of 2 C^3 each. The forward's
floor ("floor-gemm") times those GEMMs alone (torch.bmm on fp32). The eager reference is MPNCOV's iteration
in plain PyTorch (autograd keeps every iterate); vkernels keeps only A and recomputes the iterates in its backward.
The CPU kernel computes the symmetric products (covariance, every forward iterate, two of six GEMMs per backward
step) as upper triangles only (10/16 of the FLOPs at C = 256) and runs a symmetrised backward, so it does fewer
GEMM FLOPs than its floor (full batched GEMMs): at C = 256, N = 5 per image 33.75 C x C GEMMs + 1.625
covariance-sized ones for fwd+bwd, against 40 + 3 in torch.compile's graph of the reference.
"""
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls, fwd_bwd
from benchmarks._pooling import feature_maps
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, raw_ops
from vkernels.reference.isqrt_cov import isqrt_cov as reference

ITERS = 5


def _gemms(x):
    B, C, H, W = x.shape
    X = x.reshape(B, C, H * W).float()
    A = torch.bmm(X, X.transpose(1, 2)) / (C * H * W * 100.0)
    Y, Z = A, A
    for _ in range(3 * ITERS - 1):
        Y = torch.bmm(Y, Z)
    return Y


def _ref(x):
    return reference(x.float(), ITERS, True).to(x.dtype)


def _impl(impl):
    def fn(x):
        return vkernels.isqrt_cov(x, ITERS, True, impl=impl)
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        sizes = [(4, 32, 14, 14)]
    elif device == "cuda":
        sizes = [(32, 256, 28, 28), (32, 512, 28, 28), (32, 2048, 14, 14)]
    else:  # the paper's C = 256 (after its 1x1 reduction) and C = 512; C = 2048 is ~8 TFLOP, GPU only
        sizes = [(32, 256, 28, 28), (32, 512, 28, 28)]
    impls = vkernels_impls("isqrt_cov", device)
    out = []
    for x, dtype, size in feature_maps(sizes, device):
        B, C, H, W = x.shape
        fwd_flops = 2 * B * C * C * H * W + (3 * ITERS - 1) * 2 * B * C ** 3
        for mode in ("fwd", "fwd+bwd"):
            wrap = (fwd_bwd) if mode == "fwd+bwd" else (lambda f: f)
            out.append(Case(
                op="isqrt_cov", size=f"{size}-{mode}", dtype=dtype, inputs=(x,), reference=wrap(_ref),
                impls={f"vkernels-{i}": wrap(_impl(i)) for i in impls}, bytes=x.nbytes,
                flops=fwd_flops * (3 if mode == "fwd+bwd" else 1), bound="compute",
                floor=_gemms if mode == "fwd" else None))
    return out


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
# name: ((B, C, H, W), iters, triu)
ISQRT_CASES = {
    "paper": ((2, 6, 4, 5), 5, True),
    "one_iter_full": ((3, 5, 3, 3), 1, False),
    "wide": ((2, 70, 3, 4), 3, True),  # rows longer than a Triton block
}


def smoke_isqrt_cov(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    from vkernels.reference.isqrt_cov import isqrt_cov as reference

    ops = raw_ops("isqrt_cov")
    for impl, dtype, dn, name, ((B, C, H, W), iters, triu), g in ctx.variants(
            "isqrt_cov", ISQRT_CASES, lambda name, dn: name != "wide" and dn == "float32"):
        x = (torch.randn(B, C, H, W, generator=g, dtype=torch.float64) + 0.5).to(dtype)
        leaf = x.double().requires_grad_()
        out = reference(leaf, iters, triu)
        gout = torch.randn(out.shape, generator=g, dtype=torch.float64)
        grad, = torch.autograd.grad((out * gout).sum(), leaf)
        args = (x.to(ctx.device), iters, triu)
        tol = TOL_NAMES[dn] * 10  # several chained GEMMs
        scale = max(1.0, float(out.abs().max()))
        yield SmokeCase(f"isqrt_cov/{impl}/{dn}/{name}/fwd", ops[impl], args, out.detach(), tol, scale,
                        select=lambda o: o[0])
        bwd = ops[impl].replace("isqrt_cov", "isqrt_cov_backward")

        def bwd_args(fwd=getattr(torch.ops.vkernels, ops[impl]), args=args, gout=gout, dtype=dtype):
            _, A, t = fwd(*args)
            return (gout.to(device=ctx.device, dtype=dtype), args[0], A, t, *args[1:])

        yield SmokeCase(f"isqrt_cov/{impl}/{dn}/{name}/bwd", bwd, bwd_args, grad, tol * 4,
                        max(1.0, float(grad.abs().max())))
