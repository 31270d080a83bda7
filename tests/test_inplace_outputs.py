"""Every op's output may be modified in place before backward (StyleGAN's `y.add_(x)`), unless the equivalent
PyTorch code keeps that output for backward too; then autograd's in-place error must appear, as it does there.
Each case adds a tensor in place to the output, runs backward (double backward where the op supports it) and
compares with the reference adding out of place. bias_act's own cases (every activation x clamp) are in
test_bias_act.py. Tiny shapes, fp64."""
import math

import pytest
import torch

import vkernels
from _common import check_inplace_on_output, kernels


def _r(*shape, scale=1.0):
    return torch.randn(shape, dtype=torch.float64) * scale


def _cases():
    """name -> (make(impl) -> fn, inputs, pick, double, error)."""
    f4 = vkernels.setup_filter([1, 3, 3, 1])
    f12 = vkernels.setup_filter(torch.hann_window(12, periodic=False, dtype=torch.float64).float(), separable=True)
    h = torch.randint(0, 5, (3,))
    s = (2 * torch.randint(0, 2, (3,)) - 1).double()
    w_mod = _r(4, 3, 3, 3)
    bank, exclude = _r(9, 4), torch.tensor([1, -1, 3])
    return {
        "upfirdn2d": ("upfirdn2d", lambda i: lambda x: vkernels.upfirdn2d(x, f4, up=2, padding=2, impl=i),
                      (_r(2, 3, 4, 4),), None, True, False),
        "downsample2d": ("upfirdn2d", lambda i: lambda x: vkernels.downsample2d(x, f4, impl=i),
                         (_r(2, 3, 6, 6),), None, True, False),
        "filtered_lrelu": ("filtered_lrelu", lambda i: lambda x, b: vkernels.filtered_lrelu(
            x, f12, f12, b, up=2, down=2, padding=11, clamp=1.5, impl=i), (_r(1, 2, 5, 5), _r(2)), None, True,
            False),
        "modulated_conv2d": ("modulated_conv2d_epilogue", lambda i: lambda x, w, st, b: vkernels.modulated_conv2d(
            x, w, st, bias=b, act="lrelu", clamp=2.0, impl=i), (_r(2, 3, 5, 5), w_mod, _r(2, 3) + 1, _r(4)), None,
            True, False),
        "modulated_conv2d_up": ("modulated_conv2d_epilogue", lambda i: lambda x, w, st: vkernels.modulated_conv2d(
            x, w, st, up=2, resample_filter=f4, fused_modconv=False, act="linear", impl=i),
            (_r(2, 3, 4, 4), w_mod, _r(2, 3) + 1), None, True, False),
        "pixel_norm": ("pixel_norm", lambda i: lambda x: vkernels.pixel_norm(x, impl=i), (_r(3, 5, 2),), None,
                       True, False),
        "upsample_norm_act": ("upsample_norm_act", lambda i: lambda x, w, b: vkernels.upsample_norm_act(
            x, 2, "bilinear", "instance", w, b, act="lrelu", impl=i), (_r(2, 3, 3, 3), _r(3), _r(3)), None, True,
            False),
        "spade_norm_act": ("spade_norm_act", lambda i: lambda x, g, b: vkernels.spade_norm_act(
            x, g, b, "batch", act="lrelu", clamp=1.0, impl=i), (_r(2, 3, 3, 3), _r(2, 3, 3, 3), _r(2, 3, 3, 3)),
            None, True, False),
        "bilinear_pooling": ("bilinear_pooling", lambda i: lambda x, y: vkernels.bilinear_pooling(
            x, y, impl=i), (_r(2, 3, 2, 2), _r(2, 4, 2, 2)), None, False, False),
        # The normalised backward reads the output: modifying it must not change the gradients.
        "bilinear_pooling_sqrt_l2": ("bilinear_pooling", lambda i: lambda x: vkernels.bilinear_pooling(
            x, None, "signed_sqrt_l2", triu=True, impl=i), (_r(2, 3, 2, 2),), None, False, False),
        "compact_bilinear_pooling": ("compact_bilinear_pooling", lambda i: lambda x, y:
                                     vkernels.compact_bilinear_pooling(x, y, h, s, h, s, 5, impl=i),
                                     (_r(2, 3, 2, 2), _r(2, 3, 2, 2)), None, False, False),
        "random_maclaurin_pooling": ("random_maclaurin_pooling", lambda i: lambda x, y, w1, w2:
                                     vkernels.random_maclaurin_pooling(x, y, w1, w2, impl=i),
                                     (_r(2, 3, 2, 2), _r(2, 3, 2, 2), _r(5, 3), _r(5, 3)), None, False, False),
        "isqrt_cov": ("isqrt_cov", lambda i: lambda x: vkernels.isqrt_cov(x, 3, impl=i), (_r(2, 3, 3, 3),), None,
                      False, False),
        # reduction='none' hands back the op's own per-row loss tensor (fp64 in, fp64 out): F.cross_entropy does
        # not keep its output, so neither may we.
        "infonce_bank_loss": ("infonce_bank_loss", lambda i: lambda q, k, bk: vkernels.infonce_bank_loss(
            q, k, bk, 0.5, reduction="none", exclude=exclude, impl=i), (_r(3, 4), _r(3, 4), bank), None, False,
            False),
        # lse is torch.logsumexp's result, which logsumexp keeps for backward: modifying it must raise, as there.
        "infonce_bank_loss_lse": ("infonce_bank_loss", lambda i: lambda q, k, bk: vkernels.infonce_bank_loss(
            q, k, bk, 0.5, reduction="none", return_lse=True, impl=i), (_r(3, 4), _r(3, 4), bank), 1, False, True),
        "infonce_bank_partial": ("infonce_bank_partial", lambda i: lambda q, k, bk: vkernels.infonce_bank_partial(
            q, k, bk, 0.5, impl=i), (_r(3, 4), _r(3, 4), bank), 0, False, True),
    }


CASES = _cases()


def _params():
    out = []
    for name, (op, *_rest) in CASES.items():
        out += [pytest.param(name, impl, id=f"{name}-{impl}") for impl in kernels(op, "cpu")]
    return out


@pytest.mark.parametrize("name,impl", _params())
def test_inplace_add_on_output(name, impl):
    _, make, inputs, pick, double, error = CASES[name]
    check_inplace_on_output(make(impl), make("reference"), inputs, pick=pick, double=double, error=error,
                            ref_inplace=False)


def test_logsumexp_keeps_its_result():
    """The PyTorch fact the lse cases mirror (so they are not asserting an arbitrary error)."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    lse = torch.logsumexp(x, 1)
    lse.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        lse.sum().backward()
    loss = torch.nn.functional.cross_entropy(x * 1, torch.tensor([0, 1, 2]), reduction="none")
    loss.add_(1)
    loss.sum().backward()  # cross_entropy's output is not kept
    assert math.isfinite(float(x.grad.sum()))
