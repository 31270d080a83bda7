"""Weighted k-nearest-neighbour accuracy (Wu et al. 2018, NPID, section 3.4): the usual SSL probe without training."""
from __future__ import annotations

import torch


@torch.no_grad()
def weighted_knn(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                 num_classes: int, k: int = 200, temperature: float = 0.07, chunk: int = 256) -> float:
    """Top-1 accuracy of NPID's weighted kNN: each test feature votes with its k most cosine-similar training
    features, weight exp(sim / T), summed per class; the class with the largest sum wins.

    train (M, d) and test (n, d) are L2-normalised features; labels int64. k is clipped to M.
    """
    k = min(k, train.shape[0])
    train = train.float()
    correct = 0
    for i in range(0, test.shape[0], chunk):
        sim = test[i:i + chunk].float() @ train.t()
        w, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_labels[idx], (w / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[i:i + chunk]).sum())
    return correct / max(1, test.shape[0])
