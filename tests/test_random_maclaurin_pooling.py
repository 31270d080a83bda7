"""random_maclaurin_pooling: every backend and both routes against the per-location definition in fp64 (output and
gradients w.r.t. x, y, w1, w2); dtypes, odd shapes, layouts, y is x, empty batches and images; unbiasedness over random
projections; gradcheck; opcheck; torch.compile; bad input; the module."""
import math

import pytest
import torch

import vkernels
from vkernels.ops.random_maclaurin_pooling import choose_gram
from vkernels.reference.random_maclaurin_pooling import random_maclaurin_pooling as definition
from _common import check_close, impl_params, randn, raw_ops

OP = "random_maclaurin_pooling"
IMPLS = impl_params(OP)
# "project" recomputes the projections in the backward (save_projections=False); "saved" keeps them from the forward
# (the random_maclaurin_pooling_saved ops).
ROUTES = ["gram", "project", "saved"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def rmp(x, y, w1, w2, route, impl="auto"):
    return vkernels.random_maclaurin_pooling(x, y, w1, w2, route="project" if route == "saved" else route, impl=impl,
                                             save_projections=route == "saved")


def rademacher(d, c, dtype=torch.float32, device="cpu"):
    return (2 * torch.randint(0, 2, (d, c)) - 1).to(dtype=dtype, device=device)


def run_case(device, impl, route, dtype, B, C1, C2, H, W, D, layout="contiguous", same=False, wdtype=torch.float32):
    x = randn((B, C1, H, W), dtype, device)
    y = x if same else randn((B, C2, H, W), dtype, device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        y = x if same else y.to(memory_format=torch.channels_last)
    elif layout == "strided":  # every other channel and column of a larger tensor
        x = randn((B, 2 * C1, H, 2 * W), dtype, device)[:, ::2, :, ::2]
        y = x if same else randn((B, 2 * C2, H, 2 * W), dtype, device)[:, ::2, :, ::2]
    w1 = randn((D, C1), wdtype, device)
    w2 = w1 if (same and C1 == C2 and D % 2) else randn((D, C2), wdtype, device)  # also w1 is w2 once in a while
    leaves = [t.detach().clone().requires_grad_() for t in (x, w1, w2)]
    xl, w1l, w2l = leaves
    yl = xl if same else y.detach().clone().requires_grad_()
    out = rmp(xl, yl, w1l, w2l, route, impl)
    assert out.shape == (B, D) and out.dtype == dtype and out.device.type == device
    g = torch.randn(B, D, dtype=torch.float64)
    wrt = [xl, w1l, w2l] + ([] if same else [yl])
    grads = torch.autograd.grad((out.double().cpu() * g).sum(), wrt, allow_unused=True)

    def ref(prec, wprec):  # the weights' gradients come back in the weights' dtype, as the op's do
        a = x.detach().cpu().to(prec).requires_grad_()
        b = a if same else y.detach().cpu().to(prec).requires_grad_()
        u = w1.detach().cpu().to(wprec).requires_grad_()
        v = w2.detach().cpu().to(wprec).requires_grad_()
        o = definition(a, b, u, v)
        ins = [a, u, v] + ([] if same else [b])
        return o, torch.autograd.grad((o.double() * g).sum(), ins, allow_unused=True)

    o64, g64 = ref(torch.float64, torch.float64)
    ol, gl = ref(dtype, wdtype)
    check_close(out, ol, o64, dtype, "out")
    for name, a, b, c in zip(("dx", "dw1", "dw2", "dy"), grads, gl, g64):
        if a is None:  # an empty problem: nothing flowed back
            assert c is None or not c.abs().any(), name
            continue
        check_close(a, b, c, dtype, name, same_dtype=name in ("dx", "dy"))


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_definition(device, impl, route, dtype):
    run_case(device, impl, route, dtype, 3, 12, 10, 5, 4, 23)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", [(2, 7, 5, 3, 4, 11), (1, 3, 9, 1, 6, 1), (2, 17, 33, 7, 5, 37),
                                   (3, 9, 6, 3, 2, 600),  # D past the CPU backward's 512-row tile
                                   (0, 4, 4, 2, 3, 10), (2, 3, 3, 0, 2, 5)], ids=str)
