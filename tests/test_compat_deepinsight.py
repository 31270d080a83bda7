"""vkernels.compat.deepinsight.CompactBilinearPooling: DeepInsight's interface, draws, state_dict and layouts.

The CI tests need no checkout; `TestRealCheckout` runs only with VKERNELS_DEEPINSIGHT_CBP=<checkout> and compares
with their own module."""
import inspect

import numpy as np
import pytest
import torch

from _anchors import anchor_module, report
from vkernels.compat.deepinsight import CompactBilinearPooling
from vkernels.reference.compact_bilinear_pooling import compact_bilinear_pooling as reference

SIGNATURE = [("input_dim1", inspect.Parameter.empty), ("input_dim2", inspect.Parameter.empty),
             ("output_dim", inspect.Parameter.empty), ("sum_pool", True), ("cuda", True), ("rand_h_1", None),
             ("rand_s_1", None), ("rand_h_2", None), ("rand_s_2", None)]


def their_draws(c1, c2, d):
    """The default hashes and signs as DeepInsight documents them: numpy seeds 1, 3, 5, 7."""
    return (np.random.RandomState(1).randint(d, size=c1), 2 * np.random.RandomState(3).randint(2, size=c1) - 1,
            np.random.RandomState(5).randint(d, size=c2), 2 * np.random.RandomState(7).randint(2, size=c2) - 1)


def per_location(x, y, m1, m2, sum_pool):
    """Their definition in fp64: sketch every location with the dense matrices, full complex FFT product, real part."""
    xl = x.double().permute(0, 2, 3, 1) @ m1.double()
    yl = y.double().permute(0, 2, 3, 1) @ m2.double()
    out = torch.fft.ifft(torch.fft.fft(xl) * torch.fft.fft(yl)).real  # (B, H, W, D)
    return out.sum((1, 2)) if sum_pool else out


def test_signature_and_forward_names():
    params = inspect.signature(CompactBilinearPooling.__init__).parameters
    assert [(p.name, p.default) for p in list(params.values())[1:]] == SIGNATURE
    assert list(inspect.signature(CompactBilinearPooling.forward).parameters) == ["self", "bottom1", "bottom2"]


def test_literal_positional_call():
    layer = CompactBilinearPooling(512, 512, 8192, True, False)
    assert (layer.input_dim1, layer.input_dim2, layer.output_dim, layer.sum_pool) == (512, 512, 8192, True)
    x, y = torch.randn(1, 512, 2, 2), torch.randn(1, 512, 2, 2)
    out = layer(x, y)
    assert out.shape == (1, 8192)
    expect = reference(x.double(), y.double(), layer.rand_h_1, layer.rand_s_1, layer.rand_h_2, layer.rand_s_2, 8192)
    torch.testing.assert_close(out.double(), expect, rtol=1e-4, atol=1e-3)


def test_default_draws_are_theirs_and_the_same_every_time():
    a, b = CompactBilinearPooling(13, 9, 20, cuda=False), CompactBilinearPooling(13, 9, 20, cuda=False)
    h1, s1, h2, s2 = their_draws(13, 9, 20)
    for layer in (a, b):
        assert torch.equal(layer.rand_h_1, torch.from_numpy(h1)) and torch.equal(layer.rand_h_2, torch.from_numpy(h2))
        assert torch.equal(layer.rand_s_1, torch.from_numpy(s1).float())
        assert torch.equal(layer.rand_s_2, torch.from_numpy(s2).float())
    # Their constructor leaves numpy's global RNG right after the seed-7 draw: ours too.
    after = np.random.random()
    rs = np.random.RandomState(7)
    rs.randint(2, size=9)
    assert after == rs.random_sample()


def test_given_draws_and_sketch_matrices():
    h1, s1 = np.array([0, 3, 3, 1]), np.array([1, -1, -1, 1])
    h2, s2 = torch.tensor([2, 0, 1]), torch.tensor([-1.0, 1.0, 1.0])
    layer = CompactBilinearPooling(4, 3, 5, True, False, h1, s1, h2, s2)
    m1 = layer.sparse_sketch_matrix1
    assert m1.shape == (4, 5) and m1.dtype == torch.float32
    expect = torch.zeros(4, 5)
    expect[torch.arange(4), torch.from_numpy(h1)] = torch.from_numpy(s1).float()
    assert torch.equal(m1, expect)
    assert torch.equal(CompactBilinearPooling.generate_sketch_matrix(h1, s1, 5), expect)
    assert torch.equal(layer.sparse_sketch_matrix2[torch.arange(3), h2], s2)
    with pytest.raises(ValueError, match="rand_h_1"):
        CompactBilinearPooling(4, 3, 3, True, False, h1, s1, h2, s2)
    with pytest.raises(ValueError, match="rand_s_2"):
        CompactBilinearPooling(4, 3, 5, True, False, h1, s1, h2, s2[:2])


