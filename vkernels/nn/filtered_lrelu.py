"""FilteredLReLU: StyleGAN3's filtered leaky ReLU with an optional learnable bias; the filters are buffers."""
from __future__ import annotations

import math

import torch

from vkernels.nn._float32_buffers import keep_float32_buffers
from vkernels.ops.filtered_lrelu import filtered_lrelu
from vkernels.ops.upfirdn2d import setup_filter

__all__ = ["FilteredLReLU"]


def _filter(f, device):
    if f is None:
        return None
    if isinstance(f, torch.Tensor):
        return f.detach().to(device=device, dtype=torch.float32) if device is not None else f.detach().float()
    return setup_filter(f, device=device if device is not None else torch.device("cpu"))


class FilteredLReLU(torch.nn.Module):
    """y = vkernels.filtered_lrelu(x, fu, fd, bias, up, down, padding, gain, slope, clamp, flip_filter).

    Args:
        channels: C, the size of the bias; required when bias=True.
        fu, fd: up/down filters: a float32 tensor used as is (1-D separable or 2-D, as StyleGAN3's design_lowpass_filter
            returns), a list of taps for `setup_filter` (normalised; >= 8 taps stay 1-D), or None (identity).
        up, down, padding, gain, slope, clamp, flip_filter, impl: as in `vkernels.filtered_lrelu`.
        bias: learn a per-channel bias (initialised to zero) added before the upsampling.
    """

    def __init__(self, channels: int | None = None, fu=None, fd=None, up: int = 1, down: int = 1, padding=0,
                 gain: float = math.sqrt(2), slope: float = 0.2, clamp: float | None = None,
                 flip_filter: bool = False, bias: bool = True, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if bias and channels is None:
            raise ValueError("FilteredLReLU: channels is required when bias=True")
        self.up, self.down, self.padding, self.gain, self.slope = up, down, padding, gain, slope
        self.clamp, self.flip_filter, self.impl = clamp, flip_filter, impl
        # Buffers: they follow .to() and the state dict, and are never trained (no filter gradient, as StyleGAN3).
        self.register_buffer("fu", _filter(fu, device))
        self.register_buffer("fd", _filter(fd, device))
        self.bias = torch.nn.Parameter(torch.zeros(channels, device=device, dtype=dtype)) if bias else None

    def _apply(self, fn, recurse=True):
        return keep_float32_buffers(self, ("fu", "fd"), fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = None if self.bias is None else self.bias.to(x.dtype)
        return filtered_lrelu(x, self.fu, self.fd, b, self.up, self.down, self.padding, self.gain, self.slope,
                              self.clamp, self.flip_filter, impl=self.impl)

    def extra_repr(self) -> str:
        shape = lambda f: None if f is None else tuple(f.shape)  # noqa: E731
        return (f"fu={shape(self.fu)}, fd={shape(self.fd)}, up={self.up}, down={self.down}, padding={self.padding}, "
                f"gain={self.gain:.4g}, slope={self.slope}, clamp={self.clamp}, bias={self.bias is not None}")
