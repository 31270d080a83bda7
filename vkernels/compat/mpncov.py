"""jiangtaoxie/fast-MPN-COV's `src/representation/MPNCOV.py`: the `MPNCOV` module and the CovpoolLayer / SqrtmLayer /
TriuvecLayer functions, on vkernels.isqrt_cov.

    # from src.representation.MPNCOV import MPNCOV, CovpoolLayer, SqrtmLayer, TriuvecLayer    (theirs)
    from vkernels.compat.mpncov import MPNCOV, CovpoolLayer, SqrtmLayer, TriuvecLayer         # (ours)

Same as theirs: `MPNCOV(iterNum=3, is_sqrt=True, is_vec=True, input_dim=2048, dimension_reduction=None)`, its
attributes (iterNum, is_sqrt, is_vec, dr, output_dim as an int, conv_dr_block = Conv2d(no bias) + BatchNorm2d +
ReLU(inplace)) and so its state_dict keys; kaiming_normal_(fan_out, relu) conv init and BatchNorm (1, 0); the output
shapes ((B, n, 1) with is_vec, n = C(C+1)/2; (B, C, C) otherwise); NaN for an image whose covariance is exactly zero
(its trace is 0 and theirs divides by it).

How each path runs:
- MPNCOV with is_sqrt: one fused vkernels.isqrt_cov call (covariance, Newton-Schulz, upper triangle) from the
  features; no M x M centring matrix, no per-iteration Y / Z stack kept for backward.
- MPNCOV without is_sqrt, and CovpoolLayer: the covariance by centring X (plain PyTorch; our op has no
  covariance-only output). Theirs multiplies by an M x M matrix built in fp32, so in fp64 the two differ by that
  matrix's rounding unless 1/M is exact in fp32.
- SqrtmLayer on a covariance that CovpoolLayer returned (their MPNCOVResNet's `CovpoolLayer -> SqrtmLayer ->
  TriuvecLayer`), with neither tensor modified since: the fused op again, from CovpoolLayer's features (the
  gradient then reaches the features directly, not through the covariance tensor; hooks on it see nothing).
  SqrtmLayer on any other matrix: the same Newton-Schulz iteration in plain PyTorch with autograd (our op takes
  features, not a matrix). Its gradient is theirs: their hand-written backward returns the transpose of the exact
  gradient (equal to it for symmetric output gradients, i.e. wherever Covpool comes next upstream, and torch's
  gradcheck fails on theirs), so this path transposes autograd's gradient to match.
- TriuvecLayer: indexing, (B, C, C) -> (B, C(C+1)/2, 1).
"""
from __future__ import annotations

import torch

from vkernels.ops.isqrt_cov import isqrt_cov

__all__ = ["MPNCOV", "CovpoolLayer", "SqrtmLayer", "TriuvecLayer"]

_SOURCE = "_vkernels_covpool_source"  # attribute CovpoolLayer leaves on its output: (features, their version, own)


