"""infonce_bank_loss cases: MoCo v2's loss, N queries against a K-entry bank of d-dim keys, temperature 0.07.

Compute-bound. Forward: 2 N K d FLOPs (the logits GEMM) + N K exps. The harness times one call of each provider, so
every size has two cases: "fwd" (the loss only) and "fwd+bwd" (loss and gradients of q, k and bank in one call: a
provider variant defined here, since the harness measures what a provider returns). fwd+bwd is counted as eager's
useful work, 6 N K d (forward GEMM + two backward GEMMs); vkernels does 8 N K d there because its backward
recomputes the logits instead of keeping N x K of them. Peak memory is the point of this op: eager MoCo holds the
N x (K+1) logits several times over (logits, softmax, their gradients); vkernels holds O(N) per-row values.
"""
from typing import Iterator

import torch
import torch.nn.functional as F

import vkernels
from benchmarks._harness import Case
from benchmarks._infonce import SMOKE_SIZES, infonce_case_inputs, kept_in_quick_scope, timed_cases
from benchmarks._smoke import SmokeCase, SmokeCtx, TOL_NAMES, raw_ops

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


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        sizes = [(64, 1024, 32)]
    elif device == "cuda":
        # The target (bf16, N=4096, K=65536) and a small N that must still fill the GPU; the full N x K grid of the
        # issue does not fit a 15-minute GPU lease with cold torch.compile baselines.
        sizes = [(256, 65536, 128), (4096, 65536, 128)]
    else:  # the target size (MoCo v2: K = 65536, d = 128) and a smaller one
        sizes = [(1024, 65536, 128), (256, 16384, 128)]
    return timed_cases("infonce_bank_loss", sizes, device, _moco, _impl, grad_args=(0, 1, 2))


# --------------------------------------------------------------------------------------------------------------------
# smoke cases: benchmarks/smoke.py finds the smoke_<op>(ctx) generators of every bench file by name and
# checks each raw-op launch against the float64 reference (small sizes; also under compute-sanitizer)
# --------------------------------------------------------------------------------------------------------------------
def smoke_infonce_bank_loss(ctx: SmokeCtx) -> Iterator[SmokeCase]:
    torch = ctx.torch
    from vkernels.reference.infonce_bank_loss import infonce_bank_loss as reference

    ops = raw_ops("infonce_bank_loss")
    for impl, dtype, dn, name, (N, K, d, ls, with_ex), g in ctx.variants("infonce", SMOKE_SIZES, kept_in_quick_scope):
        q, k, bank, ex, T, dev = infonce_case_inputs(ctx, g, dtype, N, K, d, with_ex)
        q64, k64, b64 = (t.double().requires_grad_() for t in (q, k, bank))
        loss, lse, rank = reference(q64, k64, b64, T, ls, ex)
        gl = torch.randn(N, generator=g, dtype=torch.float64)
        dq, dk, db = torch.autograd.grad((loss * gl).sum(), [q64, k64, b64])
        args = (*dev[:4], ls, dev[4])
        tol = TOL_NAMES[dn] * 10  # a loss summed over K+1 candidates, not one rounded element
        yield SmokeCase(f"infonce_bank_loss/{impl}/{dn}/{name}/fwd", ops[impl], args, loss.detach(), tol,
                        max(1.0, float(loss.abs().max())), select=lambda out: out[0])
        bwd = ops[impl].replace("infonce_bank_loss", "infonce_bank_loss_backward")

        def bwd_args(fwd=getattr(torch.ops.vkernels, ops[impl]), args=args, gl=gl):
            out_loss, out_lse, _ = fwd(*args)  # the backward reads the forward's own lse and loss
            return (gl.to(device=ctx.device, dtype=out_loss.dtype), torch.zeros_like(out_lse), *args,
                    out_lse, out_loss, True)

        gscale = max(1.0, float(dq.abs().max()), float(db.abs().max()))
        yield SmokeCase(f"infonce_bank_loss/{impl}/{dn}/{name}/bwd", bwd, bwd_args, (dq, dk, db), tol, gscale,
                        select=lambda out: tuple(out[:3]))
