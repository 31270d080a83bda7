"""ModulatedConv2d: StyleGAN2's SynthesisLayer (affine style, modulated conv, noise, bias, activation) on
vkernels.modulated_conv2d."""
from __future__ import annotations

import math

import torch

from vkernels.ops.modulated_conv2d import modulated_conv2d
from vkernels.ops.upfirdn2d import setup_filter
from vkernels.reference.bias_act import ACTIVATIONS

__all__ = ["ModulatedConv2d"]


class ModulatedConv2d(torch.nn.Module):
    """StyleGAN2 synthesis layer: styles = affine(w) (or given directly), then vkernels.modulated_conv2d.

    Args:
        in_channels, out_channels, kernel_size: the convolution (weight ~ N(0, 1), equalized learning rate is in
            the affine layer; demodulation removes the weight's scale).
        w_dim: dimension of the latent w fed to forward(); None = forward() takes styles (N, in_channels) directly.
        up: 1 or 2 (FIR upsampling with resample_filter).
        demodulate, act, clamp: as in vkernels.modulated_conv2d (toRGB layers use demodulate=False, act="linear").
        use_noise: add per-pixel noise times a learned noise_strength (initialized to 0).
        resolution: output resolution, for noise_mode="const" (a fixed noise buffer).
        impl: backend choice passed to the op.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, w_dim: int | None = None,
                 up: int = 1, demodulate: bool = True, act: str = "lrelu", clamp: float | None = None,
                 use_noise: bool = True, resolution: int | None = None, resample_filter=(1, 3, 3, 1),
                 impl: str = "auto"):
        super().__init__()
        self.up, self.demodulate, self.act, self.clamp, self.impl = up, demodulate, act, clamp, impl
        self.padding = kernel_size // 2
        self.weight = torch.nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = torch.nn.Parameter(torch.zeros(out_channels))
        self.w_dim = w_dim
        if w_dim is not None:
            self.affine_weight = torch.nn.Parameter(torch.randn(in_channels, w_dim))
            self.affine_bias = torch.nn.Parameter(torch.ones(in_channels))
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.use_noise = use_noise
        if use_noise:
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
            if resolution is not None:
                self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))
        # toRGB-style layers (no demodulation) scale the styles by 1/sqrt(fan_in), as StyleGAN's ToRGBLayer does.
        self.style_gain = 1.0 if demodulate else 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def styles(self, w: torch.Tensor) -> torch.Tensor:
        if self.w_dim is None:
            return w
        return torch.addmm(self.affine_bias, w, self.affine_weight.t() * (1 / math.sqrt(self.w_dim)))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1.0) -> torch.Tensor:
        if noise_mode not in ("random", "const", "none"):
            raise ValueError(f"ModulatedConv2d: noise_mode must be random, const or none; got {noise_mode!r}")
        s = self.styles(w) * self.style_gain
        noise = None
        if self.use_noise and noise_mode == "random":
            res = (x.shape[2] * self.up, x.shape[3] * self.up)
            noise = torch.randn(x.shape[0], 1, *res, device=x.device, dtype=x.dtype)
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const.to(x.dtype)
        # .float(): module.double()/.half() casts the filter buffer too; upfirdn2d takes fp32 filters.
        act_gain = None if gain == 1 else gain * ACTIVATIONS[self.act][2]
        clamp = None if self.clamp is None else self.clamp * gain
        return modulated_conv2d(x, self.weight, s, demodulate=self.demodulate, up=self.up, padding=self.padding,
                                resample_filter=self.resample_filter.float(), flip_weight=self.up == 1,
                                fused_modconv=fused_modconv, noise=noise,
                                noise_strength=self.noise_strength if noise is not None else None, bias=self.bias,
                                act=self.act, gain=act_gain, clamp=clamp, impl=self.impl)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return (f"{i}, {o}, kernel_size={k}, w_dim={self.w_dim}, up={self.up}, demodulate={self.demodulate}, "
                f"act={self.act!r}, clamp={self.clamp}")
