"""The packed upper-triangle layout of triu=True outputs (bilinear_pooling's and isqrt_cov's): row-major, the
diagonal included, C (C + 1) / 2 entries per matrix."""
import triton
import triton.language as tl


@triton.jit
def triu_index(i, j, C):
    """Offset of entry (i, j) or its mirror (j, i) in a packed row-major upper triangle of a C x C matrix."""
    lo = tl.minimum(i, j)
    hi = tl.maximum(i, j)
    return lo * C - (lo * (lo - 1)) // 2 + (hi - lo)
