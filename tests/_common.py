"""Helpers every op's tests share: which implementations to test, random inputs, the low-precision error rule."""
import pytest
import torch

import vkernels
from vkernels import _backend
from conftest import DEVICES
from vkernels.utils.profile import cpu_peak_bytes  # noqa: F401 - the tests' import point

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


def raw_ops(op, impl):
    """The raw op torch.ops.vkernels.<op> of `impl` and its backward <op>_backward (the "_triton" variants for
    triton): what an op's test_opcheck checks."""
    sfx = "_triton" if impl == "triton" else ""
    return getattr(torch.ops.vkernels, op + sfx), getattr(torch.ops.vkernels, f"{op}_backward{sfx}")


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


# What autograd says when a tensor saved for backward was modified in place.
INPLACE_ERROR = "modified by an inplace operation"


def inplace_grads(fn, inputs, pick=None, double=False, inplace=True):
    """StyleGAN's `y.add_(x)` on an op's output, then backward (and, with double=True, the backward of the squared
    gradient norm, as an R1 penalty does). fn(*leaves) returns the output, or a tuple of which `pick` is taken;
    every floating-point tensor of `inputs` becomes a leaf. inplace=False adds out of place (the same gradients when
    nothing breaks). Returns (output after the add, first-order grads incl. the added tensor's, second-order grads);
    raises what autograd raises."""
    leaves = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for t in inputs]
    diff = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    out = fn(*leaves)
    y = out if pick is None else out[pick]
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y).requires_grad_()
    w = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y)
    z = y.add_(c) if inplace else y + c
    grads = torch.autograd.grad((z * w).sum(), diff + [c], create_graph=double, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, diff + [c])]
    if not double:
        return z.detach(), grads, []
    penalty = sum(g.square().sum() for g in grads[:-1])
    if not penalty.requires_grad:  # the gradients do not depend on the inputs (a linear op)
        return z.detach(), grads, [torch.zeros_like(t) for t in diff]
    grads2 = torch.autograd.grad(penalty, diff, allow_unused=True)
    return z.detach(), grads, [torch.zeros_like(t) if g is None else g for g, t in zip(grads2, diff)]


def check_inplace_on_output(fn, ref, inputs, pick=None, double=False, error=False, ref_inplace=True, **tol):
    """fn with an in-place add on its output must raise autograd's in-place error exactly when `error` (the
    equivalent PyTorch/NVlabs code keeps that output for backward), and otherwise give ref's values and first (and
    second) order gradients, ref doing the same add (in place, or out of place with ref_inplace=False)."""
    if error:
        with pytest.raises(RuntimeError, match=INPLACE_ERROR):
            inplace_grads(fn, inputs, pick, double)
        return
    got = inplace_grads(fn, inputs, pick, double)
    want = inplace_grads(ref, inputs, pick, double, inplace=ref_inplace)
    torch.testing.assert_close(got[0], want[0], **tol)
    for i, (g, r) in enumerate(zip(got[1] + got[2], want[1] + want[2])):
        torch.testing.assert_close(g, r, **tol, msg=lambda m, i=i: f"gradient {i}: {m}")


def examples(full, ci):
    """Hypothesis max_examples: `full` under VKERNELS_TEST_FULL=1 (`make test-full`), `ci` otherwise."""
    from conftest import FULL

    return full if FULL else ci