def test_odd_shapes_and_empty(device, impl, route, shape):
    run_case(device, impl, route, torch.float32, *shape)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("same", [False, True], ids=["xy", "y_is_x"])
def test_layouts_and_y_is_x(device, impl, route, layout, same):
    run_case(device, impl, route, torch.float32, 2, 6, 6 if same else 5, 4, 3, 9, layout=layout, same=same)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("route", ROUTES)
def test_y_is_x_low_precision_and_fp64_weights(device, impl, route):
    run_case(device, impl, route, torch.bfloat16, 2, 8, 8, 3, 5, 13, same=True, wdtype=torch.float64)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_routes_agree_and_tiles(device, impl):
    # D past one CPU tile (128 rows) and past several Triton tiles, C past one K block.
    x, y = randn((2, 40, 3, 3), torch.float64, device), randn((2, 35, 3, 3), torch.float64, device)
    w1, w2 = rademacher(300, 40, torch.float64, device), rademacher(300, 35, torch.float64, device)
    want = definition(x.cpu(), y.cpu(), w1.cpu(), w2.cpu())
    for route in ROUTES:
        torch.testing.assert_close(rmp(x, y, w1, w2, route, impl).cpu(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device,impl", [p for p in IMPLS if p.values == ("cpu", "triton")])
@pytest.mark.parametrize("arch", [80, 90])
def test_triton_gpu_tiles_in_the_interpreter(device, impl, arch):
    """The tiles the launchers choose for a GPU of `arch` (_launch.tune_for: 64-row tiles, 16- to 64-column, K 16 or
    32; 16-bit inputs get their own on sm_80), run in the interpreter: the project and saved routes, forward and
    backward, bf16, ragged in D, HW and C."""
    from vkernels.triton import _launch
    with _launch.tune_for(arch):
        for route in ("project", "saved"):
            run_case(device, impl, route, torch.bfloat16, 2, 20, 18, 3, 7, 70)


@pytest.mark.parametrize("same", [False, True], ids=["xy", "y_is_x"])
def test_saved_backward_tiles_and_masks(same):
    """The CPU saved-projection backward past one D tile (B HW = 1800 -> 256-row tiles, D = 600: 3 tiles, the last
    ragged), for every gradient subset, against the recomputing project backward (fp64)."""
    x = randn((2, 3, 30, 30), torch.float64, "cpu")
    y = x if same else randn((2, 4, 30, 30), torch.float64, "cpu")
    w1, w2 = randn((600, 3), torch.float64, "cpu"), randn((600, y.shape[1]), torch.float64, "cpu")
    yy = None if same else y
    out, proj = torch.ops.vkernels.random_maclaurin_pooling_saved(x, yy, w1, w2)
    torch.testing.assert_close(out, definition(x, y, w1, w2))
    g = randn((2, 600), torch.float64, "cpu")
    for mask in ([True, True, True, True], [True, False, False, False], [False, True, False, True],
                 [False, False, True, False]):
        got = torch.ops.vkernels.random_maclaurin_pooling_saved_backward(g, x, yy, w1, w2, proj, mask)
        want = torch.ops.vkernels.random_maclaurin_pooling_backward(g, x, yy, w1, w2, "project", mask)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_not_sum_pooled():
    x, y = randn((2, 4, 3, 5), torch.float64, "cpu"), randn((2, 6, 3, 5), torch.float64, "cpu")
    w1, w2 = rademacher(7, 4, torch.float64), rademacher(7, 6, torch.float64)
    out = vkernels.random_maclaurin_pooling(x, y, w1, w2, sum_pool=False)
    torch.testing.assert_close(out, definition(x, y, w1, w2, sum_pool=False))
    assert out.shape == (2, 7, 3, 5)
    args = [t.clone().requires_grad_() for t in (x, y, w1, w2)]
    torch.autograd.gradcheck(lambda a, b, u, v: vkernels.random_maclaurin_pooling(a, b, u, v, sum_pool=False), args)


def test_route_choice():
    assert choose_gram(28 * 28, 512, 512, 8192)
    assert not choose_gram(14 * 14, 2048, 2048, 16000)  # (196 + D) C^2 > 196 D 2C: the projections are cheaper
    assert not choose_gram(4, 512, 512, 64)
    assert not choose_gram(49, 2048, 2048, 8192)  # ResNet-50's last 7x7 map: the projections are cheaper
    # Between HW ~ C / 3 and C / 2 the forward alone prefers the projections, forward+backward the Gram matrix.
    assert not choose_gram(200, 512, 512, 4096) and choose_gram(200, 512, 512, 4096, backward=True)
    assert not choose_gram(100, 512, 512, 4096, backward=True)
    # With the projections saved, the backward costs the project route as much as the forward: the forward's rule.
    assert not choose_gram(200, 512, 512, 4096, backward=True, saved=True)
    assert choose_gram(28 * 28, 512, 512, 8192, backward=True, saved=True)  # the C=512 28x28 cases stay on gram
    assert not choose_gram(14 * 14, 2048, 2048, 8192, backward=True, saved=True)


def test_save_projections_cap():
    import sys
    mod = sys.modules["vkernels.ops.random_maclaurin_pooling"]
    # The project-route size: P1, P2 are 2.2x the inputs -> saved; at B = 128 they are not.
    assert mod.saves_projections(32, 196, 2048, 2048, 8192, y_is_x=True)
    assert not mod.saves_projections(128, 196, 2048, 2048, 8192, y_is_x=True)
    B, HW, C, D = 3, 4, 5, 7
    inputs = B * HW * C + 2 * D * C
    assert mod.saves_projections(B, HW, C, C, D, True) == (2 * B * D * HW <= mod.SAVE_FACTOR * inputs)


def test_auto_saves_projections_when_a_gradient_is_taken(monkeypatch):
    import sys
    mod = sys.modules["vkernels.ops.random_maclaurin_pooling"]
    calls = []
    for name in ("random_maclaurin_pooling", "random_maclaurin_pooling_saved"):
        real = getattr(torch.ops.vkernels, name)
        monkeypatch.setattr(torch.ops.vkernels, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a),
                            raising=False)
    x, w1, w2 = torch.randn(2, 16, 2, 2), rademacher(64, 16), rademacher(64, 16)  # HW << C: the project route
    vkernels.random_maclaurin_pooling(x, x, w1, w2)
    xg = x.clone().requires_grad_()
    out = vkernels.random_maclaurin_pooling(xg, xg, w1, w2)
    vkernels.random_maclaurin_pooling(xg, xg, w1, w2, save_projections=False)
    monkeypatch.setattr(mod, "SAVE_FACTOR", 0)  # over the cap: recompute in the backward
    vkernels.random_maclaurin_pooling(xg, xg, w1, w2)
    assert calls == ["random_maclaurin_pooling", "random_maclaurin_pooling_saved", "random_maclaurin_pooling",
                     "random_maclaurin_pooling"]
    out.sum().backward()  # through the saved projections
    xr = x.clone().requires_grad_()
    definition(xr, xr, w1, w2).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-4)


