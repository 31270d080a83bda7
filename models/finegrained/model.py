"""The classifier: backbone (any module returning (B, C, H, W) feature maps; SmallResNet by default, defined here,
nothing downloaded) -> head -> linear.

Heads (all from vkernels, so `--impl reference` swaps every one for its pure-PyTorch reference):
  gap       global average pooling, C features (first order: the baseline)
  bilinear  vkernels.nn.BilinearPooling(signed sqrt + L2, upper triangle), C(C+1)/2 features (B-CNN)
  cbp       vkernels.nn.CompactBilinearPooling(C, C, D) (Tensor Sketch) + signed sqrt + L2, D features
  rm        vkernels.nn.RandomMaclaurinPooling(C, C, D) + signed sqrt + L2, D features
  isqrt     vkernels.nn.ISqrtCov(iters=5, triu=True), C(C+1)/2 features (iSQRT-COV)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import vkernels

HEADS = ("gap", "bilinear", "cbp", "rm", "isqrt")


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class SmallResNet(nn.Module):
    """A ResNet-ish feature extractor for small images: stem + 3 stages (strides 1, 2, 2). Output (B, 4 width, H/4,
    W/4) ReLU features, like a ResNet's last stage (what fine-grained heads pool)."""

    def __init__(self, in_channels: int = 3, width: int = 16, blocks: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and b == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_channels = cin
        self.stage_channels = (width, 2 * width, 4 * width)
        self.stage_ends = tuple((i + 1) * blocks - 1 for i in range(3))

    def forward(self, x):
        return self.layers(self.stem(x))

    def forward_stages(self, x) -> list:
        """The output of each stage: [(B, w, H, W), (B, 2w, H/2, W/2), (B, 4w, H/4, W/4)] (cross-layer heads)."""
        x, out = self.stem(x), []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.stage_ends:
                out.append(x)
        return out


class LinearBackbone(nn.Module):
    """Two 3x3 convs with no nonlinearity: features are a linear function of the image, so their average carries
    only the image's mean (zero on the covariance task) and only second-order heads can read the channel
    covariance. With a ReLU backbone, average pooling can learn covariance too: E relu(w.x) = sqrt(w' S w / 2 pi)
    for Gaussian x depends on S (see the notes), so the ResNet's gap is a strong baseline there, not a chance one."""

    def __init__(self, in_channels: int = 3, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, 2 * width, 3, 1, 1), nn.Conv2d(2 * width, 4 * width, 3, 2, 1))
        self.out_channels = 4 * width

    def forward(self, x):
        return self.net(x)


class _SqrtL2(nn.Module):
    """B-CNN's normalisation after a compact pooling: sign(z) sqrt(|z| + eps), then L2 per sample."""

    def forward(self, z):
        return F.normalize(torch.sign(z) * torch.sqrt(torch.abs(z) + 1e-10), dim=1)


class _GAP(nn.Module):
    def forward(self, x):
        return x.mean((2, 3))


class _Compact(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.pool, self.norm = pool, _SqrtL2()

    def forward(self, x):
        # The compact ops sum over locations; divide by HW so the scale matches the other heads' means.
        return self.norm(self.pool(x, x) / (x.shape[2] * x.shape[3]))


def make_head(name: str, channels: int, dim: int = 2048, seed: int = 0) -> tuple[nn.Module, int]:
    """(head module, its output size) for `name` in HEADS on `channels`-channel feature maps."""
    if name == "gap":
        return _GAP(), channels
    if name == "bilinear":
        return vkernels.nn.BilinearPooling(normalize="signed_sqrt_l2", triu=True), channels * (channels + 1) // 2
    if name == "isqrt":
        m = vkernels.nn.ISqrtCov(iters=5, triu=True)
        return m, m.output_dim(channels)
    if name in ("cbp", "rm"):
        cls = "CompactBilinearPooling" if name == "cbp" else "RandomMaclaurinPooling"
        if not hasattr(vkernels.nn, cls):
            raise SystemExit(f"--head {name} needs vkernels.nn.{cls}, which this build of vkernels does not have")
        return _Compact(getattr(vkernels.nn, cls)(channels, channels, dim, sum_pool=True, seed=seed)), dim
    raise ValueError(f"head must be one of {', '.join(HEADS)}; got {name!r}")


class FineGrainedClassifier(nn.Module):
    def __init__(self, num_classes: int, head: str = "bilinear", backbone: nn.Module | None = None,
                 channels: int | None = None, in_channels: int = 3, width: int = 16, dim: int = 2048, seed: int = 0,
                 backbone_kind: str = "resnet"):
        super().__init__()
        if backbone is None:
            backbone = (SmallResNet if backbone_kind == "resnet" else LinearBackbone)(in_channels, width)
        self.backbone = backbone
        channels = channels or getattr(self.backbone, "out_channels", None)
        if channels is None:
            raise ValueError("FineGrainedClassifier: pass channels= (the backbone's output channels) for a custom "
                             "backbone")
        self.head_name = head
        self.head, feat = make_head(head, channels, dim, seed)
        # BatchNorm over the pooled features puts the heads on one footing for the linear layer (gap's features
        # and the normalised second-order ones differ in scale by orders of magnitude).
        self.norm = nn.BatchNorm1d(feat)
        self.fc = nn.Linear(feat, num_classes)

    def forward(self, x, target=None):
        """Logits (B, classes); with `target` (B,) the training loss instead (the interface of models.finegrained.archs,
        so one training loop serves every model)."""
        f = self.head(self.backbone(x))
        logits = self.fc(self.norm(f.reshape(f.shape[0], -1)))
        return logits if target is None else F.cross_entropy(logits, target)
