"""Normalization layers built on vkernels.upsample_norm_act: UpsampleNormAct (BN/IN state like nn.BatchNorm2d),
AdaIN (StyleGAN1's style-driven instance norm) and ConditionalBatchNorm2d (BigGAN's class-conditional batch norm)."""
from __future__ import annotations

import torch

from vkernels.nn._norm_state import NormState
from vkernels.ops.upsample_norm_act import upsample_norm_act

__all__ = ["UpsampleNormAct", "AdaIN", "ConditionalBatchNorm2d"]


class UpsampleNormAct(NormState):
    """up(x) -> batch / instance norm (with nn.BatchNorm2d's running statistics and affine parameters) ->
    activation, as one `vkernels.upsample_norm_act` call.

    Args:
        num_features: C.
        scale, mode, act, alpha, gain, clamp, impl: as in `vkernels.upsample_norm_act`.
        norm: "batch", "instance" or "none" ("adain": use AdaIN).
        affine: learnable per-channel weight (ones) and bias (zeros).
        track_running_stats, momentum, eps: as in nn.BatchNorm2d (batch norm only).
    forward(x, style_scale=None, style_bias=None): optional per-sample (N, C) affine on top (see the op).
    """

    def __init__(self, num_features: int, scale: int = 2, mode: str = "nearest", norm: str = "batch",
                 affine: bool = True, track_running_stats: bool = True, momentum: float | None = 0.1,
                 eps: float = 1e-5, act: str = "lrelu", alpha: float = 0.2, gain: float = 1.0,
                 clamp: float | None = None, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"UpsampleNormAct: norm must be 'batch', 'instance' or 'none' (AdaIN is its own "
                             f"module), got {norm!r}")
        self._init_state(num_features, norm, track_running_stats, momentum, eps, device, dtype)
        self.scale, self.mode, self.act, self.alpha, self.gain, self.clamp, self.impl = (
            scale, mode, act, alpha, gain, clamp, impl)
        self.affine = affine
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = torch.nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.weight = self.bias = None

    def forward(self, x, style_scale=None, style_bias=None):
        rm, rv, training, momentum = self._norm_args() if self.norm == "batch" else (None, None, True, 0.1)
        return upsample_norm_act(x, self.scale, self.mode, self.norm, self.weight, self.bias, style_scale,
                                 style_bias, rm, rv, training, momentum, self.eps, self.act, self.alpha, self.gain,
                                 self.clamp, self.impl)

    def extra_repr(self):
        return (f"{self.num_features}, scale={self.scale}, mode={self.mode!r}, norm={self.norm!r}, "
                f"affine={self.affine}, act={self.act!r}, gain={self.gain}, clamp={self.clamp}")


