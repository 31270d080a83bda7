"""A BigGAN-style conditional generator block (Brock et al. 2019, G residual block) on vkernels' public API.

main path: cond-BN -> ReLU -> upsample x2 -> conv3x3 -> cond-BN -> ReLU -> conv3x3; skip: upsample x2 -> conv1x1.
BigGAN upsamples after the first BN + ReLU; nearest upsampling commutes with a per-channel affine + ReLU and leaves
batch statistics unchanged, so the first three steps are one fused `vkernels.upsample_norm_act` call
(ConditionalBatchNorm2d with scale=2): the 4x larger pre-conv activation is written once, never read back for norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import vkernels

__all__ = ["BigGANBlock", "build_biggan_block", "BigGANGenerator", "ProjectionDiscriminator", "hinge_d_loss",
           "hinge_g_loss"]


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


class BigGANGenerator(torch.nn.Module):
    """Class-conditional generator: z -> linear -> (4 x 4) -> BigGANBlock (x2 up, cond-BN) ... -> BN-ReLU -> conv -> tanh.

    z: (N, z_dim), y: (N,) int64 labels -> (N, img_channels, resolution, resolution). The final BN + ReLU is one
    `vkernels.nn.UpsampleNormAct(scale=1)` call. No shared embedding / hierarchical z (BigGAN's full G), no
    self-attention: a small model for CPU-sized runs.
    """

    def __init__(self, z_dim: int = 64, num_classes: int = 10, resolution: int = 16, ch: int = 64,
                 img_channels: int = 1):
        super().__init__()
        n_up = int(math.log2(resolution)) - 2
        chs = [min(ch * 2 ** (n_up - i), ch * 8) for i in range(n_up + 1)]  # 4x4 widest, halving per block
        self.z_dim, self.num_classes, self.chs = z_dim, num_classes, chs
        self.fc = torch.nn.Linear(z_dim, chs[0] * 16)
        self.blocks = torch.nn.ModuleList(BigGANBlock(chs[i], chs[i + 1], num_classes) for i in range(n_up))
        self.out_bn = vkernels.nn.UpsampleNormAct(chs[-1], scale=1, norm="batch", act="relu")
        self.out_conv = torch.nn.Conv2d(chs[-1], img_channels, 3, padding=1)

    def forward(self, z, y):
        x = self.fc(z).reshape(z.shape[0], self.chs[0], 4, 4)
        for blk in self.blocks:
            x = blk(x, y)
        return torch.tanh(self.out_conv(self.out_bn(x)))


class _DBlock(torch.nn.Module):
    """BigGAN D block: [relu] -> conv3x3 -> relu -> conv3x3 -> avgpool 2; skip conv1x1 -> avgpool 2."""

    def __init__(self, in_ch, out_ch, first=False):
        super().__init__()
        sn = torch.nn.utils.parametrizations.spectral_norm
        self.first = first
        self.conv1 = sn(torch.nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.conv2 = sn(torch.nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = sn(torch.nn.Conv2d(in_ch, out_ch, 1))

    def forward(self, x):
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        return h + F.avg_pool2d(self.skip(x), 2)


def d_blocks(resolution: int, ch: int, img_channels: int) -> tuple[torch.nn.ModuleList, int]:
    """BigGAN D's residual down blocks from `resolution` to 4 x 4 (channels ch, 2 ch, .. up to 8 ch), and the
    channels of their output."""
    n_down = int(math.log2(resolution)) - 2
    chs = [img_channels] + [min(ch * 2 ** i, ch * 8) for i in range(n_down)]
    return torch.nn.ModuleList(_DBlock(chs[i], chs[i + 1], first=i == 0) for i in range(n_down)), chs[-1]


def d_features(blocks: torch.nn.ModuleList, img: torch.Tensor) -> torch.Tensor:
    """(n, C) features h of a projection discriminator: the blocks, ReLU, sum pooling over space."""
    h = img
    for blk in blocks:
        h = blk(h)
    return F.relu(h).sum((2, 3))


class ProjectionDiscriminator(torch.nn.Module):
    """Projection discriminator (Miyato & Koyama 2018, as in BigGAN): residual down blocks with spectral norm,
    ReLU, global sum pooling, logit = linear(h) + <embed(y), h>. Plain torch ops (nothing here to fuse)."""

    def __init__(self, num_classes: int = 10, resolution: int = 16, ch: int = 64, img_channels: int = 1):
        super().__init__()
        sn = torch.nn.utils.parametrizations.spectral_norm
        self.blocks, c = d_blocks(resolution, ch, img_channels)
        self.linear = sn(torch.nn.Linear(c, 1))
        self.embed = sn(torch.nn.Embedding(num_classes, c))

    def forward(self, img, y):
        h = d_features(self.blocks, img)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1)


def hinge_d_loss(real_logits, fake_logits):
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g_loss(fake_logits):
    return -fake_logits.mean()
