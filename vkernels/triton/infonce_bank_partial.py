"""infonce_bank_partial in Triton: the bank sweep of vkernels/triton/_infonce.py (shared with infonce_bank_loss)
without the positive: each row's (max, sumexp) starts empty, so a row whose bank entries are all excluded has
lse = -inf, rank 0 and no gradient. The backward is the sweep's dq and dbank with grad_loss = 0, and the
temperature's gradient from the per-row sums.
"""
import torch

from vkernels.triton._infonce import backward_bank_sweep, forward_rows


def partial(q, k, bank, temperature, exclude):
    """(lse, rank) per row over the bank alone, as the C++ op infonce_bank_partial returns them."""
    _, lse, rank = forward_rows(q, k, bank, temperature, 0.0, exclude, with_positive=False)
    return lse, rank


def partial_backward(grad_lse, q, bank, temperature, exclude, lse, bank_grad):
    """(dq, dbank or an empty [0, d], dtemperature), as the C++ op infonce_bank_partial_backward returns them."""
    sw = backward_bank_sweep(torch.zeros_like(lse), grad_lse, q, q, bank, temperature, 0.0, exclude, lse, bank_grad)
    # Rows with everything excluded (lse = -inf) have no gradient.
    per_row = torch.where(torch.isneginf(sw.lse), torch.zeros_like(sw.lse), sw.h * (sw.es + sw.lse))
    dt = -(sw.inv_t[0] * per_row.sum())
    return sw.dq.to(q.dtype).contiguous(), sw.dbank, dt.to(temperature.dtype)
