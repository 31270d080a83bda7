"""Upsample2d / Downsample2d / Filter2d: a FIR filter held as a buffer and one call of the matching helper."""
from __future__ import annotations

import torch

from vkernels.nn._float32_buffers import keep_float32_buffers
from vkernels.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upsample2d

__all__ = ["Upsample2d", "Downsample2d", "Filter2d"]


class _FIR(torch.nn.Module):
    def __init__(self, filter, padding, flip_filter, gain, impl, normalize, separable, device):
        super().__init__()
        self.padding, self.flip_filter, self.gain, self.impl = padding, flip_filter, gain, impl
        # A buffer: moves with .to(), saved in the state dict, never trained (upfirdn2d has no filter gradient).
        self.register_buffer("filter", setup_filter(filter, device=device, normalize=normalize, separable=separable))

    def _apply(self, fn, recurse=True):
        return keep_float32_buffers(self, ("filter",), fn, recurse)

    def extra_repr(self) -> str:
        return (f"filter={tuple(self.filter.shape)}, padding={self.padding}, flip_filter={self.flip_filter}, "
                f"gain={self.gain}")


class Upsample2d(_FIR):
    """y = vkernels.upsample2d(x, filter, up, padding, flip_filter, gain): (N, C, H, W) -> (N, C, H*uy, W*ux).

    Args:
        filter: taps for `setup_filter` (default [1, 3, 3, 1], StyleGAN2's); normalize/separable as there.
        up, padding, flip_filter, gain, impl: as in `vkernels.upsample2d`.
    """

    def __init__(self, filter=(1, 3, 3, 1), up=2, padding=0, flip_filter=False, gain=1, impl="auto",
                 normalize=True, separable=None, device=None):
        super().__init__(filter, padding, flip_filter, gain, impl, normalize, separable, device)
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample2d(x, self.filter, self.up, self.padding, self.flip_filter, self.gain, impl=self.impl)

    def extra_repr(self) -> str:
        return f"up={self.up}, " + super().extra_repr()


class Downsample2d(_FIR):
    """y = vkernels.downsample2d(x, filter, down, padding, flip_filter, gain): (N, C, H, W) -> (N, C, H//dy, W//dx).

    Args:
        filter: taps for `setup_filter` (default [1, 3, 3, 1], StyleGAN2's); normalize/separable as there.
        down, padding, flip_filter, gain, impl: as in `vkernels.downsample2d`.
    """

    def __init__(self, filter=(1, 3, 3, 1), down=2, padding=0, flip_filter=False, gain=1, impl="auto",
                 normalize=True, separable=None, device=None):
        super().__init__(filter, padding, flip_filter, gain, impl, normalize, separable, device)
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return downsample2d(x, self.filter, self.down, self.padding, self.flip_filter, self.gain, impl=self.impl)

    def extra_repr(self) -> str:
        return f"down={self.down}, " + super().extra_repr()


class Filter2d(_FIR):
    """y = vkernels.filter2d(x, filter, padding, flip_filter, gain): same size out (a blur for [1, 2, 1])."""

    def __init__(self, filter=(1, 2, 1), padding=0, flip_filter=False, gain=1, impl="auto", normalize=True,
                 separable=None, device=None):
        super().__init__(filter, padding, flip_filter, gain, impl, normalize, separable, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return filter2d(x, self.filter, self.padding, self.flip_filter, self.gain, impl=self.impl)
