"""Probes of frozen features: weighted k-nearest-neighbour accuracy (Wu et al. 2018, NPID, section 3.4), the usual SSL
probe without training, and a linear probe."""
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


def linear_probe(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                 num_classes: int, steps: int = 100, weight_decay: float = 1e-4) -> float:
    """Top-1 held-out accuracy of a linear classifier trained on frozen features (the linear-evaluation protocol,
    here full-batch L-BFGS on standardised features with L2 weight decay; zero init, so no random draws).

    train (M, d), test (n, d) features; labels int64.
    """
    with torch.no_grad():
        train, test = train.float(), test.float()
        mu, sd = train.mean(0), train.std(0).clamp_min(1e-6)
        a, b = (train - mu) / sd, (test - mu) / sd
    w = torch.zeros(a.shape[1], num_classes, device=a.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=a.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, train_labels) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((b @ w + bias).argmax(1) == test_labels).float().mean())
