"""infonce_bank_loss in plain PyTorch: MoCo's loss with a memory bank, materialising the N x (K+1) logits.

The test oracle and the explicit fallback (impl="reference"). Returns per-row (loss, lse, rank) like the op.
"""
import torch
import torch.nn.functional as F


def infonce_bank_loss(q, k, bank, temperature, label_smoothing=0.0, exclude=None):
    """Per-row loss, lse and rank of MoCo's `cross_entropy(cat([l_pos, l_neg], 1) / T, zeros)`.

    q, k: (N, d); bank: (K, d); temperature: float or 0-dim tensor; exclude: None or int64 (N,) / (N, E), -1 = none.
    loss: (N,), lse: (N,) logsumexp of the kept logits, rank: (N,) int64, kept bank logits > the positive's.
    """
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,kc->nk", q, bank)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    zeros = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    if exclude is None:
        loss = F.cross_entropy(logits, zeros, reduction="none", label_smoothing=label_smoothing)
        keep = torch.ones_like(logits, dtype=torch.bool)
    else:
        ex = exclude.reshape(exclude.shape[0], -1)
        keep = torch.ones_like(logits, dtype=torch.bool)
        rows = torch.arange(ex.shape[0], device=ex.device).unsqueeze(1).expand_as(ex)
        valid = ex >= 0
        keep[rows[valid], ex[valid] + 1] = False
        logits = logits.masked_fill(~keep, float("-inf"))
        # cross_entropy over the kept candidates; label smoothing spreads over those only.
        nll = torch.logsumexp(logits, 1) - logits[:, 0]
        mean = logits.masked_fill(~keep, 0).sum(1) / keep.sum(1)
        loss = (1 - label_smoothing) * nll + label_smoothing * (torch.logsumexp(logits, 1) - mean)
    lse = torch.logsumexp(logits, dim=1)
    rank = ((logits[:, 1:] > logits[:, :1]) & keep[:, 1:]).sum(1)
    return loss, lse, rank