def test_auto_route_follows_requires_grad(monkeypatch):
    import sys
    mod = sys.modules["vkernels.ops.random_maclaurin_pooling"]  # the package attribute of that name is the function
    seen = []
    monkeypatch.setattr(mod, "choose_gram", lambda *a, saved: seen.append((*a[4:], saved)) or True)
    x, w = torch.randn(1, 3, 2, 2), torch.randn(4, 3)
    vkernels.random_maclaurin_pooling(x, x, w, w)
    vkernels.random_maclaurin_pooling(x.requires_grad_(), x, w, w)
    with torch.no_grad():
        vkernels.random_maclaurin_pooling(x, x, w, w)
    assert seen == [(False, False), (True, True), (False, False)]


def test_unbiased_over_projection_draws():
    """E_w <phi(a, b), phi(c, e)> = <a, c><b, e> for Rademacher w: mean over N draws within 5 standard errors."""
    torch.manual_seed(0)
    C, D, N = 5, 4, 2000
    a, b = torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    c, e = a + 0.5 * torch.randn(C, dtype=torch.float64), b + 0.5 * torch.randn(C, dtype=torch.float64)
    x, y = torch.stack([a, c])[:, :, None, None], torch.stack([b, e])[:, :, None, None]
    w1, w2 = (2 * torch.randint(0, 2, (2, N, D, C)) - 1).double()
    est = torch.empty(N, dtype=torch.float64)
    for n in range(N):
        out = vkernels.random_maclaurin_pooling(x, y, w1[n], w2[n], route=ROUTES[n % 2])  # no grad: not saved
        est[n] = out[0] @ out[1]
    exact = float((a @ c) * (b @ e))
    se = float(est.std()) / math.sqrt(N)
    assert abs(float(est.mean()) - exact) < 5 * se and se > 1e-3 * abs(exact)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("route", ROUTES)
