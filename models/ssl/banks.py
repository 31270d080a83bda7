"""The two vkernels pieces the models use, in one place: the memory bank and the InfoNCE-with-bank loss."""
from __future__ import annotations

import torch

import vkernels
try:
    from vkernels.nn import MemoryBank
except ImportError:  # TEMPORARY until ssl-bank lands
    from models.ssl._standin_bank import MemoryBank

__all__ = ["MemoryBank", "bank_loss", "bank_rows"]


def bank_loss(q, k, bank, temperature, exclude=None):
    """(mean InfoNCE loss of q against positives k and the bank's rows, rank of each positive among candidates)."""
    return vkernels.infonce_bank_loss(q, k, bank.memory, temperature, exclude=exclude, return_rank=True)


def bank_rows(bank, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of the bank (detached copies)."""
    return bank.memory[index].detach().clone()
