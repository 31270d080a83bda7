"""infonce_bank_loss in Triton: the bank sweep of vkernels/triton/_infonce.py (shared with infonce_bank_partial) with
the positive key as the first candidate, plus the positive's own terms of the backward (O(N d), in PyTorch).

Forward: one split kernel over (query tiles x bank splits), one merge kernel that starts each row from the positive
(max, sumexp) = (l_pos, 1). Backward: the bank's terms of dq and dbank from _infonce's kernels, then the positive's
terms of dq and dk and the temperature's gradient from per-row sums (the same formulas as the C++ kernel).
"""
import torch

from vkernels.triton._infonce import backward_bank_sweep, forward_rows


def forward(q, k, bank, temperature, label_smoothing, exclude):
    """(loss, lse, rank) per row, as the C++ op returns them."""
    return forward_rows(q, k, bank, temperature, label_smoothing, exclude, with_positive=True)


def backward(grad_loss, grad_lse, q, k, bank, temperature, label_smoothing, exclude, lse, loss, bank_grad):
    """(dq, dk, dbank or an empty [0, d], dtemperature), as the C++ backward op returns them."""
    sw = backward_bank_sweep(grad_loss, grad_lse, q, k, bank, temperature, label_smoothing, exclude, lse, bank_grad)
    lse, loss, inv_t, g = sw.lse, loss.to(sw.acc), sw.inv_t, sw.g
    # The positive's terms, O(N d), and the temperature's gradient from per-row sums (see the C++ kernel).
    ppos = (sw.lpos - lse).exp()
    wpos = (sw.coef * ppos - sw.sm - g * (1 - label_smoothing)) * inv_t
    qf, kf = q.to(sw.acc), k.to(sw.acc)
    dq = sw.dq + wpos[:, None] * kf
    dk = wpos[:, None] * qf
    e_sum = sw.es + ppos * (sw.lpos - lse)  # sum_c p (l - lse): centred, see the C++ kernel
    dt = -(inv_t[0] * (sw.coef * e_sum + sw.h * lse + g * loss).sum())
    # Contiguous like the C++ op's (the fake kernel promises it): dk would otherwise follow q's strides.
    return dq.to(q.dtype).contiguous(), dk.to(q.dtype).contiguous(), sw.dbank, dt.to(temperature.dtype)
