"""What the InfoNCE ops' benchmarks and smoke cases share (bench_infonce_bank_loss.py, bench_infonce_bank_partial.py):
their inputs (unit-norm queries, positives and a bank), their timed cases, the smoke cases' sizes and their inputs.
"""
import torch
import torch.nn.functional as F

from benchmarks._harness import Case, fwd_bwd, vkernels_impls


def inputs(n: int, kk: int, d: int, dtype, device: str):
    """Unit-norm queries (n, d), keys near them (their positives) and a bank (kk, d) of unrelated unit rows."""
    q = F.normalize(torch.randn(n, d, device=device), dim=1).to(dtype)
    k = F.normalize(q.float() + 0.5 * torch.randn(n, d, device=device), dim=1).to(dtype)
    bank = F.normalize(torch.randn(kk, d, device=device), dim=1).to(dtype)
    return q, k, bank


def timed_cases(op, sizes, device, reference, impl, grad_args, **case_fields) -> list[Case]:
    """Both ops' timed cases: per (N, K, d) of `sizes` and dtype (bf16 on CUDA, fp32 on CPU), "fwd" and "fwd+bwd"
    (the gradients of the inputs `grad_args` of (q, k, bank)). reference(q, k, bank) is eager, impl(name) a vkernels
    provider. Bytes: q, k and the bank once (twice with the backward); FLOPs: eager's useful work, the logits GEMM
    2 N K d and, with the backward, its two GEMMs more."""
    dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
    impls = vkernels_impls(op, device)
    out = []
    for n, kk, d in sizes:
        for dtype in dtypes:
            q, k, bank = inputs(n, kk, d, dtype, device)
            nbytes = (2 * n + kk) * d * q.element_size()
            for mode in ("fwd", "fwd+bwd"):
                wrap = (lambda f: fwd_bwd(f, grad_args)) if mode == "fwd+bwd" else (lambda f: f)
                out.append(Case(
                    op=op, size=f"{n}x{kk}x{d}-{mode}", dtype=dtype, inputs=(q, k, bank),
                    reference=wrap(reference), impls={f"vkernels-{i}": wrap(impl(i)) for i in impls},
                    bytes=nbytes * (2 if mode == "fwd+bwd" else 1),
                    flops=(6 if mode == "fwd+bwd" else 2) * n * kk * d, bound="compute", **case_fields))
    return out


# name: (N, K, d, label_smoothing, with exclude)
SMOKE_SIZES = {
    "small": (5, 37, 16, 0.0, False),
    "tiles": (70, 300, 40, 0.1, True),  # several query tiles and bank splits, odd sizes everywhere
}


def kept_in_quick_scope(name, dn):
    """The smoke cases Triton runs under --scope quick (every Triton variant is a separate JIT compile)."""
    return name == "small" and dn == "float32"


def infonce_case_inputs(ctx, g, dtype, N, K, d, with_ex):
    """Unit-norm q, k (N, d) and bank (K, d) in `dtype` (CPU), exclude (N, 2) or None, the float64 temperature,
    and (q, k, bank, temperature in the kernel's compute dtype, exclude) on ctx.device: the arguments of both
    infonce ops."""
    torch = ctx.torch

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(shape, generator=g, dtype=torch.float64), dim=-1)

    q, k, bank = unit(N, d).to(dtype), unit(N, d).to(dtype), unit(K, d).to(dtype)
    ex = torch.randint(-1, K, (N, 2), generator=g) if with_ex else None
    T = torch.tensor(0.07, dtype=torch.float64)
    Td = T.to(dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=ctx.device)
    dev = (q.to(ctx.device), k.to(ctx.device), bank.to(ctx.device), Td, None if ex is None else ex.to(ctx.device))
    return q, k, bank, ex, T, dev
