"""infonce_bank_loss: MoCo / NPID's InfoNCE loss against a memory bank of negatives, without the N x K logits.

Registration: the schema lives in csrc/ops/infonce_bank_loss.cpp; this file adds fake (meta) kernels, autograd, the
Triton variant of the op, and the public function that picks an implementation.
"""
from __future__ import annotations

import torch

from vkernels import _backend
from vkernels._dtypes import acc_dtype
from vkernels.ops._infonce import acc_temperature, check_infonce_args, loss_outputs
from vkernels.reference.infonce_bank_loss import infonce_bank_loss as _reference

__all__ = ["infonce_bank_loss"]

# No CUDA C++ kernel: the GPU path is Triton.
_backend.register_op("infonce_bank_loss", cuda_order=("triton",))


def infonce_bank_loss(q: torch.Tensor, k: torch.Tensor, bank: torch.Tensor,
                      temperature: float | torch.Tensor = 0.07, *, reduction: str = "mean",
                      label_smoothing: float = 0.0, exclude: torch.Tensor | None = None, return_lse: bool = False,
                      return_rank: bool = False, impl: str = "auto"):
    r"""InfoNCE with a bank of negatives: loss_i = logsumexp_c(l_ic) - l_i0, l_i0 = q_i.k_i / T, l_ij = q_i.b_j / T.

    Equals MoCo's `F.cross_entropy(torch.cat([l_pos, l_neg], 1) / T, zeros)` (He et al. 2020, Algorithm 1), computed
    tile by tile with an online log-sum-exp: memory O(N) beyond the inputs, never N x K.

    Args:
        q: (N, d) queries, float16/bfloat16/float32/float64, any strides.
        k: (N, d) the queries' positive keys, q's dtype and device.
        bank: (K, d) negatives, K >= 1, q's dtype and device. Gets a gradient when it requires one.
        temperature: T > 0, a number or a 0-dim float tensor (differentiable: a learnable temperature).
        reduction: "mean" | "sum" | "none" (per-row (N,) losses), as in F.cross_entropy.
        label_smoothing: eps in [0, 1], as in F.cross_entropy over the K + 1 candidates:
            loss_i = (1 - eps)(lse_i - l_i0) + eps (lse_i - mean_c l_ic).
        exclude: None, or int64 (N,) / (N, E) bank indices to leave out of row i's candidates (NPID's own entry);
            -1 means none, repeats count once. Smoothing then averages over the candidates left.
        return_lse: also return lse_i = logsumexp_c l_ic, (N,) float32 (float64 for float64 inputs).
        return_rank: also return rank_i, (N,) int64: the number of kept bank candidates whose logit is strictly
            larger than the positive's (0 = top-1), so top-k accuracy is `(rank < k).float().mean()` without logits.
        impl: "auto" | "cpu" | "triton" | "reference"; see `vkernels.resolve_impl`.

    Returns:
        The loss (q's dtype; computed in fp32) when neither extra output is asked for; otherwise a tuple
        (loss, lse, rank) holding only the ones asked for, in that order: (loss, lse), (loss, rank) or
        (loss, lse, rank). lse is differentiable, rank is not. Gradients are first order.
    """
    check_infonce_args(q, k, bank, temperature, reduction, label_smoothing, exclude)
    impl = _backend.resolve_impl("infonce_bank_loss", q, impl)
    acc, t = acc_temperature(q, temperature)
    if impl == "reference":
        loss, lse, rank = _reference(q, k, bank, t, label_smoothing, exclude)
        loss, lse = loss.to(acc), lse.to(acc)
    else:
        op = torch.ops.vkernels.infonce_bank_loss_triton if impl == "triton" else torch.ops.vkernels.infonce_bank_loss
        loss, lse, rank = op(q, k, bank, t, float(label_smoothing), exclude)
    return loss_outputs(loss, lse, rank, q.dtype, reduction, return_lse, return_rank)


def _register(fwd: str, bwd: str) -> None:
    bwd_op = getattr(torch.ops.vkernels, bwd).default

    @torch.library.register_fake(f"vkernels::{fwd}")
    def _fake_fwd(q, k, bank, temperature, label_smoothing, exclude):
        acc = acc_dtype(q.dtype)
        n = q.shape[0]
        return (q.new_empty((n,), dtype=acc), q.new_empty((n,), dtype=acc), q.new_empty((n,), dtype=torch.long))

    @torch.library.register_fake(f"vkernels::{bwd}")
    def _fake_bwd(grad_loss, grad_lse, q, k, bank, temperature, label_smoothing, exclude, lse, loss, bank_grad):
        return (q.new_empty(q.shape), k.new_empty(k.shape),
                bank.new_empty((bank.shape[0] if bank_grad else 0, bank.shape[1])),
                temperature.new_empty(()))

    def setup(ctx, inputs, output):
        q, k, bank, temperature, label_smoothing, exclude = inputs
        loss, lse, rank = output
        ctx.mark_non_differentiable(rank)
        ctx.label_smoothing = label_smoothing
        # loss is returned to the caller (as is for reduction='none' in q's accumulation dtype), and
        # F.cross_entropy does not keep its output, so callers may modify it in place: keep a copy (N values).
        # lse is kept as torch.logsumexp keeps its result (modifying it raises autograd's error, as there).
        ctx.save_for_backward(q, k, bank, temperature, exclude, lse, loss.clone())

    def backward(ctx, g_loss, g_lse, _g_rank):
        q, k, bank, temperature, exclude, lse, loss = ctx.saved_tensors
        g_loss = torch.zeros_like(loss) if g_loss is None else g_loss
        g_lse = torch.zeros_like(lse) if g_lse is None else g_lse
        dq, dk, dbank, dt = bwd_op(g_loss, g_lse, q, k, bank, temperature, ctx.label_smoothing, exclude, lse, loss,
                                   ctx.needs_input_grad[2])
        need = ctx.needs_input_grad
        return (dq if need[0] else None, dk if need[1] else None, dbank if need[2] else None,
                dt if need[3] else None, None, None)

    torch.library.register_autograd(f"vkernels::{fwd}", backward, setup_context=setup)


_backend.register_backends(_register, ("infonce_bank_loss", "infonce_bank_loss_backward"),
                           lambda: _backend.triton_launchers("infonce_bank_loss", "forward", "backward"))
