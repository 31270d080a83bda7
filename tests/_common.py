"""Helpers every op's tests share: which implementations to test, random inputs, the low-precision error rule."""
import pytest
import torch

import vkernels
from vkernels import _backend
from conftest import DEVICES

# Absolute slack on top of the 2x-the-reference's-error rule (flash-attention's), per dtype, relative to max |oracle|.
ATOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def kernels(op, device):
    """Compiled implementations of `op` to test on `device` (the reference is the oracle, not a subject)."""
    if device == "cuda" and not torch.cuda.is_available():
        return list(_backend.OPS[op].cuda_order)  # the tests are skipped; keep their ids stable
    return [i for i in vkernels.available_impls(op, device) if i != "reference"]


def impl_params(op):
    """pytest params (device, impl) for every compiled implementation of `op`, CUDA ones marked `cuda`."""
    out = []
    for d in DEVICES:
        dev = d if isinstance(d, str) else d.values[0]
        marks = () if isinstance(d, str) else d.marks
        out += [pytest.param(dev, i, marks=marks, id=f"{dev}-{i}") for i in kernels(op, dev)]
    return out


def randn(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, dtype=torch.float64) * scale).to(dtype=dtype, device=device)


def check_close(out, lowp_ref, oracle, dtype, what="", same_dtype=True):
    """max |out - oracle| <= 2 max |reference run in `dtype` - oracle| + atol (flash-attention's rule).
    same_dtype: out must also have dtype `dtype` (False for ops whose outputs are fp32 for low-precision inputs)."""
    assert out.shape == oracle.shape, (what, out.shape, oracle.shape)
    assert not same_dtype or out.dtype == dtype, (what, out.dtype, dtype)
    if out.numel() == 0:
        return
    err = (out.double().cpu() - oracle.double().cpu()).abs().max()
    ref_err = (lowp_ref.double().cpu() - oracle.double().cpu()).abs().max()
    bound = 2 * ref_err + ATOL[dtype] * (1 + oracle.double().abs().max().cpu())
    assert err <= bound, f"{what} max error {err:.3g} > bound {bound:.3g}"


def cpu_peak_bytes(fn):
    """Peak bytes of CPU memory allocated during fn() (its result included), from the profiler's allocation
    events, as the benchmarks measure it."""
    from benchmarks._harness import _peak_bytes_cpu

    peak = _peak_bytes_cpu({"fn": fn})["fn"]
    assert peak is not None, "torch profiler internals changed: CPU peak memory not measurable"
    return peak


def static_grads(out, inputs, order=2):
    """Backward (order 1) and, for order 2, double backward through the op: what the gpu_static_cases of each test
    file run so that tools/gpu_static.py records every backward kernel launch (values are not checked there)."""
    outs = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if torch.is_tensor(o) and o.requires_grad]
    inputs = [t for t in inputs if torch.is_tensor(t) and t.requires_grad]
    grads = torch.autograd.grad(outs, inputs, [torch.randn_like(o) for o in outs], create_graph=order > 1,
                                allow_unused=True)
    if order > 1:
        live = [(g * torch.randn_like(g)).sum() for g in grads if g is not None and g.requires_grad]
        if live:
            torch.autograd.grad(sum(live), inputs, allow_unused=True)


def examples(full, ci):
    """Hypothesis max_examples: `full` under VKERNELS_TEST_FULL=1 (`make test-full`), `ci` otherwise."""
    from conftest import FULL

    return full if FULL else ci