def test_gradcheck(device, impl, route):
    x, y = randn((2, 4, 2, 3), torch.float64, device), randn((2, 3, 2, 3), torch.float64, device)
    w1, w2 = randn((5, 4), torch.float64, device), randn((5, 3), torch.float64, device)
    args = [t.clone().requires_grad_() for t in (x, y, w1, w2)]
    torch.autograd.gradcheck(lambda a, b, u, v: rmp(a, b, u, v, route, impl), args)
    xs, u = x.clone().requires_grad_(), w1.clone().requires_grad_()
    torch.autograd.gradcheck(lambda a, u: rmp(a, a, u, u.flip(0), route, impl), [xs, u])


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    fwd, bwd = raw_ops(OP, impl)
    x, y = randn((2, 4, 3, 2), torch.float32, device), randn((2, 5, 3, 2), torch.float32, device)
    w1, w2 = randn((6, 4), torch.float32, device), randn((6, 5), torch.float32, device)
    combos = [(r, yy, ww2) for r in ("gram", "project") for yy, ww2 in ((y, w2), (None, w1.flip(0)))]
    if impl == "triton":  # the interpreter makes each opcheck ~10 s: one route per y-configuration
        combos = combos[::3]
    masks = ([True, True, True, True], [True, False, False, True])
    for route, yy, ww2 in combos:
        args = [t.clone().requires_grad_() for t in (x, w1, ww2)]
        fargs = (args[0], None if yy is None else yy.clone().requires_grad_(), args[1], args[2], route)
        torch.library.opcheck(fwd.default, fargs)
        g = torch.randn(2, 6, device=device)
        for mask in masks[:1] if impl == "triton" else masks:
            torch.library.opcheck(bwd.default, (g, x, yy, w1, ww2, route, mask))
    sfwd, sbwd = raw_ops(OP + "_saved", impl)
    for yy, ww2 in ((y, w2), (None, w1.flip(0))):
        args = [t.clone().requires_grad_() for t in (x, w1, ww2)]
        torch.library.opcheck(sfwd.default, (args[0], None if yy is None else yy.clone().requires_grad_(), *args[1:]))
        _, proj = sfwd(x, yy, w1, ww2)
        for mask in masks[:1] if impl == "triton" else masks:
            torch.library.opcheck(sbwd.default, (torch.randn(2, 6, device=device), x, yy, w1, ww2, proj, mask))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl):
    torch._dynamo.reset()
    x, y = randn((2, 5, 3, 3), torch.float32, device), randn((2, 4, 3, 3), torch.float32, device)
    w1, w2 = rademacher(13, 5, device=device), rademacher(13, 4, device=device)

    def f(x, y, w1):
        a = vkernels.random_maclaurin_pooling(x * 2, y, w1, w2, route="gram", impl=impl)
        b = vkernels.random_maclaurin_pooling(x, x, w1, w1.flip(1), route="project", impl=impl,
                                              save_projections=False)
        c = vkernels.random_maclaurin_pooling(x, y * 3, w1, w2, route="project", impl=impl, save_projections=True)
        return a.square().sum(1) + b.sum(1) + c.sin().sum(1)

    ins = [t.clone().requires_grad_() for t in (x, y, w1)]
    ref_ins = [t.clone().requires_grad_() for t in (x, y, w1)]
    got = torch.compile(f, fullgraph=True)(*ins)
    want = f(*ref_ins)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    want.sum().backward()
    for a, b in zip(ins, ref_ins):
        torch.testing.assert_close(a.grad, b.grad)


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
        (dict(w1=w1[:0]), ValueError, r"w1 must have shape \(D, 5\) with D >= 1"),
        (dict(w2=w2[:6]), ValueError, r"w2 must have shape \(7, 4\)"),
        (dict(w1=w1.long()), TypeError, "w1 must be a float tensor"),
        (dict(w1=w1.to("meta")), ValueError, "w1 is on meta"),
        (dict(y=[1.0]), TypeError, "y must be a torch.Tensor"),
        (dict(route="fft"), ValueError, "route must be one of"),
        (dict(impl="fft"), ValueError, "impl must be one of"),
    ]
    for kwargs, exc, msg in cases:
        args = {**dict(x=x, y=y, w1=w1, w2=w2), **kwargs}
        with pytest.raises(exc, match=msg):
            call(**args)
    big = dict(device="meta")
    with pytest.raises(ValueError, match=r"w1 has 2147483652 elements"):
        call(torch.empty(1, 4, 1, 1, **big), torch.empty(1, 4, 1, 1, **big), torch.empty(2**29 + 1, 4, **big),
             torch.empty(2**29 + 1, 4, **big))
    # The C++ schema checks name the argument too (for callers of torch.ops.vkernels directly).
    op = torch.ops.vkernels.random_maclaurin_pooling
    for args, msg in [((x, y, w1, w2, "auto"), "route must be 'gram' or 'project'"),
                      ((x, y[:1], w1, w2, "gram"), "y must have x's B, H, W"),
                      ((x, y, w1, w2[:, :3], "gram"), r"w2 must have shape \[7, 4\]"),
                      ((x.int(), y, w1, w2, "gram"), "x must be float16")]:
        with pytest.raises(RuntimeError, match=msg):
            op(*args)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \[2, 7\]"):
        torch.ops.vkernels.random_maclaurin_pooling_backward(torch.randn(2, 6), x, y, w1, w2, "gram",
                                                             [True, True, True, True])
    sbwd = torch.ops.vkernels.random_maclaurin_pooling_saved_backward
    _, proj = torch.ops.vkernels.random_maclaurin_pooling_saved(x, y, w1, w2)
    assert proj.shape == (2, 7, 2, 9) and proj.dtype == torch.float32
    for args, msg in [((torch.randn(2, 6), x, y, w1, w2, proj), r"grad_out must have shape \[2, 7\]"),
                      ((torch.randn(2, 7), x, y, w1, w2, proj[:, :, :1]), r"proj must have shape \[2, 7, 2, 9\]"),
                      ((torch.randn(2, 7), x, y, w1, w2, proj.double()), "proj must be Float")]:
        with pytest.raises(RuntimeError, match=msg):
            sbwd(*args, [True, True, True, True])


