"""isqrt_cov in plain PyTorch, following MPNCOV's Covpool / Sqrtm / Triuvec (Li et al., CVPR 2018).

The test oracle and the explicit fallback (impl="reference"); autograd runs through every iterate (it keeps them
all, as MPNCOV's Sqrtm does). Written from the definition in the input's dtype.
"""
import torch

TRACE_FLOOR = 1e-30  # as csrc/ops/isqrt_cov.h: zero covariance gives 0, not 0/0


def covariance(x):
    """(1/M) X Ibar X^T with Ibar = I - 11^T/M applied as centering (MPNCOV's Covpool)."""
    B, C, H, W = x.shape
    X = x.reshape(B, C, H * W)
    Xc = X - X.mean(2, keepdim=True)
    return torch.bmm(Xc, Xc.transpose(1, 2)) / (H * W)


def newton_schulz_sqrt(sigma, iters):
    """sqrt(t) Y_iters from the coupled Newton-Schulz iteration on A = sigma / t, t = tr sigma (MPNCOV's Sqrtm)."""
    C = sigma.shape[-1]
    t = torch.diagonal(sigma, dim1=1, dim2=2).sum(-1).clamp_min(TRACE_FLOOR)
    A = sigma / t[:, None, None]
    eye = torch.eye(C, dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    Y, Z = A, eye
    for _ in range(iters):
        T = 0.5 * (3 * eye - torch.bmm(Z, Y))
        Y, Z = torch.bmm(Y, T), torch.bmm(T, Z)
    return Y * t.sqrt()[:, None, None]


def triu_vec(m):
    """Row-major upper triangle incl. the diagonal (MPNCOV's Triuvec), (B, C(C+1)/2)."""
    C = m.shape[-1]
    iu = torch.triu_indices(C, C, device=m.device)
    return m[:, iu[0], iu[1]]


def isqrt_cov(x, iters=5, triu=True):
    out = newton_schulz_sqrt(covariance(x), iters)
    return triu_vec(out) if triu else out
