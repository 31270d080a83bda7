"""random_maclaurin_pooling: both routes against the per-location definition in fp64; dtypes, odd shapes, layouts,
empty batches; unbiasedness over random projections; gradcheck; torch.compile; bad input; the module."""
import math

import pytest
import torch

import vkernels
from vkernels.ops.random_maclaurin_pooling import choose_gram
from vkernels.reference.random_maclaurin_pooling import random_maclaurin_pooling as definition
from _common import check_close, randn

ROUTES = ["gram", "project", "auto"]


def rademacher(d, c, dtype=torch.float32):
    return (2 * torch.randint(0, 2, (d, c)) - 1).to(dtype)


def run_case(route, dtype, B, C1, C2, H, W, D, layout="contiguous"):
    x, y = randn((B, C1, H, W), dtype, "cpu"), randn((B, C2, H, W), dtype, "cpu")
    if layout == "channels_last":
        x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    w1, w2 = rademacher(D, C1), rademacher(D, C2)
    xl, yl = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = vkernels.random_maclaurin_pooling(xl, yl, w1, w2, route=route)
    assert out.shape == (B, D) and out.dtype == dtype
    g = torch.randn(B, D, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * g).sum(), [xl, yl]) if B else None

    def ref(prec):
        a, b = x.to(prec).requires_grad_(), y.to(prec).requires_grad_()
        o = definition(a, b, w1, w2)
        return o, (torch.autograd.grad((o.double() * g).sum(), [a, b]) if B else None)

    o64, g64 = ref(torch.float64)
    ol, gl = ref(dtype)
    check_close(out, ol, o64, dtype, "out")
    if B:
        for name, a, b, c in zip(("dx", "dy"), grads, gl, g64):
            check_close(a, b, c, dtype, name)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_matches_definition(route, dtype):
    run_case(route, dtype, 3, 12, 10, 5, 4, 23)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", [(2, 7, 5, 3, 4, 11), (1, 3, 9, 1, 6, 1), (0, 4, 4, 2, 3, 10), (2, 3, 3, 0, 2, 5)],
                         ids=str)
def test_odd_shapes_and_empty(route, shape):
    run_case(route, torch.float32, *shape)


@pytest.mark.parametrize("route", ROUTES)
def test_channels_last(route):
    run_case(route, torch.float32, 2, 6, 5, 4, 3, 9, layout="channels_last")


def test_not_sum_pooled():
    x, y = randn((2, 4, 3, 5), torch.float64, "cpu"), randn((2, 6, 3, 5), torch.float64, "cpu")
    w1, w2 = rademacher(7, 4, torch.float64), rademacher(7, 6, torch.float64)
    out = vkernels.random_maclaurin_pooling(x, y, w1, w2, sum_pool=False)
    torch.testing.assert_close(out, definition(x, y, w1, w2, sum_pool=False))
    assert out.shape == (2, 7, 3, 5)


def test_route_choice_follows_flops():
    assert choose_gram(28 * 28, 512, 512, 8192)  # HW C^2 + D C^2 < HW D 2C
    assert not choose_gram(4, 512, 512, 64)
    assert choose_gram(14 * 14, 2048, 2048, 16000) == ((196 + 16000) * 2048 * 2048 < 196 * 16000 * 4096)


def test_unbiased_over_projection_draws():
    """E_w <phi(a, b), phi(c, e)> = <a, c><b, e> for Rademacher w: mean over N draws within 5 standard errors."""
    torch.manual_seed(0)
    C, D, N = 5, 4, 2000
    a, b = torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    c, e = a + 0.5 * torch.randn(C, dtype=torch.float64), b + 0.5 * torch.randn(C, dtype=torch.float64)
    x, y = torch.stack([a, c])[:, :, None, None], torch.stack([b, e])[:, :, None, None]
    est = torch.empty(N, dtype=torch.float64)
    for n in range(N):
        out = vkernels.random_maclaurin_pooling(x, y, rademacher(D, C, torch.float64), rademacher(D, C, torch.float64))
        est[n] = out[0] @ out[1]
    exact = float((a @ c) * (b @ e))
    se = float(est.std()) / math.sqrt(N)
    assert abs(float(est.mean()) - exact) < 5 * se and se > 1e-3 * abs(exact)


@pytest.mark.parametrize("route", ["gram", "project"])
def test_gradcheck(route):
    x, y = randn((2, 4, 2, 3), torch.float64, "cpu"), randn((2, 3, 2, 3), torch.float64, "cpu")
    w1, w2 = randn((5, 4), torch.float64, "cpu"), randn((5, 3), torch.float64, "cpu")
    args = [t.clone().requires_grad_() for t in (x, y, w1, w2)]
    torch.autograd.gradcheck(lambda a, b, u, v: vkernels.random_maclaurin_pooling(a, b, u, v, route=route), args)
    xs = x.clone().requires_grad_()
    torch.autograd.gradcheck(lambda a: vkernels.random_maclaurin_pooling(a, a, w1[:, :4], w1, route=route), [xs])


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, y = randn((2, 5, 3, 3), torch.float32, "cpu"), randn((2, 4, 3, 3), torch.float32, "cpu")
    m = vkernels.nn.RandomMaclaurinPooling(5, 4, 13, seed=0)
    xs, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = torch.compile(m, fullgraph=True)(xs, y)
    want = m(xe, y)
    torch.testing.assert_close(got, want)
    got.square().sum().backward()
    want.square().sum().backward()
    torch.testing.assert_close(xs.grad, xe.grad)


def test_bad_input_names_the_argument():
    x, y = torch.randn(2, 5, 3, 3), torch.randn(2, 4, 3, 3)
    w1, w2 = rademacher(7, 5), rademacher(7, 4)
    call = vkernels.random_maclaurin_pooling
    cases = [
        (dict(y=y[:1]), ValueError, "y must have shape"),
        (dict(y=y.double()), TypeError, r"y.dtype"),
        (dict(x=x.long(), y=y.long()), TypeError, "x must be float"),
        (dict(x=x[0]), ValueError, "x must have shape"),
        (dict(w1=w1[:, :4]), ValueError, r"w1 must have shape \(D, 5\)"),
        (dict(w2=w2[:6]), ValueError, r"w2 must have shape \(7, 4\)"),
        (dict(w1=w1.long()), TypeError, "w1 must be a float tensor"),
        (dict(w1=w1.to("meta")), ValueError, "w1 is on meta"),
        (dict(route="fft"), ValueError, "route must be one of"),
    ]
    for kwargs, exc, msg in cases:
        args = {**dict(x=x, y=y, w1=w1, w2=w2), **kwargs}
        with pytest.raises(exc, match=msg):
            call(**args)


def test_module():
    m = vkernels.nn.RandomMaclaurinPooling(5, 4, 13, seed=1)
    assert set(m.state_dict()) == {"w1", "w2"} and set(m.w1.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(vkernels.nn.RandomMaclaurinPooling(5, 4, 13, seed=1).w2, m.w2)
    x, y = torch.randn(2, 5, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(m(x, y), definition(x, y, m.w1, m.w2))
    mx = vkernels.nn.RandomMaclaurinPooling(5, 5, 13, seed=1)
    torch.testing.assert_close(mx(x), definition(x, x, mx.w1, mx.w2))
    with pytest.raises(ValueError, match="output_dim must be"):
        vkernels.nn.RandomMaclaurinPooling(5, 4, 0)