class MPNCOV(torch.nn.Module):
    """Matrix power normalized covariance pooling (iSQRT-COV, Li et al., CVPR 2018), fast-MPN-COV's interface.

    Args:
        iterNum: Newton-Schulz iterations.
        is_sqrt: apply the matrix square root; else return the covariance.
        is_vec: return the upper triangle, (B, n, 1); else (B, C, C).
        input_dim: channels of the input (used only by the reduction).
        dimension_reduction: None, or the channels of a 1x1 conv + BN + ReLU applied first.
    """

    def __init__(self, iterNum=3, is_sqrt=True, is_vec=True, input_dim=2048, dimension_reduction=None):
        super().__init__()
        self.iterNum = iterNum
        self.is_sqrt = is_sqrt
        self.is_vec = is_vec
        self.dr = dimension_reduction
        if self.dr is not None:
            self.conv_dr_block = torch.nn.Sequential(
                torch.nn.Conv2d(input_dim, self.dr, kernel_size=1, stride=1, bias=False),
                torch.nn.BatchNorm2d(self.dr),
                torch.nn.ReLU(inplace=True))
        output_dim = self.dr if self.dr else input_dim  # `if self.dr` as theirs: dimension_reduction=0 -> input_dim
        self.output_dim = int(output_dim * (output_dim + 1) / 2) if self.is_vec else int(output_dim * output_dim)
        self._init_weight()

    def _init_weight(self):
        for m in self.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.constant_(m.weight, 1)
                torch.nn.init.constant_(m.bias, 0)

    def _cov_pool(self, x):
        return CovpoolLayer(x)

    def _sqrtm(self, x):
        return SqrtmLayer(x, self.iterNum)

    def _triuvec(self, x):
        return TriuvecLayer(x)

    def forward(self, x):
        if self.dr is not None:
            x = self.conv_dr_block(x)
        if self.is_sqrt:
            # Theirs runs one step for iterNum < 1 too.
            out = _nan_where_zero_trace(isqrt_cov(x, max(int(self.iterNum), 1), triu=bool(self.is_vec)), x)
            return out.unsqueeze(-1) if self.is_vec else out
        x = _covariance(x)
        return self._triuvec(x) if self.is_vec else x

    def extra_repr(self) -> str:
        return f"iterNum={self.iterNum}, is_sqrt={self.is_sqrt}, is_vec={self.is_vec}, output_dim={self.output_dim}"


def CovpoolLayer(var):
    """(B, C, H, W) -> (B, C, C) covariance (1/M) X (I - 11^T/M) X^T, M = HW."""
    cov = _covariance(var)
    setattr(cov, _SOURCE, (var, var._version, cov._version))
    return cov


def SqrtmLayer(var, iterN):
    """(B, C, C) -> sqrt(tr) Y_iterN, the coupled Newton-Schulz iterate of var / tr(var) (theirs: iterN >= 1)."""
    src = getattr(var, _SOURCE, None)
    if src is not None and src[0]._version == src[1] and var._version == src[2]:
        return _nan_where_zero_trace(isqrt_cov(src[0], max(int(iterN), 1), triu=False), src[0])
    return _newton_schulz(_TransposedGrad.apply(var), iterN)


def TriuvecLayer(var):
    """(B, C, C) -> (B, C(C+1)/2, 1): the row-major upper triangle incl. the diagonal."""
    C = var.shape[1]
    iu = torch.triu_indices(C, C, device=var.device)
    return var[:, iu[0], iu[1]].unsqueeze(-1)


def _covariance(x):
    B, C, H, W = x.shape
    X = x.reshape(B, C, H * W)
    Xc = X - X.mean(2, keepdim=True)
    return torch.bmm(Xc, Xc.transpose(1, 2)) / (H * W)


class _TransposedGrad(torch.autograd.Function):
    """Identity whose backward transposes the last two axes of the gradient (their Sqrtm's gradient convention)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.mT


def _newton_schulz(sigma, iters):
    # Theirs with iterN < 1 runs one step too; the trace is not clamped, so a zero matrix gives NaN as theirs.
    C = sigma.shape[-1]
    t = torch.diagonal(sigma, dim1=1, dim2=2).sum(-1)
    A = sigma / t[:, None, None]
    eye = torch.eye(C, dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    Y, Z = A, eye
    for _ in range(max(int(iters), 1)):
        T = 0.5 * (3 * eye - torch.bmm(Z, Y))
        Y, Z = torch.bmm(Y, T), torch.bmm(T, Z)
    return Y * t.sqrt()[:, None, None]


def _nan_where_zero_trace(out, x):
    """NaN for every image whose covariance trace is exactly 0, as theirs (our op clamps the trace and gives 0)."""
    with torch.no_grad():
        X = x.reshape(x.shape[0], x.shape[1], -1)
        zero = torch.var(X, dim=2, correction=0).sum(1) == 0
        scale = torch.where(zero, torch.nan, 1.0).to(out.dtype)
    return out * scale.view((-1,) + (1,) * (out.ndim - 1))