class AdaIN(torch.nn.Module):
    """Adaptive instance norm (Huang & Belongie 2017) with StyleGAN1's style mapping: (scale_delta, bias) =
    Linear(style), y = act(instance_norm(up(x)) * (1 + scale_delta) + bias).

    The 1 + delta convention is StyleGAN1's `StyleMod` (x * (style[:, 0] + 1) + style[:, 1]); MUNIT feeds the linear
    output as the scale directly -- pass `residual_scale=False` for that.

    Args:
        num_features: C.  style_dim: S, the style vector's size (style is (N, S)).
        scale, mode, act, alpha, gain, clamp, eps, impl: as in `vkernels.upsample_norm_act` (act "linear" default).
    """

    def __init__(self, num_features: int, style_dim: int, scale: int = 1, mode: str = "nearest",
                 residual_scale: bool = True, eps: float = 1e-5, act: str = "linear", alpha: float = 0.2,
                 gain: float = 1.0, clamp: float | None = None, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        self.num_features, self.style_dim, self.residual_scale = num_features, style_dim, residual_scale
        self.scale, self.mode, self.eps, self.act, self.alpha, self.gain, self.clamp, self.impl = (
            scale, mode, eps, act, alpha, gain, clamp, impl)
        self.style = torch.nn.Linear(style_dim, 2 * num_features, device=device, dtype=dtype)
        with torch.no_grad():
            self.style.bias.zero_()
            if not residual_scale:
                self.style.bias[:num_features].fill_(1.0)

    def forward(self, x, style):
        if style.ndim != 2 or style.shape != (x.shape[0], self.style_dim):
            raise ValueError(f"AdaIN: style must have shape (N, style_dim) = ({x.shape[0]}, {self.style_dim}), "
                             f"got {tuple(style.shape)}")
        s, t = self.style(style).chunk(2, dim=1)
        if self.residual_scale:
            s = 1 + s
        return upsample_norm_act(x, self.scale, self.mode, "adain", style_scale=s, style_bias=t, eps=self.eps,
                                 act=self.act, alpha=self.alpha, gain=self.gain, clamp=self.clamp, impl=self.impl)


class ConditionalBatchNorm2d(NormState):
    """Class-conditional batch norm (BigGAN): y = act(bn(up(x)) * (1 + gain_emb[y]) + bias_emb[y]), with batch
    norm running statistics exactly as nn.BatchNorm2d(affine=False) and per-class embeddings initialised to 0
    (so the layer starts as plain batch norm), as BigGAN's `ccbn` (gain = 1 + linear(y)).

    Args:
        num_features: C.  num_classes: number of class labels.
        scale, mode: optional upsampling before the norm (BigGAN's G block: upsample fused with its first BN).
        momentum, eps, track_running_stats: as in nn.BatchNorm2d.
        act, alpha, gain, clamp, impl: as in `vkernels.upsample_norm_act` (act "linear" by default).
    forward(x, y): y is an int64 (N,) class label tensor, or an (N, num_classes) float tensor (soft labels /
    one-hot: the embedding becomes a linear map, BigGAN's shared-embedding form).
    """

    def __init__(self, num_features: int, num_classes: int, scale: int = 1, mode: str = "nearest",
                 momentum: float | None = 0.1, eps: float = 1e-5, track_running_stats: bool = True,
                 act: str = "linear", alpha: float = 0.2, gain: float = 1.0, clamp: float | None = None,
                 impl: str = "auto", device=None, dtype=None):
        super().__init__()
        self._init_state(num_features, "batch", track_running_stats, momentum, eps, device, dtype)
        self.num_classes = num_classes
        self.scale, self.mode, self.act, self.alpha, self.gain, self.clamp, self.impl = (
            scale, mode, act, alpha, gain, clamp, impl)
        self.gain_embed = torch.nn.Embedding(num_classes, num_features, device=device, dtype=dtype)
        self.bias_embed = torch.nn.Embedding(num_classes, num_features, device=device, dtype=dtype)
        torch.nn.init.zeros_(self.gain_embed.weight)
        torch.nn.init.zeros_(self.bias_embed.weight)

    def forward(self, x, y):
        if y.dtype in (torch.int64, torch.int32):
            if y.shape != (x.shape[0],):
                raise ValueError(f"ConditionalBatchNorm2d: y (labels) must have shape ({x.shape[0]},), got "
                                 f"{tuple(y.shape)}")
            g, b = self.gain_embed(y), self.bias_embed(y)
        else:
            if y.shape != (x.shape[0], self.num_classes):
                raise ValueError(f"ConditionalBatchNorm2d: y must be int64 labels (N,) or (N, num_classes) = "
                                 f"({x.shape[0]}, {self.num_classes}) floats, got {tuple(y.shape)}")
            g, b = y @ self.gain_embed.weight, y @ self.bias_embed.weight
        rm, rv, training, momentum = self._norm_args()
        return upsample_norm_act(x, self.scale, self.mode, "batch", style_scale=1 + g, style_bias=b,
                                 running_mean=rm, running_var=rv, training=training, momentum=momentum, eps=self.eps,
                                 act=self.act, alpha=self.alpha, gain=self.gain, clamp=self.clamp, impl=self.impl)
