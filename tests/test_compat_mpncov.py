"""vkernels.compat.mpncov: fast-MPN-COV's MPNCOV module and Covpool / Sqrtm / Triuvec functions.

The CI tests need no checkout; `TestRealCheckout` runs only with VKERNELS_MPNCOV=<checkout> and compares with their
src/representation/MPNCOV.py."""
import inspect

import pytest
import torch

from _anchors import anchor_module, report
from vkernels.compat.mpncov import MPNCOV, CovpoolLayer, SqrtmLayer, TriuvecLayer


def definition(x, iters, sqrt=True, vec=True):
    """MPNCOV's math from the paper in fp64, written out: covariance, trace-normalised Newton-Schulz, triangle."""
    B, C = x.shape[:2]
    X = x.double().reshape(B, C, -1)
    M = X.shape[2]
    ibar = torch.eye(M, dtype=torch.float64) - 1.0 / M
    S = X @ ibar @ X.transpose(1, 2) / M
    if sqrt:
        t = S.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
        I = torch.eye(C, dtype=torch.float64)
        Y, Z = S / t, I.expand_as(S)
        for _ in range(iters):
            T = (3 * I - Z @ Y) / 2
            Y, Z = Y @ T, T @ Z
        S = Y * t.sqrt()
    if vec:
        r, c = torch.triu_indices(C, C)
        S = S[:, r, c].unsqueeze(-1)
    return S


def definition_sqrtm(A, iters):
    I = torch.eye(A.shape[-1], dtype=A.dtype)
    Y, Z = A, I.expand_as(A)
    for _ in range(iters):
        T = (3 * I - Z @ Y) / 2
        Y, Z = Y @ T, T @ Z
    return Y


def test_signatures():
    params = inspect.signature(MPNCOV.__init__).parameters
    assert [(p.name, p.default) for p in list(params.values())[1:]] == [
        ("iterNum", 3), ("is_sqrt", True), ("is_vec", True), ("input_dim", 2048), ("dimension_reduction", None)]
    assert list(inspect.signature(SqrtmLayer).parameters) == ["var", "iterN"]
    assert list(inspect.signature(CovpoolLayer).parameters) == ["var"]
    assert list(inspect.signature(TriuvecLayer).parameters) == ["var"]


def test_attributes_state_dict_and_init():
    m = MPNCOV(5, True, True, 32, 8)
    assert (m.iterNum, m.is_sqrt, m.is_vec, m.dr, m.output_dim) == (5, True, True, 8, 36)
    assert isinstance(m.output_dim, int)
    assert MPNCOV(input_dim=10, is_vec=False).output_dim == 100 and MPNCOV(input_dim=10).output_dim == 55
    assert list(m.state_dict()) == ["conv_dr_block.0.weight", "conv_dr_block.1.weight", "conv_dr_block.1.bias",
                                    "conv_dr_block.1.running_mean", "conv_dr_block.1.running_var",
                                    "conv_dr_block.1.num_batches_tracked"]
    conv, bn, relu = m.conv_dr_block
    assert conv.bias is None and conv.kernel_size == (1, 1) and relu.inplace
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))
    # kaiming_normal_(fan_out, relu): std sqrt(2 / (out_channels * 1 * 1)), drawn from torch's RNG after the default.
    torch.manual_seed(3)
    torch.nn.Conv2d(32, 8, 1, bias=False)
    expect = torch.empty(8, 32, 1, 1)
    torch.nn.init.kaiming_normal_(expect, mode="fan_out", nonlinearity="relu")
    torch.manual_seed(3)
    assert torch.equal(MPNCOV(3, True, True, 32, 8).conv_dr_block[0].weight, expect)
    assert list(MPNCOV(input_dim=4).state_dict()) == []


@pytest.mark.parametrize("sqrt,vec", [(True, True), (True, False), (False, True), (False, False)])
def test_module_values_shapes_and_gradients(sqrt, vec):
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64, requires_grad=True)
    m = MPNCOV(4, sqrt, vec, input_dim=6)
    out, expect = m(x), definition(x, 4, sqrt, vec)
    assert out.shape == ((2, 21, 1) if vec else (2, 6, 6))
    torch.testing.assert_close(out, expect)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expect, x, g)[0])


