"""Test helpers the InfoNCE ops' tests share (infonce_bank_loss, infonce_bank_partial): the error rule for outputs
that are fp32 for low-precision inputs, with the extra slack the GPU's fp32 dots need."""
import torch

from _common import ATOL
from _common import check_close as _check_close


def gpu_slack(device, dtype, temperature):
    """Extra absolute slack, relative to (1 + max |oracle|), for fp32 on a GPU, where the Triton kernel's dots run
    3xTF32 (torch's default "highest" float32 matmul precision) and exp/log are ex2.approx/lg2.approx; the CPU
    reference and the interpreter compute both exactly in fp32. 3xTF32 keeps about 21 of fp32's 24 bits per
    product, so a logit q.b / T of unit features is off by <= 2^-21 / T; the approximate exp/log add ~2^-22
    relative. lse and the loss move by at most the logits' error; a gradient's weights p_ij / T move by ~2x it,
    relative. 4x margin: 2^-19 / T. Nothing extra elsewhere (fp64: libdevice exp and IEEE dots; fp16/bf16: the
    dtype's own rounding, already in the 2x-the-reference's-error rule, dwarfs 2^-21)."""
    return 2.0**-19 / temperature if device == "cuda" and dtype == torch.float32 else 0.0


def check_close(out, lowp_ref, oracle, dtype, what="", slack=0.0):
    """_common.check_close (loss/lse are fp32 for fp16 inputs), with `slack` more absolute error allowed, relative
    to (1 + max |oracle|) (see gpu_slack)."""
    if not slack:
        return _check_close(out, lowp_ref, oracle, dtype, what, same_dtype=False)
    assert out.shape == oracle.shape, (what, out.shape, oracle.shape)
    if out.numel() == 0:
        return
    err = (out.double().cpu() - oracle.double().cpu()).abs().max()
    ref_err = (lowp_ref.double().cpu() - oracle.double().cpu()).abs().max()
    bound = 2 * ref_err + (ATOL[dtype] + slack) * (1 + oracle.double().abs().max().cpu())
    assert err <= bound, f"{what} max error {err:.3g} > bound {bound:.3g}"
