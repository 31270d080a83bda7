"""InfoNCEWithBank: MoCo's contrastive loss against a bank of negatives, with an optionally learnable temperature."""
from __future__ import annotations

import math

import torch

from vkernels.ops.infonce_bank_loss import infonce_bank_loss

__all__ = ["InfoNCEWithBank"]


class InfoNCEWithBank(torch.nn.Module):
    """loss = vkernels.infonce_bank_loss(q, k, bank, T, **kw), bank a tensor or the rows of a `MemoryBank`.

    With `bank=MemoryBank(...)` (a submodule: its buffers are in this module's state_dict):
    `forward(q, k, index=None, exclude=None)` reads the bank (local, gathered or sharded across ranks; staged writes
    are applied first) and `update_bank(keys, index=None)` stages this step's keys (enqueue for mode="queue"; the
    momentum update of rows `index` for mode="momentum"). For a momentum bank `index` also excludes each query's own
    row from its negatives (NPID), unless `exclude` is given. forward(q, k, tensor) keeps the plain-tensor form.

    Args:
        temperature: T > 0 (the initial value when learnable).
        learnable_temperature: learn T as log_temperature = log T (a parameter, kept positive by exp), as CLIP does;
            its gradient comes from the op's backward (no N x K logits either).
        reduction, label_smoothing, impl: defaults for `vkernels.infonce_bank_loss`; forward(**kw) overrides them.
        bank: None or a `vkernels.nn.MemoryBank`.
    """

    def __init__(self, temperature: float = 0.07, learnable_temperature: bool = False, reduction: str = "mean",
                 label_smoothing: float = 0.0, impl: str = "auto", bank=None):
        super().__init__()
        from vkernels.nn.memory_bank import MemoryBank
        if bank is not None and not isinstance(bank, MemoryBank):
            raise TypeError(f"InfoNCEWithBank: bank must be a vkernels.nn.MemoryBank or None, got "
                            f"{type(bank).__name__} (pass a plain tensor to forward instead)")
        self.bank = bank
        if not temperature > 0:
            raise ValueError(f"InfoNCEWithBank: temperature must be > 0, got {temperature!r}")
        self.learnable_temperature = learnable_temperature
        self.defaults = dict(reduction=reduction, label_smoothing=label_smoothing, impl=impl)
        if learnable_temperature:
            self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            self._temperature = float(temperature)

    @property
    def temperature(self) -> torch.Tensor | float:
        return self.log_temperature.exp() if self.learnable_temperature else self._temperature

    def forward(self, q: torch.Tensor, k: torch.Tensor, bank: torch.Tensor | None = None, *,
                index: torch.Tensor | None = None, **kw):
        kw = {**self.defaults, **kw}
        if bank is not None:
            if index is not None:
                raise ValueError("InfoNCEWithBank: index is for a MemoryBank; with a bank tensor pass exclude=")
            return infonce_bank_loss(q, k, bank, self.temperature, **kw)
        if self.bank is None:
            raise ValueError("InfoNCEWithBank: no bank: pass one to forward(q, k, bank) or build the module with "
                             "bank=MemoryBank(...)")
        if index is not None:
            if self.bank.mode != "momentum":
                raise ValueError("InfoNCEWithBank: index is for mode='momentum' banks (the rows to exclude and "
                                 "update); a queue bank takes update_bank(keys)")
            if kw.get("exclude") is None:
                kw["exclude"] = index
        return self.bank.loss(q, k, self.temperature, **kw)

    def update_bank(self, keys: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Stage this step's keys: enqueue (mode="queue") or the momentum update of rows `index` (mode="momentum").
        Safe before or after backward: the rows are written at the next forward."""
        if self.bank is None:
            raise ValueError("InfoNCEWithBank.update_bank: the module has no MemoryBank")
        if self.bank.mode == "queue":
            if index is not None:
                raise ValueError("InfoNCEWithBank.update_bank: index is for mode='momentum' banks")
            self.bank.enqueue(keys)
        else:
            if index is None:
                raise ValueError("InfoNCEWithBank.update_bank: a mode='momentum' bank needs index")
            self.bank.update(keys, index)

    def extra_repr(self) -> str:
        t = float(self.temperature.detach() if self.learnable_temperature else self.temperature)
        return f"temperature={t:.4g}, learnable_temperature={self.learnable_temperature}, " + \
            ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
