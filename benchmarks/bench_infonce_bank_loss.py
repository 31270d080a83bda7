"""infonce_bank_loss cases: MoCo v2's loss, N queries against a K-entry bank of d-dim keys, temperature 0.07.

Compute-bound. Forward: 2 N K d FLOPs (the logits GEMM) + N K exps. The harness times one call of each provider, so
every size has two cases: "fwd" (the loss only) and "fwd+bwd" (loss and gradients of q, k and bank in one call: a
provider variant defined here, since the harness measures what a provider returns). fwd+bwd is counted as eager's
useful work, 6 N K d (forward GEMM + two backward GEMMs); vkernels does 8 N K d there because its backward
recomputes the logits instead of keeping N x K of them. Peak memory is the point of this op: eager MoCo holds the
N x (K+1) logits several times over (logits, softmax, their gradients); vkernels holds O(N) per-row values.
"""
import torch
import torch.nn.functional as F

import vkernels
from benchmarks._harness import Case, vkernels_impls, fwd_bwd

TEMPERATURE = 0.07


def _moco(q, k, bank):
    # MoCo's Algorithm 1, verbatim (the reference implementation of the op).
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,kc->nk", q, bank)
    logits = torch.cat([l_pos, l_neg], dim=1) / TEMPERATURE
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=q.device))


def _impl(impl):
    def fn(q, k, bank):
        return vkernels.infonce_bank_loss(q, k, bank, TEMPERATURE, impl=impl)
    return fn


def inputs(n: int, kk: int, d: int, dtype, device: str):
    """Unit-norm queries (n, d), keys near them (their positives) and a bank (kk, d) of unrelated unit rows."""
    q = F.normalize(torch.randn(n, d, device=device), dim=1).to(dtype)
    k = F.normalize(q.float() + 0.5 * torch.randn(n, d, device=device), dim=1).to(dtype)
    bank = F.normalize(torch.randn(kk, d, device=device), dim=1).to(dtype)
    return q, k, bank


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        sizes = [(64, 1024, 32)]
    elif device == "cuda":
        # The target (bf16, N=4096, K=65536) and a small N that must still fill the GPU; the full N x K grid of the
        # issue does not fit a 15-minute GPU lease with cold torch.compile baselines.
        sizes = [(256, 65536, 128), (4096, 65536, 128)]
    else:  # the target size (MoCo v2: K = 65536, d = 128) and a smaller one
        sizes = [(1024, 65536, 128), (256, 16384, 128)]
    dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
    impls = vkernels_impls("infonce_bank_loss", device)
    out = []
    for n, kk, d in sizes:
        for dtype in dtypes:
            q, k, bank = inputs(n, kk, d, dtype, device)
            nbytes = (2 * n + kk) * d * q.element_size()
            size = f"{n}x{kk}x{d}"
            for mode in ("fwd", "fwd+bwd"):
                wrap = (lambda f: fwd_bwd(f, (0, 1, 2))) if mode == "fwd+bwd" else (lambda f: f)
                out.append(Case(
                    op="infonce_bank_loss", size=f"{size}-{mode}", dtype=dtype, inputs=(q, k, bank),
                    reference=wrap(_moco), impls={f"vkernels-{i}": wrap(_impl(i)) for i in impls},
                    bytes=nbytes * (2 if mode == "fwd+bwd" else 1),
                    flops=(6 if mode == "fwd+bwd" else 2) * n * kk * d, bound="compute"))
    return out
