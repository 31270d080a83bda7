"""infonce_bank_partial: the bank-only part of infonce_bank_loss (per-row log-sum-exp and rank), for banks sharded
across ranks: each rank computes its shard's partial, the caller merges them with the positive.

Registration: the schemas live in csrc/ops/infonce_bank_partial.cpp (the kernels are infonce_bank_loss's, without the
positive); this file adds fake kernels, autograd, the Triton variants and the public function.
"""
from __future__ import annotations

import torch

from vkernels import _backend
from vkernels._dtypes import acc_dtype
from vkernels.ops._infonce import acc_temperature, check_infonce_args
from vkernels.reference.infonce_bank_partial import infonce_bank_partial as _reference

__all__ = ["infonce_bank_partial"]

_backend.register_op("infonce_bank_partial", cuda_order=("triton",))


def infonce_bank_partial(q: torch.Tensor, k: torch.Tensor, bank: torch.Tensor,
                         temperature: float | torch.Tensor = 0.07, *, exclude: torch.Tensor | None = None,
                         impl: str = "auto"):
    r"""(lse, rank): lse_i = logsumexp_{j kept} q_i.b_j / T, rank_i = #{j kept : q_i.b_j / T > q_i.k_i / T}.

    The bank's share of `vkernels.infonce_bank_loss` (which adds the positive q_i.k_i / T to the log-sum-exp):
    merging shards is lse = logsumexp(l_pos, lse_shard_1, ..., lse_shard_W), rank = sum of the shards' ranks.
    Tile by tile with an online log-sum-exp, never N x K.

    Args:
        q, k: (N, d), float16/bfloat16/float32/float64; k only sets the comparison of the rank (no gradient).
        bank: (K, d), K >= 1, q's dtype and device. Gets a gradient when it requires one.
        temperature: T > 0, a number or a 0-dim float tensor (differentiable).
        exclude: None, or int64 (N,) / (N, E) bank indices to leave out of row i (-1 = none). A row with every
            entry excluded has lse = -inf, rank 0 and zero gradient.
        impl: "auto" | "cpu" | "triton" | "reference".

    Returns:
        lse (N,) float32 (float64 for float64 inputs), differentiable w.r.t. q, bank and temperature; rank (N,) int64.
    """
    check_infonce_args(q, k, bank, temperature, "mean", 0.0, exclude, op="infonce_bank_partial")
    impl = _backend.resolve_impl("infonce_bank_partial", q, impl)
    acc, t = acc_temperature(q, temperature)
    if impl == "reference":
        lse, rank = _reference(q, k, bank, t, exclude)
        return lse.to(acc), rank
    op = torch.ops.vkernels.infonce_bank_partial_triton if impl == "triton" else torch.ops.vkernels.infonce_bank_partial
    return op(q, k, bank, t, exclude)


def _register(fwd: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(q, k, bank, temperature, exclude):
        acc = acc_dtype(q.dtype)
        n = q.shape[0]
        return q.new_empty((n,), dtype=acc), q.new_empty((n,), dtype=torch.long)

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(grad_lse, q, bank, temperature, exclude, lse, bank_grad):
        return (q.new_empty(q.shape), bank.new_empty((bank.shape[0] if bank_grad else 0, bank.shape[1])),
                temperature.new_empty(()))

    def setup(ctx, inputs, output):
        q, k, bank, temperature, exclude = inputs
        lse, rank = output
        ctx.mark_non_differentiable(rank)
        ctx.save_for_backward(q, bank, temperature, exclude, lse)

    def backward(ctx, g_lse, _g_rank):
        q, bank, temperature, exclude, lse = ctx.saved_tensors
        g_lse = torch.zeros_like(lse) if g_lse is None else g_lse
        need = ctx.needs_input_grad
        dq, dbank, dt = bwd_op(g_lse, q, bank, temperature, exclude, lse, need[2])
        return (dq if need[0] else None, None, dbank if need[2] else None, dt if need[3] else None, None)

    torch.library.register_autograd(f"vkernels::{fwd}", backward, setup_context=setup)


_backend.register_backends(_register, ("infonce_bank_partial", "infonce_bank_partial_backward"),
                           lambda: _backend.triton_launchers("infonce_bank_partial", "partial", "partial_backward"))
