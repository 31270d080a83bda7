"""Correctly rounded division and square root for Triton kernels, fp32 and fp64 alike.

On a GPU Triton lowers fp32 `/` to div.full.f32 (at most 2 ulp) and `tl.sqrt` to sqrt.approx.f32; the interpreter,
where CI runs the kernels, computes both exactly. Kernels whose results the tests compare with a reference
(normalisations: norms, inverse norms, traces) use these instead, so the GPU rounds as the interpreter does.
div_rn's IEEE slow path is a subroutine call around which ptxas may save live registers to the stack: where the
compile check shows that (pixel_norm's backward: 8 B of spills on sm_80 and sm_90), the kernel keeps `/` (2 ulp is
far inside every fp32 test tolerance, 2e-5 of the output's magnitude) and says so. sqrt_rn compiles inline.
tl.math.div_rn / tl.math.sqrt_rn accept fp32 only; fp64 `/` and sqrt are IEEE-rounded on the GPU already.
"""
import triton
import triton.language as tl


@triton.jit
def div_rn(x, y):
    """x / y rounded to nearest: y a tensor (fp32 or fp64), x a tensor of y's dtype or a Python float."""
    if y.dtype == tl.float64:
        r = x / y
    else:
        r = tl.math.div_rn(x, y)
    return r


@triton.jit
def sqrt_rn(x):
    """sqrt(x) rounded to nearest (fp32 or fp64)."""
    if x.dtype == tl.float64:
        r = tl.sqrt(x)
    else:
        r = tl.math.sqrt_rn(x)
    return r
