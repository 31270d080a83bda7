"""What the InfoNCE ops' benchmarks and smoke cases share (bench_infonce_bank_loss.py, bench_infonce_bank_partial.py):
their inputs (unit-norm queries, positives and a bank), the smoke cases' sizes and their inputs.
"""
import torch
import torch.nn.functional as F


def inputs(n: int, kk: int, d: int, dtype, device: str):
    """Unit-norm queries (n, d), keys near them (their positives) and a bank (kk, d) of unrelated unit rows."""
    q = F.normalize(torch.randn(n, d, device=device), dim=1).to(dtype)
    k = F.normalize(q.float() + 0.5 * torch.randn(n, d, device=device), dim=1).to(dtype)
    bank = F.normalize(torch.randn(kk, d, device=device), dim=1).to(dtype)
    return q, k, bank


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
