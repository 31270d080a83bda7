"""A BigGAN-style conditional generator block (Brock et al. 2019, G residual block) on vkernels' public API.

main path: cond-BN -> ReLU -> upsample x2 -> conv3x3 -> cond-BN -> ReLU -> conv3x3; skip: upsample x2 -> conv1x1.
BigGAN upsamples after the first BN + ReLU; nearest upsampling commutes with a per-channel affine + ReLU and leaves
batch statistics unchanged, so the first three steps are one fused `vkernels.upsample_norm_act` call
(ConditionalBatchNorm2d with scale=2): the 4x larger pre-conv activation is written once, never read back for norm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import vkernels

__all__ = ["BigGANBlock", "build_biggan_block"]


class BigGANBlock(torch.nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_classes: int, upsample: bool = True, impl: str = "auto"):
        super().__init__()
        s = 2 if upsample else 1
        self.scale = s
        self.bn1 = vkernels.nn.ConditionalBatchNorm2d(in_ch, num_classes, scale=s, act="relu", impl=impl)
        self.conv1 = torch.nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn2 = vkernels.nn.ConditionalBatchNorm2d(out_ch, num_classes, act="relu", impl=impl)
        self.conv2 = torch.nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = torch.nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x, y):
        h = self.conv1(self.bn1(x, y))
        h = self.conv2(self.bn2(h, y))
        sk = F.interpolate(x, scale_factor=self.scale, mode="nearest") if self.scale > 1 else x
        return h + self.skip(sk)


def build_biggan_block(in_ch: int, out_ch: int, num_classes: int, upsample: bool = True,
                       impl: str = "auto") -> BigGANBlock:
    """A BigGAN G block: (N, in_ch, H, W), labels (N,) -> (N, out_ch, 2H, 2W)."""
    return BigGANBlock(in_ch, out_ch, num_classes, upsample, impl)
