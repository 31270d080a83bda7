"""bilinear_pooling in plain PyTorch, written from the definition (B-CNN, Lin et al. 2015).

The test oracle and the explicit fallback (impl="reference"); autograd runs through it. Computes in the input's
dtype (the tests run it in fp64 as the oracle and in low precision to measure that precision's own error).
"""
import torch
import torch.nn.functional as F


def bilinear_pooling(x, y=None, normalize="none", triu=False, eps=1e-10):
    """z_b = vec(X_b Y_b^T / HW) (upper triangle incl. diagonal, row-major, with triu); with
    normalize="signed_sqrt_l2": F.normalize(sign(z) sqrt(|z| + eps), dim=1). Returns (B, P)."""
    B, C1, H, W = x.shape
    X = x.reshape(B, C1, H * W)
    Y = X if y is None else y.reshape(B, y.shape[1], H * W)
    G = torch.bmm(X, Y.transpose(1, 2)) / (H * W)
    if triu:
        iu = torch.triu_indices(C1, C1, device=x.device)
        z = G[:, iu[0], iu[1]]
    else:
        z = G.reshape(B, C1 * G.shape[2])
    if normalize == "signed_sqrt_l2":
        z = F.normalize(torch.sign(z) * torch.sqrt(torch.abs(z) + eps), dim=1, eps=1e-12)
    return z