def test_function_chain_takes_the_fused_path_and_matches():
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    cov = CovpoolLayer(x)
    cov.retain_grad()
    torch.testing.assert_close(cov, definition(x, 0, sqrt=False, vec=False))
    fused = SqrtmLayer(cov, 5)
    plain = SqrtmLayer(cov.detach().clone().requires_grad_(), 5)  # no CovpoolLayer source: the plain iteration
    torch.testing.assert_close(fused, plain)
    vec = TriuvecLayer(fused)
    expect = definition(x, 5)
    assert vec.shape == (2, 15, 1)
    torch.testing.assert_close(vec, expect)
    g = torch.randn_like(vec)
    vec.backward(g)
    torch.testing.assert_close(x.grad, torch.autograd.grad(expect, x, g)[0])
    assert cov.grad is None  # the fused op ran from x: nothing flowed through the covariance tensor


def test_sqrtm_of_a_covariance_modified_in_place_uses_the_modified_matrix():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    cov = CovpoolLayer(x)
    cov.mul_(4.0)
    torch.testing.assert_close(SqrtmLayer(cov, 20), 2 * SqrtmLayer(CovpoolLayer(x), 20))


def test_sqrtm_of_any_spd_matrix():
    a = torch.randn(2, 5, 7, dtype=torch.float64)
    spd = a @ a.transpose(1, 2) + torch.eye(5, dtype=torch.float64)
    s = spd.clone().requires_grad_()
    root = SqrtmLayer(s, 30)
    torch.testing.assert_close(root @ root, spd)
    # Their gradient convention: the transpose of autograd's through the same iteration.
    g = torch.randn_like(root)
    root.backward(g)
    s2 = spd.clone().requires_grad_()
    t = torch.diagonal(s2, dim1=1, dim2=2).sum(-1)[:, None, None]
    exact = torch.autograd.grad(definition_sqrtm(s2 / t, 30) * t.sqrt(), s2, g)[0]
    torch.testing.assert_close(s.grad, exact.mT)


def test_zero_covariance_gives_nan_as_theirs():
    x = torch.randn(3, 4, 2, 2)
    x[1] = 0.0
    for out in (MPNCOV(3, input_dim=4)(x), MPNCOV(3, is_vec=False, input_dim=4)(x),
                SqrtmLayer(CovpoolLayer(x), 3), SqrtmLayer(CovpoolLayer(x).detach(), 3)):
        assert out[1].isnan().all() and out[[0, 2]].isfinite().all()
    assert (MPNCOV(3, is_sqrt=False, input_dim=4)(x)[1] == 0).all()


def test_fewer_than_one_iteration_runs_one_as_theirs():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    one = MPNCOV(1, input_dim=4)(x)
    torch.testing.assert_close(MPNCOV(0, input_dim=4)(x), one)
    torch.testing.assert_close(TriuvecLayer(SqrtmLayer(CovpoolLayer(x), 0)), one)
    torch.testing.assert_close(TriuvecLayer(SqrtmLayer(CovpoolLayer(x).clone(), 0)), one)


def test_float32_and_reduction_forward_backward():
    m = MPNCOV(3, True, True, 8, 4)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = m(x)
    assert out.shape == (2, 10, 1) and out.dtype == torch.float32
    out.sum().backward()
    assert x.grad.isfinite().all() and m.conv_dr_block[0].weight.grad is not None


