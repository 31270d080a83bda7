"""random_maclaurin_pooling in plain PyTorch: the test oracle and the explicit fallback (impl="reference").

Random Maclaurin features of degree 2 (Kar & Karnick 2012, as used for bilinear pooling by Gao et al., CVPR 2016):
phi(x_l, y_l)_d = (w1_d . x_l)(w2_d . y_l) / sqrt(D), summed over locations when sum_pool.
"""
import math

import torch

from vkernels._dtypes import acc_dtype


def random_maclaurin_pooling(x, y, w1, w2, sum_pool=True):
    """x: (B, C1, H, W), y: (B, C2, H, W), w1: (D, C1), w2: (D, C2) -> (B, D) (sum_pool) or (B, D, H, W), computed
    per location from the definition in fp32 (fp64 for fp64) and returned in x's dtype."""
    acc = acc_dtype(x.dtype)
    p1 = torch.einsum("dc,bchw->bdhw", w1.to(acc), x.to(acc))
    p2 = torch.einsum("dc,bchw->bdhw", w2.to(acc), y.to(acc))
    out = p1 * p2 / math.sqrt(w1.shape[0])
    if sum_pool:
        out = out.sum((2, 3))
    return out.to(x.dtype)
