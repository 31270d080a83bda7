"""vkernels/_dtypes.py's accumulator rule inside @triton.jit code: fp64 for fp64 tensors, fp32 for every other float
dtype (the half types round too coarsely to sum in)."""
import triton
import triton.language as tl


@triton.constexpr_function
def acc_type(dtype):
    """The type a kernel accumulates in for elements of `dtype` (a tl dtype, e.g. x_ptr.dtype.element_ty); resolved
    when the kernel compiles."""
    return tl.float64 if dtype == tl.float64 else tl.float32
