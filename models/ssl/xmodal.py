"""Cross-modal instance discrimination (Morgado et al. 2021, AVID's cross-modal variant) on paired data.

Two encoders (an image CNN for modality A, a 1-D CNN for the signal modality B) and two momentum memory banks with a
row per instance. Each modality's embedding is discriminated against the *other* modality's memory:
    L = InfoNCE(a_i; pos mem_b[i], bank mem_b, exclude i) + InfoNCE(b_i; pos mem_a[i], bank mem_a, exclude i),
both vkernels.infonce_bank_loss calls. After the step, mem_a[i] and mem_b[i] are updated with momentum from a_i and b_i.
Instance identity is shared between the modalities only through the latent that generated both (models/ssl/data.py).
"""
from __future__ import annotations

import torch
from torch import nn

from vkernels.nn import InfoNCEWithBank, MemoryBank

from models.ssl import augment
from models.ssl.data import step_generator
from models.ssl.encoders import Encoder, ResNetSmall
from models.ssl.knn import weighted_knn
from models.ssl.moco import _embed


class TwoTower(nn.Module):
    def __init__(self, in_ch_a: int, in_ch_b: int, width: int, dim: int):
        super().__init__()
        # BN on the embedding (before the L2 norm) centres each modality's batch: without it the cheapest way to
        # lower the cross-modal loss early on, while the positives in the other bank carry no information yet, is to
        # point all of A's embeddings away from the mean of bank B (and vice versa) -- the two modalities collapse
        # onto opposite poles and the loss sits at chance (measured: cos(mean a, mean b) -> -0.98, loss = 2 log M).
        self.a = Encoder(ResNetSmall(in_ch_a, width, ndim=2), nn.Sequential(nn.Linear(4 * width, dim),
                                                                            nn.BatchNorm1d(dim)))
        self.b = Encoder(ResNetSmall(in_ch_b, width, ndim=1), nn.Sequential(nn.Linear(4 * width, dim),
                                                                            nn.BatchNorm1d(dim)))

    def forward(self, xa, xb):
        return self.a(xa), self.b(xb)


class CrossModal(nn.Module):
    def __init__(self, in_ch_a: int, in_ch_b: int, num_instances: int, width: int = 32, dim: int = 128,
                 temperature: float = 0.07, bank_momentum: float = 0.5, sync: str = "local", seed: int = 0):
        super().__init__()
        self.towers = TwoTower(in_ch_a, in_ch_b, width, dim)
        # crit_a holds memory A and scores modality-B queries against it; crit_b the reverse. Different seeds: the
        # two banks must not start equal.
        self.crit_a, self.crit_b = (InfoNCEWithBank(temperature, bank=MemoryBank(
            num_instances, dim, mode="momentum", momentum=bank_momentum, sync=sync, seed=2 * seed + i))
            for i in (0, 1))
        self.signals = None  # (M, 1, L) training signals, set by train.py (paired with the images by index)

    crop_scale = (0.2, 1.0)  # RandomResizedCrop's area range; train.py sets it from --crop-min

    def trainable(self) -> nn.Module:
        return self.towers

    def step(self, net, x, idx, seed, step, rank):
        g = step_generator(seed, step, rank)
        xa = augment.augment_images(x, g, self.crop_scale)
        xb = augment.augment_signal(self.signals[idx].to(x.device), g)
        a, b = net(xa, xb)
        idx = idx.to(a.device)
        pos_b = self.crit_b.bank.negatives()[idx].clone()  # b's memory of instance i: the positive for a_i
        pos_a = self.crit_a.bank.negatives()[idx].clone()
        la, ra = self.crit_b(a, pos_b, index=idx, return_rank=True)
        lb, rb = self.crit_a(b, pos_a, index=idx, return_rank=True)
        return la + lb, {"acc_a2b": (ra == 0).float().mean(), "acc_b2a": (rb == 0).float().mean()}, (a.detach(),
                                                                                                       b.detach())

    @torch.no_grad()
    def after_step(self, ab, idx):
        a, b = ab
        self.crit_a.update_bank(a, idx.to(a.device))
        self.crit_b.update_bank(b, idx.to(b.device))

    @torch.no_grad()
    def knn(self, data, k, t, chunk=256):
        """Held-out images against memory A (within-modal) and against memory B (cross-modal retrieval)."""
        test = _embed(self.towers.a, data.x_test, chunk)
        dev = test.device
        y, yt, c = data.y.to(dev), data.y_test.to(dev), data.num_classes
        return {"knn": weighted_knn(self.crit_a.bank.negatives().to(test.dtype), y, test, yt, c, k, t),
                "knn_cross": weighted_knn(self.crit_b.bank.negatives().to(test.dtype), y, test, yt, c, k, t)}
