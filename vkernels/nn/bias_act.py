"""BiasAct: a learnable per-channel bias followed by vkernels.bias_act."""
from __future__ import annotations

import torch

from vkernels.ops.bias_act import bias_act

__all__ = ["BiasAct"]


class BiasAct(torch.nn.Module):
    """y = clamp(act(x + bias) * gain, -clamp, clamp), bias of shape [num_channels] along `dim`.

    Args:
        num_channels: size of x along `dim`; None for no bias.
        act, alpha, gain, clamp, dim, impl: as in `vkernels.bias_act`.
        bias_init: initial value of the bias.
    """

    def __init__(self, num_channels: int | None = None, act: str = "linear", alpha: float | None = None,
                 gain: float | None = None, clamp: float | None = None, dim: int = 1, bias_init: float = 0.0,
                 impl: str = "auto", device=None, dtype=None):
        super().__init__()
        self.act, self.alpha, self.gain, self.clamp, self.dim, self.impl = act, alpha, gain, clamp, dim, impl
        self.bias = None
        if num_channels is not None:
            self.bias = torch.nn.Parameter(torch.full((num_channels,), float(bias_init), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bias_act(x, self.bias, self.dim, self.act, self.alpha, self.gain, self.clamp, self.impl)

    def extra_repr(self) -> str:
        n = None if self.bias is None else self.bias.numel()
        return f"{n}, act={self.act!r}, alpha={self.alpha}, gain={self.gain}, clamp={self.clamp}, dim={self.dim}"
