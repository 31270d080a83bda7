"""InfoNCEWithBank: MoCo's contrastive loss against a bank of negatives, with an optionally learnable temperature."""
from __future__ import annotations

import math

import torch

from vkernels.ops.infonce_bank_loss import infonce_bank_loss

__all__ = ["InfoNCEWithBank"]


class InfoNCEWithBank(torch.nn.Module):
    """loss = vkernels.infonce_bank_loss(q, k, bank, T, **kw).

    Args:
        temperature: T > 0 (the initial value when learnable).
        learnable_temperature: learn T as log_temperature = log T (a parameter, kept positive by exp), as CLIP does;
            its gradient comes from the op's backward (no N x K logits either).
        reduction, label_smoothing, impl: defaults for `vkernels.infonce_bank_loss`; forward(**kw) overrides them.
    """

    def __init__(self, temperature: float = 0.07, learnable_temperature: bool = False, reduction: str = "mean",
                 label_smoothing: float = 0.0, impl: str = "auto"):
        super().__init__()
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

    def forward(self, q: torch.Tensor, k: torch.Tensor, bank: torch.Tensor, **kw):
        return infonce_bank_loss(q, k, bank, self.temperature, **{**self.defaults, **kw})

    def extra_repr(self) -> str:
        t = float(self.temperature.detach() if self.learnable_temperature else self.temperature)
        return f"temperature={t:.4g}, learnable_temperature={self.learnable_temperature}, " + \
            ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