def test_module():
    m = vkernels.nn.RandomMaclaurinPooling(5, 4, 13, seed=1)
    assert set(m.state_dict()) == {"w1", "w2"} and set(m.w1.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(vkernels.nn.RandomMaclaurinPooling(5, 4, 13, seed=1).w2, m.w2)
    x, y = torch.randn(2, 5, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(m(x, y), definition(x, y, m.w1, m.w2))
    mx = vkernels.nn.RandomMaclaurinPooling(5, 5, 13, seed=1)
    torch.testing.assert_close(mx(x), definition(x, x, mx.w1, mx.w2))
    # save_projections reaches the function: both backward forms give the definition's gradient.
    for save in (True, False):
        ms = vkernels.nn.RandomMaclaurinPooling(5, 5, 13, seed=1, route="project", save_projections=save)
        xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        ms(xs).sum().backward()
        definition(xr, xr, ms.w1, ms.w2).sum().backward()
        torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="output_dim must be"):
        vkernels.nn.RandomMaclaurinPooling(5, 4, 0)


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: the gram, project and saved-projections routes, y distinct or x
    itself, forward + backward per dtype."""

    def case(dtype, route, same, layout):
        def run():
            wdtype = torch.float64 if dtype == torch.float64 else torch.float32
            x = randn((2, 24, 5, 6), dtype, "cpu")
            y = randn((2, 40, 5, 6), dtype, "cpu")
            if layout == "channels_last":
                x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
            x.requires_grad_()
            y = x if same else y.requires_grad_()
            w1 = randn((96, 24), wdtype, "cpu").requires_grad_()
            w2 = randn((96, x.shape[1] if same else 40), wdtype, "cpu").requires_grad_()
            out = rmp(x, y, w1, w2, route, impl="triton")
            torch.autograd.grad(out, [x, w1, w2] + ([] if same else [y]), torch.randn_like(out))
        return f"route={route} y_is_x={same} {layout} {dtype}", run

    layouts = ("contiguous", "channels_last") if full else ("contiguous",)
    return [case(dtype, route, same, layout) for dtype in DTYPES for route in ROUTES for same in (False, True)
            for layout in layouts]


@pytest.mark.parametrize("device,impl", [p for p in IMPLS if p.values[1] == "triton"])
def test_triton_dot_precision_follows_torch(device, impl):
    """The Triton kernels' tl.dot input_precision (the PREC constexpr the launcher passes) follows
    torch.get_float32_matmul_precision() for fp32/fp16/bf16 inputs ("highest" -> the exact-ish tf32x3, otherwise
    tf32) and is "ieee" for fp64, in every kernel of both routes, forward and backward."""
    from vkernels.triton import _launch

    want = {("highest", torch.float32): "tf32x3", ("medium", torch.float32): "tf32",
            ("high", torch.bfloat16): "tf32", ("high", torch.float64): "ieee"}  # few: each runs 6 interpreted kernels
    saved = torch.get_float32_matmul_precision()
    try:
        for (prec, dtype), expected in want.items():
            torch.set_float32_matmul_precision(prec)
            seen = {}

            def record(kernel, grid, args, kwargs):
                name = getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", "?")
                seen.setdefault(name, set()).add(kwargs["PREC"])

            x, y = randn((2, 3, 2, 1), dtype, device), randn((2, 4, 2, 1), dtype, device)
            w1, w2 = randn((5, 3), torch.float32, device), randn((5, 4), torch.float32, device)
            with _launch.recording(record):
                for route in ("gram", "project"):
                    leaves = [t.clone().requires_grad_() for t in (x, y, w1, w2)]
                    rmp(*leaves, route, impl).float().sum().backward()
            assert len(seen) == 4, (prec, dtype, sorted(seen))  # gram and project forward, dG, dW
            assert all(v == {expected} for v in seen.values()), (prec, dtype, seen)
    finally:
        torch.set_float32_matmul_precision(saved)
