"""infonce_bank_partial in plain PyTorch: the bank-only log-sum-exp and rank of infonce_bank_loss, with N x K logits.

The test oracle and the explicit fallback (impl="reference")."""
import torch


def infonce_bank_partial(q, k, bank, temperature, exclude=None):
    """lse_i = logsumexp over the kept j of q_i.b_j / T (-inf when all are excluded); rank_i = kept j with
    q_i.b_j > q_i.k_i (logits compared after dividing by T, as the loss does). exclude: None or int64 (N,) / (N, E)."""
    l_pos = torch.einsum("nc,nc->n", q, k) / temperature
    logits = torch.einsum("nc,kc->nk", q, bank) / temperature
    keep = torch.ones_like(logits, dtype=torch.bool)
    if exclude is not None:
        ex = exclude.reshape(exclude.shape[0], -1)
        rows = torch.arange(ex.shape[0], device=ex.device).unsqueeze(1).expand_as(ex)
        valid = ex >= 0
        keep[rows[valid], ex[valid]] = False
        logits = logits.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(logits, dim=1)
    rank = ((logits > l_pos.unsqueeze(1)) & keep).sum(1)
    return lse, rank