def test_state_dict_is_theirs_empty_and_hashes_follow_the_module():
    layer = CompactBilinearPooling(6, 5, 7, cuda=False)
    assert list(layer.state_dict()) == []
    layer.load_state_dict({}, strict=True)
    assert layer.rand_h_1.dtype == torch.int64 and layer.rand_h_1.device.type == "cpu"


def test_default_cuda_flag_follows_the_machine():
    layer = CompactBilinearPooling(6, 5, 7)  # cuda=True: theirs moves the sketch to the GPU (and fails without one)
    assert layer.rand_h_1.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.randn(1, 6, 2, 2, device=layer.rand_h_1.device)
    assert layer(x, torch.randn(1, 5, 2, 2, device=x.device)).shape == (1, 7)


@pytest.mark.parametrize("sum_pool", [True, False])
def test_values_layouts_and_gradients(sum_pool):
    layer = CompactBilinearPooling(6, 5, 11, sum_pool, False)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 3, 4, dtype=torch.float64, requires_grad=True)
    out = layer(x, y)
    expect = per_location(x, y, layer.sparse_sketch_matrix1, layer.sparse_sketch_matrix2, sum_pool)
    assert out.shape == ((2, 11) if sum_pool else (2, 3, 4, 11)) and out.is_contiguous()
    torch.testing.assert_close(out, expect)
    g = torch.randn_like(out)
    gx, gy = torch.autograd.grad(out, (x, y), g)
    ref = reference(x, y, layer.rand_h_1, layer.rand_s_1, layer.rand_h_2, layer.rand_s_2, 11, sum_pool)
    if not sum_pool:
        ref = ref.permute(0, 2, 3, 1)
    rx, ry = torch.autograd.grad(ref, (x, y), g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)


def test_channel_mismatch_asserts_as_theirs():
    layer = CompactBilinearPooling(6, 5, 7, cuda=False)
    with pytest.raises(AssertionError):
        layer(torch.randn(1, 5, 2, 2), torch.randn(1, 5, 2, 2))


class TestRealCheckout:
    """Their CompactBilinearPooling.py against ours (VKERNELS_DEEPINSIGHT_CBP=<checkout>)."""

    @pytest.fixture
    def theirs(self):
        return anchor_module("VKERNELS_DEEPINSIGHT_CBP", "CompactBilinearPooling.py", "_their_cbp")

    def test_same_sketches_and_state_dicts(self, theirs):
        for args in ((512, 512, 8192, True, False), (96, 80, 1000, False, False)):
            t, o = theirs.CompactBilinearPooling(*args), CompactBilinearPooling(*args)
            assert torch.equal(t.sparse_sketch_matrix1, o.sparse_sketch_matrix1)
            assert torch.equal(t.sparse_sketch_matrix2, o.sparse_sketch_matrix2)
            o.load_state_dict(t.state_dict(), strict=True)
            t.load_state_dict(o.state_dict(), strict=True)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("sum_pool", [True, False])
    def test_outputs_and_gradients(self, theirs, dtype, sum_pool):
        t = theirs.CompactBilinearPooling(64, 48, 500, sum_pool, False)
        o = CompactBilinearPooling(64, 48, 500, sum_pool, False)
        # Theirs computes in its fp32 sketch matrices' dtype: cast them for the fp64 comparison.
        t.sparse_sketch_matrix1 = t.sparse_sketch_matrix1.to(dtype)
        t.sparse_sketch_matrix2 = t.sparse_sketch_matrix2.to(dtype)
        x = torch.randn(3, 64, 5, 6, dtype=dtype, requires_grad=True)
        y = torch.randn(3, 48, 5, 6, dtype=dtype, requires_grad=True)
        out_t, out_o = t(x, y), o(x, y)
        assert out_t.shape == out_o.shape
        g = torch.randn_like(out_t)
        grads_t = torch.autograd.grad(out_t, (x, y), g)
        grads_o = torch.autograd.grad(out_o, (x, y), g)
        scale = out_t.detach().abs().max()
        tol = dict(rtol=0, atol=float(scale) * (1e-5 if dtype == torch.float32 else 1e-12))
        what = f"CBP {dtype} sum_pool={sum_pool}"
        report(f"{what} output (|out| max {float(scale):.1f})", (out_t - out_o).abs().max())
        torch.testing.assert_close(out_o, out_t, **tol)
        for name, a, b in zip(("bottom1", "bottom2"), grads_t, grads_o):
            report(f"{what} grad {name} (|grad| max {float(a.abs().max()):.1f})", (a - b).abs().max())
            torch.testing.assert_close(b, a, rtol=0, atol=float(a.abs().max()) * tol["atol"] / float(scale))
