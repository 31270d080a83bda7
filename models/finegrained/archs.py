"""Fine-grained models beyond backbone + one pooling head, each a thin model whose hot layer is a vkernels op.

Every model's forward(x) gives logits (B, classes) and forward(x, target) the training loss, so one loop in
models/finegrained/train.py trains them all; `--impl reference` swaps every vkernels op for its pure-PyTorch reference.

  hbp     cross-layer bilinear (HBP, Yu et al., ECCV 2018): the three stage outputs of SmallResNet, average-pooled to
          the last stage's resolution and 1x1-projected to P channels, vkernels.bilinear_pooling(x_i, x_j) of every
          pair of stages (signed sqrt + L2 per pair, P*P each), concatenated.
  dbt     grouped bilinear (DBT, Zheng et al., NeurIPS 2019): a learned 1x1 conv (the semantic grouping layer) trained
          with a grouping loss, then bilinear_pooling inside each of G channel groups in ONE batched call:
          (B, G*Cg, h, w) -> (B*G, Cg, h, w) is a view of contiguous NCHW, so no copy and no `groups` argument.
  cin     channel interaction (CIN's self-channel interaction, Gao et al., AAAI 2020): the Gram G = X X^T / HW from
          bilinear_pooling, W = softmax(max_j G - G) per row, Z = X + BN(conv1x1(W X)), then a pooling head.
  apinet  pairwise interaction (API-Net, Zhuang et al., AAAI 2020): features from a pooling head; for in-batch pairs
          a mutual vector m = MLP([f1; f2]), gates g_i = sigmoid(m * f_i), four gated features classified, plus the
          score-ranking loss. Test: the classifier on a single image's features.
  racnn   attention crop in the manner of RA-CNN / S3N: class activation map -> box around its peak region ->
          zoom (affine_grid + grid_sample) -> a second backbone; a pooling head at both scales, logits summed.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import vkernels
from models.finegrained.model import FineGrainedClassifier, LinearBackbone, SmallResNet, make_head

# Archs that take a pooling head (--head); hbp and dbt are their own pooling.
TAKES_HEAD = ("single", "cin", "apinet", "racnn")
ARCHS = ("single", "hbp", "dbt", "cin", "apinet", "racnn")


def _backbone(kind: str, in_channels: int, width: int) -> nn.Module:
    if kind not in ("resnet", "linear"):
        raise ValueError(f"backbone must be 'resnet' or 'linear', got {kind!r}")
    return (SmallResNet if kind == "resnet" else LinearBackbone)(in_channels, width)


class _Classifier(nn.Module):
    """BatchNorm1d + Linear on pooled features (as FineGrainedClassifier: puts every head on one footing)."""

    def __init__(self, feat: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(feat)
        self.fc = nn.Linear(feat, num_classes)

    def forward(self, f):
        return self.fc(self.norm(f.reshape(f.shape[0], -1)))


def _loss_or_logits(logits, target):
    return logits if target is None else F.cross_entropy(logits, target)


# ----------------------------------------------------------------------------------------------------------- hbp
class CrossLayerBilinear(nn.Module):
    """HBP: bilinear pooling between projected feature maps of different stages, every pair, concatenated."""

    PAIRS = ((0, 2), (1, 2), (0, 1))

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, proj: int | None = None,
                 backbone_kind: str = "resnet"):
        super().__init__()
        if backbone_kind != "resnet":
            raise ValueError(f"hbp needs the SmallResNet's stages (backbone 'resnet'), got backbone {backbone_kind!r}")
        self.backbone = SmallResNet(in_channels, width)
        proj = proj or self.backbone.out_channels
        # HBP's projection layer: 1x1 conv per layer to one width, so every pair has the same P*P size.
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, proj, 1, bias=False), nn.BatchNorm2d(proj), nn.ReLU())
                                  for c in self.backbone.stage_channels)
        self.classifier = _Classifier(len(self.PAIRS) * proj * proj, num_classes)

    def features(self, x):
        stages = self.backbone.forward_stages(x)
        size = stages[-1].shape[-2:]
        p = [proj(F.adaptive_avg_pool2d(s, size)) for proj, s in zip(self.proj, stages)]
        return torch.cat([vkernels.bilinear_pooling(p[i], p[j], normalize="signed_sqrt_l2") for i, j in self.PAIRS],
                         1)

    def forward(self, x, target=None):
        return _loss_or_logits(self.classifier(self.features(x)), target)


# ----------------------------------------------------------------------------------------------------------- dbt
class GroupedBilinear(nn.Module):
    """DBT-style: a learned 1x1 conv groups channels (grouping loss), bilinear pooling within each group.

    Grouping: fixed assignment of output channel i to group i // Cg; the 1x1 conv learns which input channels feed
    each group, pushed by the grouping loss (intra-group cosine similarity of channel maps up, inter-group down):
        L_group = mean_{i~j, i!=j} (1 - d_ij) + mean_{i!~j} d_ij,   d_ij = G_ij / sqrt(G_ii G_jj),
    with G = bilinear_pooling(z) the channel Gram (d >= 0 after the ReLU). DBT's own form of the constraint and its
    group-shuffled interactions are not reproduced; output: G groups x Cg(Cg+1)/2 (signed sqrt + L2 per group)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, groups: int = 4,
                 group_weight: float = 0.1, backbone_kind: str = "resnet"):
        super().__init__()
        self.backbone = _backbone(backbone_kind, in_channels, width)
        c = self.backbone.out_channels
        if groups < 1 or c % groups:
            raise ValueError(f"dbt: groups must divide the backbone's {c} channels, got groups={groups}")
        self.groups, self.group_weight = groups, group_weight
        self.group = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        cg = c // groups
        gid = torch.arange(c) // cg
        same = gid[:, None] == gid[None, :]
        self.register_buffer("same", same & ~torch.eye(c, dtype=torch.bool), persistent=False)
        self.register_buffer("other", ~same, persistent=False)
        self.classifier = _Classifier(groups * cg * (cg + 1) // 2, num_classes)

    def grouped_input(self, z):
        """(B, G*Cg, h, w) -> (B*G, Cg, h, w): a view (no copy) of contiguous NCHW; a channels_last z is copied once
        by .contiguous() (its group and batch strides cannot merge into one)."""
        b, c, h, w = z.shape
        return z.contiguous().view(b * self.groups, c // self.groups, h, w)

    def grouping_loss(self, z):
        b, c = z.shape[:2]
        gram = vkernels.bilinear_pooling(z).view(b, c, c)
        d = gram.diagonal(dim1=1, dim2=2).clamp_min(1e-12).sqrt()
        cos = gram / (d[:, :, None] * d[:, None, :])
        return (1 - cos[:, self.same]).mean() + cos[:, self.other].mean()

    def forward(self, x, target=None):
        z = self.group(self.backbone(x))
        pooled = vkernels.bilinear_pooling(self.grouped_input(z), normalize="signed_sqrt_l2", triu=True)
        logits = self.classifier(pooled.view(z.shape[0], -1))
        if target is None:
            return logits
        return F.cross_entropy(logits, target) + self.group_weight * self.grouping_loss(z)


# ----------------------------------------------------------------------------------------------------------- cin
class ChannelInteraction(nn.Module):
    """CIN's self-channel interaction: each channel gathers the channels least similar to it (complementary ones).

    The Gram is X X^T / HW (bilinear_pooling's mean over locations; CIN's sum over locations differs by the factor HW,
    which acts as the softmax's temperature). CIN's contrastive (cross-image) interaction loss is not included."""

    def __init__(self, num_classes: int, head: str = "gap", in_channels: int = 3, width: int = 16, dim: int = 1024,
                 seed: int = 0, backbone_kind: str = "resnet"):
        super().__init__()
        self.backbone = _backbone(backbone_kind, in_channels, width)
        c = self.backbone.out_channels
        self.phi = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head, feat = make_head(head, c, dim, seed)
        self.classifier = _Classifier(feat, num_classes)

    def interact(self, x):
        b, c, h, w = x.shape
        gram = vkernels.bilinear_pooling(x).view(b, c, c)
        weight = torch.softmax(gram.amax(-1, keepdim=True) - gram, dim=-1)
        y = torch.bmm(weight, x.reshape(b, c, h * w)).view(b, c, h, w)
        return x + self.phi(y)

    def forward(self, x, target=None):
        return _loss_or_logits(self.classifier(self.head(self.interact(self.backbone(x)))), target)


# -------------------------------------------------------------------------------------------------------- apinet
class PairwiseInteraction(nn.Module):
    """API-Net on a pooling head's features. Training pairs each image with its nearest same-class and nearest
    other-class image in the batch (Euclidean distance of the features, as API-Net); images without a same-class
    partner in the batch only get their other-class pair."""

    def __init__(self, num_classes: int, head: str = "bilinear", in_channels: int = 3, width: int = 16,
                 dim: int = 1024, seed: int = 0, hidden: int = 256, margin: float = 0.05,
                 backbone_kind: str = "resnet"):
        super().__init__()
        self.backbone = _backbone(backbone_kind, in_channels, width)
        self.head, feat = make_head(head, self.backbone.out_channels, dim, seed)
        self.norm = nn.BatchNorm1d(feat)
        self.mutual = nn.Sequential(nn.Linear(2 * feat, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, feat))
        self.fc = nn.Linear(feat, num_classes)
        self.margin = margin

    def embed(self, x):
        f = self.head(self.backbone(x))
        return self.norm(f.reshape(f.shape[0], -1))

    @staticmethod
    def pairs(f, target):
        """(a, b) index tensors: every image with its nearest same-class and nearest other-class batch mate."""
        dist = torch.cdist(f, f)
        same = target[:, None] == target[None, :]
        eye = torch.eye(len(target), dtype=torch.bool, device=f.device)
        inf = torch.full_like(dist, float("inf"))
        d_intra = torch.where(same & ~eye, dist, inf)
        d_inter = torch.where(~same, dist, inf)
        rows = torch.arange(len(target), device=f.device)
        a, b = [], []
        for d in (d_intra, d_inter):
            val, j = d.min(1)
            ok = torch.isfinite(val)
            a.append(rows[ok])
            b.append(j[ok])
        return torch.cat(a), torch.cat(b)

    def forward(self, x, target=None):
        f = self.embed(x)
        if target is None:
            return self.fc(f)
        a, b = self.pairs(f.detach(), target)
        fa, fb = f[a], f[b]
        m = self.mutual(torch.cat([fa, fb], 1))
        ga, gb = torch.sigmoid(m * fa), torch.sigmoid(m * fb)
        logits = self.fc(torch.cat([fa + fa * ga, fa + fa * gb, fb + fb * gb, fb + fb * ga]))  # self, other, ...
        labels = torch.cat([target[a], target[a], target[b], target[b]])
        ce = F.cross_entropy(logits, labels)
        p = torch.softmax(logits, 1).gather(1, labels[:, None]).view(4, -1)
        # Score ranking: each image's own gate should give its true class a higher score than its partner's gate.
        rank = F.relu(p[1] - p[0] + self.margin).mean() + F.relu(p[3] - p[2] + self.margin).mean()
        return ce + rank


# --------------------------------------------------------------------------------------------------------- racnn
class AttentionCrop(nn.Module):
    """Two scales: the coarse classifier's class activation map picks a box, the image is zoomed to it and
    classified by a second backbone. Both scales pool with `head`; test logits are their sum.

    CAM: a 1x1 conv on the coarse features (trained by its own cross entropy on the spatial mean); the map of the
    predicted class, min-max normalised, thresholded at `threshold`; the box bounds the cells above it, widened to at
    least `min_side` of the image side. The box is not differentiated (as S3N / WS-DAN; RA-CNN's APN and its ranking
    loss are not reproduced). Loss: CE(coarse) + CE(fine) + CE(cam) + CE(coarse + fine)."""

    def __init__(self, num_classes: int, head: str = "bilinear", in_channels: int = 3, width: int = 16,
                 dim: int = 1024, seed: int = 0, threshold: float = 0.5, min_side: float = 0.5,
                 backbone_kind: str = "resnet"):
        super().__init__()
        kw = dict(in_channels=in_channels, width=width, dim=dim, backbone_kind=backbone_kind)
        self.coarse = FineGrainedClassifier(num_classes, head, seed=seed, **kw)
        self.cam = nn.Conv2d(self.coarse.backbone.out_channels, num_classes, 1)
        self.fine = FineGrainedClassifier(num_classes, head, seed=seed + 1, **kw)
        self.threshold, self.min_side = threshold, min_side

    def boxes(self, act):
        """(B, h, w) activation -> (B, 2) centres and (B, 2) sides, (x, y) order, in [0, 1] image units."""
        lo, hi = act.amin((1, 2), keepdim=True), act.amax((1, 2), keepdim=True)
        mask = (act - lo) >= self.threshold * (hi - lo).clamp_min(1e-12)
        centre, side = [], []
        for hit in (mask.any(1), mask.any(2)):  # columns (x), rows (y); an empty mask gives the whole image
            n = hit.shape[1]
            first = hit.int().argmax(1)
            last = n - 1 - hit.flip(1).int().argmax(1)
            lo_, hi_ = first.float() / n, (last.float() + 1) / n
            s = (hi_ - lo_).clamp(min=self.min_side, max=1.0)
            centre.append(((lo_ + hi_) / 2).clamp(s / 2, 1 - s / 2))
            side.append(s)
        return torch.stack(centre, 1), torch.stack(side, 1)

    def zoom(self, x, centre, side):
        """The boxes of x resampled to x's size (bilinear)."""
        theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1] = side[:, 0], side[:, 1]  # [-1, 1] units: half side = side
        theta[:, 0, 2], theta[:, 1, 2] = 2 * centre[:, 0] - 1, 2 * centre[:, 1] - 1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _locate(self, feat):
        """(CAM logits (B, classes), box centres, box sides) from the coarse features."""
        cams = self.cam(feat)
        cam_logits = cams.mean((2, 3))
        with torch.no_grad():
            k = cam_logits.argmax(1)
            centre, side = self.boxes(cams[torch.arange(len(k), device=k.device), k])
        return cam_logits, centre, side

    @torch.no_grad()
    def crop_boxes(self, x):
        """The boxes the model zooms into, (B, 4) rows (x0, y0, x1, y1) in [0, 1] image units."""
        _, centre, side = self._locate(self.coarse.backbone(x))
        return torch.cat([centre - side / 2, centre + side / 2], 1)

    def forward(self, x, target=None):
        feat = self.coarse.backbone(x)
        logits1 = self._classify(self.coarse, feat)
        cam_logits, centre, side = self._locate(feat)
        logits2 = self.fine(self.zoom(x, centre, side))
        logits = logits1 + logits2
        if target is None:
            return logits
        return (F.cross_entropy(logits1, target) + F.cross_entropy(logits2, target)
                + F.cross_entropy(cam_logits, target) + F.cross_entropy(logits, target))

    @staticmethod
    def _classify(clf: FineGrainedClassifier, feat):
        f = clf.head(feat)
        return clf.fc(clf.norm(f.reshape(f.shape[0], -1)))


def build(arch: str, num_classes: int, head: str | None = None, *, width: int = 16, dim: int = 1024, seed: int = 0,
          backbone_kind: str = "resnet", in_channels: int = 3) -> nn.Module:
    """The model for `arch` in ARCHS (`head` for the archs in TAKES_HEAD)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}; got {arch!r}")
    if arch in TAKES_HEAD:
        kw = dict(in_channels=in_channels, width=width, dim=dim, seed=seed, backbone_kind=backbone_kind)
        cls = {"single": FineGrainedClassifier, "cin": ChannelInteraction, "apinet": PairwiseInteraction,
               "racnn": AttentionCrop}[arch]
        return cls(num_classes, head, **kw)
    cls = CrossLayerBilinear if arch == "hbp" else GroupedBilinear
    return cls(num_classes, in_channels=in_channels, width=width, backbone_kind=backbone_kind)
