"""infonce_bank_partial cases: one rank's share of a sharded bank, N (all-gathered) queries against a K-row shard.

Compute-bound: forward 2 N K d FLOPs (the logits GEMM) + N K exps; "fwd+bwd" (lse and the gradients of q and the
shard in one call) is counted as eager's 6 N K d, vkernels does 8 N K d (its backward recomputes the logits). Peak
memory: eager holds N x K logits (and their softmax and gradient); vkernels O(N) per-row values.
"""
from typing import Iterator

import torch

import vkernels
from benchmarks._harness import Case
from benchmarks._infonce import SMOKE_SIZES, infonce_case_inputs, kept_in_quick_scope, timed_cases
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, raw_ops

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
    return timed_cases("infonce_bank_partial", sizes, device, _eager, _impl, grad_args=(0, 2), clone_of=2)


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
def smoke_infonce_bank_partial(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    """The bank-only lse and rank (sharded banks) and its backward with the lse it returned."""
    torch = ctx.torch
    from vkernels.reference.infonce_bank_partial import infonce_bank_partial as reference

    ops = raw_ops("infonce_bank_partial")
    for impl, dtype, dn, name, (N, K, d, _, with_ex), g in ctx.variants("infonce_partial", SMOKE_SIZES,
                                                                         kept_in_quick_scope):
        q, k, bank, ex, T, args = infonce_case_inputs(ctx, g, dtype, N, K, d, with_ex)
        q64, b64 = q.double().requires_grad_(), bank.double().requires_grad_()
        lse, _ = reference(q64, k.double(), b64, T, ex)
        gl = torch.randn(N, generator=g, dtype=torch.float64)
        dq, db = torch.autograd.grad((lse * gl).sum(), [q64, b64])
        tol = TOL_NAMES[dn] * 10
        yield SmokeCase(f"infonce_bank_partial/{impl}/{dn}/{name}/fwd", ops[impl], args, lse.detach(), tol,
                        max(1.0, float(lse.abs().max())), select=lambda out: out[0])
        bwd = ops[impl].replace("infonce_bank_partial", "infonce_bank_partial_backward")

        def bwd_args(fwd=getattr(torch.ops.vkernels, ops[impl]), args=args, gl=gl):
            out_lse, _ = fwd(*args)
            q_, _, b_, t_, e_ = args
            return (gl.to(device=ctx.device, dtype=out_lse.dtype), q_, b_, t_, e_, out_lse, True)

        gscale = max(1.0, float(dq.abs().max()), float(db.abs().max()))
        yield SmokeCase(f"infonce_bank_partial/{impl}/{dn}/{name}/bwd", bwd, bwd_args, (dq, db), tol, gscale,
                        select=lambda out: tuple(out[:2]))
