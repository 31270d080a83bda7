"""What the elementwise Triton kernels share (bias_act's, modulated_conv2d's epilogue, upsample_norm_act's apply,
spade_norm_act's forward): each program's flat offsets, and how many elements a program takes.
"""
import triton
import triton.language as tl


@triton.jit
def block_offsets(numel, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """This program's BLOCK flat offsets (int64 once numel passes int32: pid * BLOCK would wrap) and their in-bounds
    mask; the prologue of the elementwise kernels (bias_act's, modulated_conv2d's epilogue, upsample_norm_act's
    apply, spade_norm_act's forward)."""
    pid = tl.program_id(0)
    if INT64:
        start = pid.to(tl.int64) * BLOCK
    else:
        start = pid * BLOCK
    offs = start + tl.arange(0, BLOCK)
    return offs, offs < numel


def elementwise_block(t):
    """Elements per program of the elementwise kernels (bias_act's, modulated_conv2d's epilogue, upsample_norm_act's
    apply and spade) on target t: the interpreter runs programs one by one, so fewer, larger blocks there."""
    return 8192 if t.interpret else 1024
