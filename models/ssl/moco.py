"""MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder, a momentum key encoder, a queue of keys, an MLP head.

Loss: vkernels.infonce_bank_loss(q, k, queue, T) = MoCo's cross_entropy(cat([q.k, q.queue^T]) / T, 0) without the
N x (K+1) logits. The queue is a vkernels.nn.MemoryBank(mode="queue"); this step's keys are enqueued after the loss,
so they are negatives from the next step on.

Batch norm: shuffled BN, not SyncBatchNorm. The key batch is all-gathered across ranks, permuted with a permutation
every rank draws from the same (seed, step) generator (no broadcast needed), each rank encodes its slice, and the keys
are gathered and un-permuted. Within a rank the encoders' BN computes statistics per group of B / bn_splits samples
(SplitBatchNorm). One process with bn_splits=G therefore behaves like G ranks of MoCo's multi-GPU shuffled BN (the
single-process fallback of MoCo's own CIFAR demo); under torchrun bn_splits=1 gives MoCo's original per-GPU BN.
Either way a query and its positive key are normalised with statistics of different sample groups.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from vkernels.nn import InfoNCEWithBank, MemoryBank


from models.ssl import augment
from models.ssl.data import step_generator
from models.ssl.encoders import Encoder, ResNetSmall, mlp_head
from models.ssl.knn import weighted_knn


class MoCo(nn.Module):
    def __init__(self, in_ch: int, width: int = 32, hidden: int = 512, dim: int = 128, queue_size: int = 4096,
                 m: float = 0.99, temperature: float = 0.2, bn_splits: int = 1, sync: str = "local", seed: int = 0):
        super().__init__()
        self.m = m
        self.encoder_q = Encoder(ResNetSmall(in_ch, width, bn_splits), mlp_head(4 * width, hidden, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        # The queue is the loss module's bank: criterion(q, k) reads it, criterion.update_bank(k) enqueues.
        self.criterion = InfoNCEWithBank(temperature, bank=MemoryBank(queue_size, dim, mode="queue", sync=sync,
                                                                      seed=seed))

    crop_scale = (0.2, 1.0)  # RandomResizedCrop's area range; train.py sets it from --crop-min

    def trainable(self) -> nn.Module:
        return self.encoder_q

    @torch.no_grad()
    def _momentum_update(self):
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters()):
            pk.mul_(self.m).add_(pq.detach(), alpha=1 - self.m)

    @torch.no_grad()
    def _shuffled_keys(self, im_k: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        world = dist.get_world_size() if dist.is_initialized() else 1
        rank = dist.get_rank() if dist.is_initialized() else 0
        b = im_k.shape[0]
        everything = _all_gather(im_k, world)
        perm = torch.randperm(everything.shape[0], generator=g).to(im_k.device)
        k_mine = self.encoder_k(everything[perm[rank * b:(rank + 1) * b]])
        k_all = _all_gather(k_mine, world)
        unshuffled = torch.empty_like(k_all)
        unshuffled[perm] = k_all
        return unshuffled[rank * b:(rank + 1) * b]

    def step(self, net: nn.Module, x: torch.Tensor, idx: torch.Tensor, seed: int, step: int, rank: int):
        """Forward of one training step: (loss, metrics, k). `net` is encoder_q, DDP-wrapped under torchrun."""
        g = step_generator(seed, step, rank)
        im_q, im_k = augment.augment_images(x, g, self.crop_scale), augment.augment_images(x, g, self.crop_scale)
        q = net(im_q)
        self._momentum_update()
        # Same permutation on every rank: the generator ignores the rank.
        k = self._shuffled_keys(im_k, step_generator(seed, step, 0, stream=1))
        loss, rank_of_pos = self.criterion(q, k, return_rank=True)
        return loss, {"acc1": (rank_of_pos == 0).float().mean()}, k

    @torch.no_grad()
    def after_step(self, k: torch.Tensor, idx: torch.Tensor):
        self.criterion.update_bank(k)  # staged: written before the next step's read

    @torch.no_grad()
    def knn(self, data, k: int, t: float, chunk: int = 256) -> dict:
        """kNN of held-out images against the training split embedded by the query encoder (MoCo's CIFAR monitor;
        the queue holds no labels)."""
        train = _embed(self.encoder_q, data.x, chunk)
        test = _embed(self.encoder_q, data.x_test, chunk)
        dev = train.device
        return {"knn": weighted_knn(train, data.y.to(dev), test, data.y_test.to(dev), data.num_classes, k, t)}


def _all_gather(t: torch.Tensor, world: int) -> torch.Tensor:
    if world == 1:
        return t
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


@torch.no_grad()
def _embed(enc: nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    dev = next(enc.parameters()).device
    was = enc.training
    enc.eval()
    out = torch.cat([enc(x[i:i + chunk].to(dev)) for i in range(0, x.shape[0], chunk)])
    enc.train(was)
    return out