class TestRealCheckout:
    """Their src/representation/MPNCOV.py against ours (VKERNELS_MPNCOV=<checkout>)."""

    @pytest.fixture
    def theirs(self):
        return anchor_module("VKERNELS_MPNCOV", "src/representation/MPNCOV.py", "_their_mpncov")

    @pytest.mark.parametrize("dr", [None, 6])
    def test_same_init_and_state_dict_both_ways(self, theirs, dr):
        torch.manual_seed(0)
        t = theirs.MPNCOV(5, True, True, 12, dr)
        torch.manual_seed(0)
        o = MPNCOV(5, True, True, 12, dr)
        assert t.output_dim == o.output_dim
        st, so = t.state_dict(), o.state_dict()
        assert list(st) == list(so) and all(torch.equal(st[k], so[k]) for k in st)
        o.load_state_dict(st, strict=True)
        t.load_state_dict(so, strict=True)

    # 4 x 4 locations: 1/M and 1/M^2 are exact in fp32, so their fp32-built centring matrix is exact in fp64 too.
    @pytest.mark.parametrize("hw,dtype", [((4, 4), torch.float64), ((7, 7), torch.float64), ((7, 7), torch.float32)])
    @pytest.mark.parametrize("sqrt,vec,dr", [(True, True, None), (True, False, None), (False, True, None),
                                             (True, True, 6)])
    def test_module_outputs_and_gradients(self, theirs, hw, dtype, sqrt, vec, dr):
        torch.manual_seed(1)
        t = theirs.MPNCOV(5, sqrt, vec, 12, dr).to(dtype)
        o = MPNCOV(5, sqrt, vec, 12, dr).to(dtype)
        o.load_state_dict(t.state_dict(), strict=True)
        x = torch.randn(3, 12, *hw, dtype=dtype)
        xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_t, out_o = t(xt), o(xo)
        assert out_t.shape == out_o.shape
        g = torch.randn_like(out_t)
        out_t.backward(g)
        out_o.backward(g)
        what = f"MPNCOV {hw} {dtype} sqrt={sqrt} vec={vec} dr={dr}"
        rel = lambda a, b: (a - b).abs().max() / a.abs().max()  # noqa: E731
        tol = 1e-5 if dtype == torch.float32 else (1e-13 if hw == (4, 4) else 1e-6)
        pairs = [("output", out_t.detach(), out_o.detach()), ("grad x", xt.grad, xo.grad)]
        pairs += [(f"grad {n}", p.grad, q.grad) for (n, p), q in zip(t.named_parameters(), o.parameters())]
        for name, a, b in pairs:
            report(f"{what} {name} (relative)", rel(a, b))
            assert rel(a, b) < tol, name

    @pytest.mark.parametrize("iters", [1, 2, 5])
    def test_functions(self, theirs, iters):
        x = torch.randn(2, 10, 4, 4, dtype=torch.float64)
        xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
        out_t = theirs.TriuvecLayer(theirs.SqrtmLayer(theirs.CovpoolLayer(xt), iters))
        out_o = TriuvecLayer(SqrtmLayer(CovpoolLayer(xo), iters))
        assert out_t.shape == out_o.shape == (2, 55, 1)
        g = torch.randn_like(out_t)
        out_t.backward(g)
        out_o.backward(g)
        report(f"functions chain iterN={iters} fp64 output", (out_t - out_o).abs().max())
        report(f"functions chain iterN={iters} fp64 grad x", (xt.grad - xo.grad).abs().max())
        torch.testing.assert_close(out_o, out_t, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-12, atol=1e-12)
        # Sqrtm alone on a matrix that is no CovpoolLayer output: the plain iteration, their backward's gradient.
        a = torch.randn(2, 6, 9, dtype=torch.float64)
        spd = a @ a.transpose(1, 2) / 9
        st, so = spd.clone().requires_grad_(), spd.clone().requires_grad_()
        rt, ro = theirs.SqrtmLayer(st, iters), SqrtmLayer(so, iters)
        gs = torch.randn_like(rt)
        rt.backward(gs)
        ro.backward(gs)
        report(f"SqrtmLayer iterN={iters} fp64 output", (rt - ro).abs().max())
        report(f"SqrtmLayer iterN={iters} fp64 grad", (st.grad - so.grad).abs().max())
        torch.testing.assert_close(ro, rt, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(so.grad, st.grad, rtol=1e-10, atol=1e-11)

    def test_zero_covariance_nan_like_theirs(self, theirs):
        x = torch.randn(2, 5, 3, 3)
        x[0] = 0
        t, o = theirs.MPNCOV(3, True, True, 5), MPNCOV(3, True, True, 5)
        out_t, out_o = t(x), o(x)
        assert torch.equal(out_t.isnan(), out_o.isnan()) and out_o[0].isnan().all()
