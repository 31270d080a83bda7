"""infonce_bank_partial cases: one rank's share of a sharded bank, N (all-gathered) queries against a K-row shard.

Compute-bound: forward 2 N K d FLOPs (the logits GEMM) + N K exps; "fwd+bwd" (lse and the gradients of q and the
shard in one call) is counted as eager's 6 N K d, vkernels does 8 N K d (its backward recomputes the logits). Peak
memory: eager holds N x K logits (and their softmax and gradient); vkernels O(N) per-row values.
"""
import torch

import vkernels
from benchmarks._harness import Case, vkernels_impls, fwd_bwd
from benchmarks.bench_infonce_bank_loss import inputs

TEMPERATURE = 0.07


def _eager(q, k, shard):
    return torch.logsumexp(q @ shard.t() / TEMPERATURE, dim=1)


def _impl(impl):
    def fn(q, k, shard):
        return vkernels.infonce_bank_partial(q, k, shard, TEMPERATURE, impl=impl)[0]
    return fn


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        sizes = [(64, 1024, 32)]
    elif device == "cuda":
        sizes = [(4096, 65536, 128)]  # 8 ranks of 512 queries, a 524288-row bank in 8 shards
    else:
        sizes = [(1024, 32768, 128)]  # 2 ranks of 512 queries, a 65536-row bank in 2 shards
    dtypes = [torch.bfloat16] if device == "cuda" else [torch.float32]
    impls = vkernels_impls("infonce_bank_partial", device)
    out = []
    for n, kk, d in sizes:
        for dtype in dtypes:
            q, k, shard = inputs(n, kk, d, dtype, device)
            nbytes = (2 * n + kk) * d * q.element_size()
            for mode in ("fwd", "fwd+bwd"):
                wrap = (lambda f: fwd_bwd(f, (0, 2))) if mode == "fwd+bwd" else (lambda f: f)
                out.append(Case(
                    op="infonce_bank_partial", size=f"{n}x{kk}x{d}-{mode}", dtype=dtype, inputs=(q, k, shard),
                    reference=wrap(_eager), impls={f"vkernels-{i}": wrap(_impl(i)) for i in impls},
                    bytes=nbytes * (2 if mode == "fwd+bwd" else 1),
                    flops=(6 if mode == "fwd+bwd" else 2) * n * kk * d, bound="compute", clone_of=2))
    return out
