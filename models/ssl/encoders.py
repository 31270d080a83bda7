"""Small encoders for 8-32 pixel images and 1-D signals, heads, and MoCo's split batch norm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are taken per group of N / num_splits consecutive samples.

    This is how one process imitates the per-GPU BN of multi-GPU MoCo (as in MoCo's official CIFAR demo): combined
    with a shuffle of the key batch, a query and its key are normalised with statistics from different groups, so the
    model cannot use BN statistics to find the positive. num_splits=1 is plain BatchNorm. Running statistics are
    the mean over groups. Accepts (N, C, *) input of any rank (images and 1-D signals).
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kw):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"SplitBatchNorm: expected (N, C, *) input, got shape {tuple(x.shape)}")

    def forward(self, x):
        g = self.num_splits
        if not self.training or g == 1:
            return super().forward(x)
        n, c = x.shape[:2]
        if n % g:
            raise ValueError(f"SplitBatchNorm: batch size {n} is not divisible by num_splits={g}")
        # Group i's samples become channel block i of one (N/g, C*g, *) batch: one batch_norm call for all groups.
        xs = x.reshape(g, n // g, c, *x.shape[2:]).transpose(0, 1).reshape(n // g, c * g, *x.shape[2:])
        rm, rv = self.running_mean.repeat(g), self.running_var.repeat(g)
        y = F.batch_norm(xs, rm, rv, self.weight.repeat(g), self.bias.repeat(g), True, self.momentum, self.eps)
        with torch.no_grad():
            self.running_mean.copy_(rm.view(g, c).mean(0))
            self.running_var.copy_(rv.view(g, c).mean(0))
            self.num_batches_tracked += 1
        return y.reshape(n // g, g, c, *x.shape[2:]).transpose(0, 1).reshape(x.shape)


class _Block(nn.Module):
    def __init__(self, cin, cout, stride, conv, norm):
        super().__init__()
        self.c1, self.n1 = conv(cin, cout, 3, stride, 1, bias=False), norm(cout)
        self.c2, self.n2 = conv(cout, cout, 3, 1, 1, bias=False), norm(cout)
        self.skip = None
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(conv(cin, cout, 1, stride, 0, bias=False), norm(cout))

    def forward(self, x):
        y = F.relu(self.n1(self.c1(x)))
        y = self.n2(self.c2(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class ResNetSmall(nn.Module):
    """A ResNet-ish backbone: stem + 3 stages (width w, 2w, 4w; stride 1, 2, 2) of one basic block each, global
    average pool. `ndim` 2 for images (N, C, H, W), 1 for signals (N, C, L). Output: (N, 4w) features."""

    def __init__(self, in_ch: int, width: int = 32, bn_splits: int = 1, ndim: int = 2):
        super().__init__()
        conv = nn.Conv2d if ndim == 2 else nn.Conv1d
        stride0 = 1 if ndim == 2 else 4  # signals are long (hundreds of samples): downsample early

        def norm(c):
            return SplitBatchNorm(c, bn_splits)

        self.stem = nn.Sequential(conv(in_ch, width, 3 if ndim == 2 else 9, stride0, 1 if ndim == 2 else 4,
                                       bias=False), norm(width), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(_Block(width, width, 1, conv, norm), _Block(width, 2 * width, 2, conv, norm),
                                    _Block(2 * width, 4 * width, 2, conv, norm))
        self.out_dim = 4 * width

    def forward(self, x):
        return self.stages(self.stem(x)).flatten(2).mean(2)


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """MoCo v2's projection head: Linear - ReLU - Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class Encoder(nn.Module):
    """backbone -> head -> L2-normalised embedding. `features(x)` gives the pooled backbone features (for kNN)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return F.normalize(self.head(self.backbone(x)), dim=1)

    def features(self, x):
        return F.normalize(self.backbone(x), dim=1)


def set_bn_splits(module: nn.Module, num_splits: int) -> None:
    for m in module.modules():
        if isinstance(m, SplitBatchNorm):
            m.num_splits = num_splits
