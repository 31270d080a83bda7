"""NPID (Wu et al. 2018): instance discrimination against a momentum memory bank with one row per training image.

Non-parametric softmax: P(i | v) = exp(m_i . v / T) / sum_j exp(m_j . v / T) over all M memory rows. Written as
vkernels.infonce_bank_loss(v, m_i, memory, T, exclude=i): the positive is the instance's own memory row and
`exclude` drops that row from the bank's candidates, so it is counted once (as the positive), not twice. This is the
full softmax over M (NPID approximated it with NCE and 4096 sampled noise rows; the fused loss makes the exact one
cheap). After the optimizer step the rows are updated m_i <- normalize(mu m_i + (1 - mu) v_i), mu = 0.5, by
vkernels.nn.MemoryBank(mode="momentum").
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


class NPID(nn.Module):
    def __init__(self, in_ch: int, num_instances: int, width: int = 32, dim: int = 128, temperature: float = 0.07,
                 bank_momentum: float = 0.5, sync: str = "local", seed: int = 0):
        super().__init__()
        self.encoder = Encoder(ResNetSmall(in_ch, width), nn.Linear(4 * width, dim))
        self.criterion = InfoNCEWithBank(temperature, bank=MemoryBank(
            num_instances, dim, mode="momentum", momentum=bank_momentum, sync=sync, seed=seed))

    crop_scale = (0.2, 1.0)  # RandomResizedCrop's area range; train.py sets it from --crop-min

    def trainable(self) -> nn.Module:
        return self.encoder

    def step(self, net, x, idx, seed, step, rank):
        v = net(augment.augment_images(x, step_generator(seed, step, rank), self.crop_scale))
        idx = idx.to(v.device)
        pos = self.criterion.bank.negatives()[idx].clone()  # own memory row (a copy: the bank is written in place)
        # index=idx: the row is the positive, so it is excluded from the negatives (counted once).
        loss, r = self.criterion(v, pos, index=idx, return_rank=True)
        return loss, {"acc1": (r == 0).float().mean()}, v.detach()

    @torch.no_grad()
    def after_step(self, v, idx):
        self.criterion.update_bank(v, idx.to(v.device))

    @torch.no_grad()
    def knn(self, data, k, t, chunk=256):
        """NPID's monitor: held-out images (encoder in eval mode) against the memory bank's rows and their labels."""
        test = _embed(self.encoder, data.x_test, chunk)
        train = self.criterion.bank.negatives().to(test.dtype)
        dev = test.device
        return {"knn": weighted_knn(train, data.y.to(dev), test, data.y_test.to(dev), data.num_classes, k, t)}
