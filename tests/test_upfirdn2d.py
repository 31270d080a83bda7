"""upfirdn2d: every implementation against the reference; gradients of any order; helpers and modules; opcheck;
torch.compile; bad input."""

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

import vkernels
from vkernels.ops.upfirdn2d import _parse
from vkernels.reference.upfirdn2d import upfirdn2d as _ref
from conftest import DEVICES
from _common import check_close, impl_params, randn

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
IMPLS = impl_params("upfirdn2d")


def reference(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """The StyleGAN reference with the public function's argument forms."""
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    a = _parse(x, f, up, down, padding, flip_filter, gain)
    return _ref(x, f, a[0:2], a[2:4], a[4:8], a[8], a[9])


def make_x(shape, layout, dtype, device):
    if layout == "sliced":  # non-dense: every other column of a larger tensor
        return randn(shape[:-1] + (shape[-1] * 2,), dtype, device)[..., ::2]
    if layout == "transposed":  # H and W swapped in memory
        return randn(shape[:2] + (shape[3], shape[2]), dtype, device).transpose(2, 3)
    x = randn(shape, dtype, device)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def make_f(spec):
    """'2d:fh,fw' random 2-D, '1d:k' random 1-D (separable), 'blur' StyleGAN2's [1,3,3,1] 2-D, None identity."""
    if spec is None:
        return None
    if spec == "blur":
        return vkernels.setup_filter([1, 3, 3, 1])
    kind, size = spec.split(":")
    dims = tuple(int(s) for s in size.split(","))
    return torch.rand(dims) + 0.1 if kind == "2d" else torch.randn(dims)


# (shape, filter, up, down, padding, flip_filter, gain, layout)
CASES = [
    ((2, 3, 7, 9), "blur", 2, 1, (2, 1), False, 4.0, "contiguous"),               # upsample2d-like
    ((2, 3, 8, 10), "blur", 1, 2, 1, False, 1.0, "channels_last"),                # downsample2d-like
    ((1, 5, 6, 5), "1d:5", 2, 1, (3, 2, 2, 3), True, 2.0, "contiguous"),          # separable, flipped
    ((2, 4, 9, 7), "1d:4", 1, 2, (1, 2, 0, 1), False, 1.0, "channels_last"),
    ((3, 2, 5, 6), "2d:3,2", 3, 2, (-1, 2, 3, -2), False, 1.5, "contiguous"),     # negative padding crops
    ((2, 3, 6, 7), "2d:2,3", (2, 3), (3, 1), (0, -1, 4, 1), True, 0.7, "sliced"),
    ((1, 2, 11, 4), "1d:3", (1, 2), (2, 1), (-2, 1, 0, -3), False, 1.0, "transposed"),
    ((2, 6, 5, 5), "2d:4,4", 2, 2, 2, False, 1.0, "channels_last"),
    ((2, 3, 4, 6), None, 2, 1, 0, False, 1.0, "contiguous"),                      # identity: zero insertion
    ((1, 3, 9, 9), "2d:1,1", 1, 3, 0, False, 3.0, "contiguous"),                  # pure decimation
    ((0, 3, 6, 6), "blur", 2, 1, (2, 1), False, 4.0, "contiguous"),               # empty batch
    ((0, 3, 6, 6), "1d:4", 1, 2, 1, False, 1.0, "channels_last"),
]


def case_id(c):
    shape, f, up, down, pad, flip, gain, layout = c
    return f"{'x'.join(map(str, shape))}-{f}-u{up}-d{down}-p{pad}-{'flip' if flip else 'conv'}-{layout}"


def run_case(device, impl, dtype, case, grads=True):
    shape, fspec, up, down, pad, flip, gain, layout = case
    x = make_x(shape, layout, dtype, device)
    f = make_f(fspec)
    f = None if f is None else f.to(device)
    kw = dict(up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    xs = x.detach().clone().requires_grad_(grads)
    y = vkernels.upfirdn2d(xs, f, **kw, impl=impl)
    x64 = x.detach().double().cpu().requires_grad_(grads)
    y64 = reference(x64, None if f is None else f.cpu(), **kw)
    xl = x.detach().clone().requires_grad_(grads)
    yl = reference(xl, f, **kw)
    check_close(y, yl, y64, dtype, "y")
    if layout == "channels_last" and x.shape[1] > 1 and x.numel():
        assert y.is_contiguous(memory_format=torch.channels_last), "channels_last is kept"
    if not grads or x.numel() == 0:
        return
    dy = randn(y.shape, dtype, device)
    (gx,) = torch.autograd.grad(y, xs, dy)
    (gx64,) = torch.autograd.grad(y64, x64, dy.double().cpu())
    (gxl,) = torch.autograd.grad(yl, xl, dy)
    check_close(gx, gxl, gx64, dtype, "dx")


@pytest.mark.ci_cover("dtype", "case")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(device, impl, dtype, case):
    run_case(device, impl, dtype, case)


@pytest.mark.ci_cover("up,down", "layout", "separable")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("up", [2, 3, 4, (4, 3)], ids=str)
@pytest.mark.parametrize("down", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("separable", [False, True], ids=["2d", "1d"])
def test_every_phase_gets_its_taps(device, impl, up, down, layout, separable):
    """Polyphase kernels visit per output only the taps that land on input pixels, starting at a tap that depends on
    the output's phase. Filter lengths that are not multiples of up give phases different tap counts (ceil and floor
    of F/up), and the odd padding shifts which phase comes first: a skipped, extra or misaligned tap in any phase
    changes some output. Exact in float64 up to rounding."""
    from vkernels.triton import _launch

    ux, uy = (up, up) if isinstance(up, int) else up
    fshape = (2 * max(ux, uy) + 1,) if separable else (2 * uy + 1, 2 * ux - 1)
    f = (torch.rand(fshape) + 0.5).to(device)
    x = make_x((2, 3, 5, 6), layout, torch.float64, device)
    kw = dict(up=up, down=down, padding=(3, 1, 2, 2), gain=1.5)
    launches = []
    with _launch.recording(lambda kernel, grid, args, kwargs: launches.append(kwargs)):
        y = vkernels.upfirdn2d(x, f, **kw, impl=impl)
    torch.testing.assert_close(y, reference(x, f, **kw), rtol=1e-12, atol=1e-12)
    if impl == "triton":  # the taps per output: ceil(F / up) per axis, not F
        taps = [(k["TH"], k["TW"]) for k in launches]
        want = ([(1, -(-fshape[0] // ux)), (-(-fshape[0] // uy), 1)] if separable else
                [(-(-fshape[0] // uy), -(-fshape[1] // ux))])
        assert taps == want, f"taps per output {taps}, want {want}"


@pytest.mark.parametrize("device,impl", [p for p in IMPLS if p.values[1] == "triton"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_triton_int64_branch_equals_int32(device, impl, layout, monkeypatch):
    """The kernel's INT64 branch (otherwise reached only by tensors past 2^31 elements) forced on small tensors:
    NCHW keeps row / column indices in int32 with int64 strides, channels_last widens the pixel index; both must give
    the int32 launch's result bit for bit, with 2-D and separable filters, up/down factors and cropping."""
    from vkernels.triton import _launch

    x = make_x((2, 3, 7, 9), layout, torch.float32, device)
    cases = [(vkernels.setup_filter([1, 3, 3, 1]), dict(up=2, padding=(2, 1, 2, 1), gain=4.0)),
             (torch.rand(3, 4, device=device) + 0.5, dict(up=(3, 2), down=(1, 2), padding=(1, -1, 2, 0))),
             (vkernels.setup_filter([1, 2, 1]), dict(down=2, padding=1))]
    for f, kw in cases:
        want = vkernels.upfirdn2d(x, f.to(device), **kw, impl=impl)
        flags = []
        with monkeypatch.context() as m, _launch.recording(lambda k, g, a, kwargs: flags.append(kwargs["INT64"])):
            m.setattr(_launch, "index64", lambda *args: True)
            got = vkernels.upfirdn2d(x, f.to(device), **kw, impl=impl)
        assert flags and all(flags), flags
        assert torch.equal(got, want), (kw, (got - want).abs().max())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("device,impl", IMPLS)
def test_property_random_configs(device, impl, data):
    """Hypothesis-drawn shapes, filters (1-D/2-D), factors, paddings (cropping too) and layouts; a failure shrinks to
    the smallest configuration that shows it."""
    n, c = data.draw(st.integers(1, 2), label="n"), data.draw(st.integers(1, 5), label="c")
    h, w = data.draw(st.integers(1, 9), label="h"), data.draw(st.integers(1, 9), label="w")
    separable = data.draw(st.booleans(), label="separable")
    fshape = ((data.draw(st.integers(1, 6), label="ftaps"),) if separable else
              (data.draw(st.integers(1, 5), label="fh"), data.draw(st.integers(1, 5), label="fw")))
    up = (data.draw(st.integers(1, 3), label="upx"), data.draw(st.integers(1, 3), label="upy"))
    down = (data.draw(st.integers(1, 3), label="downx"), data.draw(st.integers(1, 3), label="downy"))
    pad = tuple(data.draw(st.lists(st.integers(-2, 4), min_size=4, max_size=4), label="padding"))
    fh, fw = fshape[0], fshape[-1]
    assume(w * up[0] + pad[0] + pad[1] >= fw and h * up[1] + pad[2] + pad[3] >= fh)  # non-empty output
    layout = data.draw(st.sampled_from(["contiguous", "channels_last", "sliced", "transposed"]), label="layout")
    dtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16]), label="dtype")
    kw = dict(up=up, down=down, padding=pad, flip_filter=data.draw(st.booleans(), label="flip"),
              gain=data.draw(st.sampled_from([1.0, 1.5, 2.5]), label="gain"))
    x = make_x((n, c, h, w), layout, dtype, device)
    f = torch.randn(fshape)
    y = vkernels.upfirdn2d(x, f.to(device), **kw, impl=impl)
    check_close(y, reference(x, f.to(device), **kw), reference(x.double().cpu(), f, **kw), dtype,
                f"{tuple(x.shape)} {fshape} {kw} {layout}")


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("fspec,up,down,pad", [("2d:3,4", 2, 1, (1, 2, 2, 1)), ("1d:3", 1, 2, (1, 0, 0, 1)),
                                               ("2d:2,2", (1, 2), (3, 1), (-1, 2, 1, 0))])
def test_gradcheck_and_gradgradcheck(device, impl, fspec, up, down, pad):
    # The Triton interpreter costs ~10 ms a call and gradgradcheck makes hundreds: a tiny x and fast mode there.
    interp = impl == "triton" and device == "cpu"
    x = randn((1, 2, 3, 4) if interp else (2, 2, 5, 4), torch.float64, device).requires_grad_()
    f = make_f(fspec).to(device)

    def fn(x):
        return vkernels.upfirdn2d(x, f, up, down, pad, flip_filter=False, gain=1.3, impl=impl)

    torch.autograd.gradcheck(fn, (x,), fast_mode=interp)
    torch.autograd.gradgradcheck(fn, (x,), fast_mode=interp)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_third_order_matches_reference(device, impl):
    """The backward is the op itself, so every order exists; order 3 equals the reference's."""
    f = make_f("2d:3,3").to(device)
    x0 = randn((1, 2, 4, 5), torch.float64, device)
    kw = dict(up=2, down=1, padding=(1, 2, 2, 0), gain=2.0)

    def third(fn):
        x = x0.clone().requires_grad_()
        y = fn(x)
        (g1,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g1.square().sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad(g2.square().sum(), x)
        return g3

    torch.testing.assert_close(third(lambda x: vkernels.upfirdn2d(x, f, **kw, impl=impl)),
                               third(lambda x: reference(x, f, **kw)))


def _samples(device, dtype=torch.float32):
    x = randn((2, 3, 5, 6), dtype, device)
    blur = vkernels.setup_filter([1, 3, 3, 1]).to(device)
    f1 = torch.randn(5, device=device)
    return [
        (x, blur, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0),
        (x.to(memory_format=torch.channels_last), blur, 1, 1, 2, 2, 1, 1, 1, 1, False, 1.0),
        (x[:, :, :, ::2], f1, 2, 1, 1, 1, 2, 2, 1, 1, True, 1.5),
        (x, f1, 1, 2, 2, 1, -1, 2, 0, 3, False, 1.0),
        (randn((0, 3, 4, 4), dtype, device), blur, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0),
    ]


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    op = torch.ops.vkernels.upfirdn2d_triton if impl == "triton" else torch.ops.vkernels.upfirdn2d
    for args in _samples(device):
        x = args[0].clone().requires_grad_(args[0].numel() > 0)
        torch.library.opcheck(op.default, (x,) + args[1:])


@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl):
    torch._dynamo.reset()
    f = vkernels.setup_filter([1, 3, 3, 1], device=device)

    def fn(x):
        h = vkernels.upsample2d(x * 2, f, impl=impl)
        return vkernels.downsample2d(torch.tanh(h), f, impl=impl).sum(dim=(2, 3))

    x = randn((2, 3, 6, 5), torch.float32, device).requires_grad_()
    y = torch.compile(fn, fullgraph=True, dynamic=False)(x)
    y_eager = fn(x)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(y_eager.sum(), x)[0])


# ------------------------------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_helpers_known_answers(impl):
    x = randn((2, 3, 6, 8), torch.float32, "cpu")
    box = vkernels.setup_filter([1, 1])  # 2x2 box, normalised
    # upsample2d with a box filter is nearest-neighbour upsampling; downsample2d with it is 2x2 average pooling.
    torch.testing.assert_close(vkernels.upsample2d(x, box, impl=impl),
                               x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    torch.testing.assert_close(vkernels.downsample2d(x, box, impl=impl), F.avg_pool2d(x, 2))
    # filter2d keeps the size: a "same" depthwise convolution with the (flipped) filter.
    f = torch.rand(3, 4)
    want = F.conv2d(F.pad(x, [2, 1, 1, 1]), f.flip([0, 1])[None, None].repeat(3, 1, 1, 1), groups=3)
    torch.testing.assert_close(vkernels.filter2d(x, f, impl=impl), want)
    torch.testing.assert_close(vkernels.filter2d(x, None, impl=impl), x)
    # Identity filter: upfirdn2d is zero insertion, then decimation undoes it.
    z = vkernels.upfirdn2d(x, None, up=2, impl=impl)
    assert z.shape == (2, 3, 12, 16) and torch.equal(z[:, :, ::2, ::2], x) and z[:, :, 1::2].abs().sum() == 0
    torch.testing.assert_close(vkernels.upfirdn2d(z, None, down=2, impl=impl), x)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("fspec", ["blur", "1d:8", "2d:3,3"])
def test_helpers_match_stylegan_formulas(device, impl, fspec):
    """upsample2d/downsample2d/filter2d are upfirdn2d with StyleGAN's padding and gain formulas."""
    x = randn((2, 3, 7, 6), torch.float32, device)
    f = make_f(fspec).to(device)
    fw, fh = f.shape[-1], f.shape[0]
    pad = (1, 0, 2, 1)
    cases = [
        (vkernels.upsample2d(x, f, up=(2, 3), padding=pad, gain=1.5, impl=impl),
         reference(x, f, up=(2, 3), padding=[1 + (fw + 1) // 2, (fw - 2) // 2, 2 + (fh + 2) // 2, 1 + (fh - 3) // 2],
                   gain=1.5 * 6)),
        (vkernels.downsample2d(x, f, down=2, padding=pad, flip_filter=True, impl=impl),
         reference(x, f, down=2, padding=[1 + (fw - 1) // 2, (fw - 2) // 2, 2 + (fh - 1) // 2, 1 + (fh - 2) // 2],
                   flip_filter=True)),
        (vkernels.filter2d(x, f, padding=pad, gain=0.5, impl=impl),
         reference(x, f, padding=[1 + fw // 2, (fw - 1) // 2, 2 + fh // 2, 1 + (fh - 1) // 2], gain=0.5)),
    ]
    for got, want in cases:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert vkernels.upsample2d(x, f, impl=impl).shape == (2, 3, 14, 12)
    assert vkernels.downsample2d(x[:, :, :6], f, impl=impl).shape == (2, 3, 3, 3)


def test_setup_filter_follows_stylegan():
    f = vkernels.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and f.dtype == torch.float32
    torch.testing.assert_close(f, torch.tensor([1., 3, 3, 1]).outer(torch.tensor([1., 3, 3, 1])) / 64)
    assert vkernels.setup_filter(list(range(1, 9))).shape == (8,)  # >= 8 taps: separable by default
    assert vkernels.setup_filter([1, 2], separable=True).shape == (2,)
    torch.testing.assert_close(vkernels.setup_filter([1, 2, 3], normalize=False, separable=True, flip_filter=True,
                                                     gain=4), torch.tensor([6., 4, 2]))
    torch.testing.assert_close(vkernels.setup_filter([[1, 2], [3, 4]], normalize=False, gain=3),
                               torch.tensor([[3., 6], [9, 12]]))
    torch.testing.assert_close(vkernels.setup_filter(None), torch.ones(1, 1))
    with pytest.raises(ValueError, match="f must be a scalar, 1-D or 2-D"):
        vkernels.setup_filter(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="separable=True needs a 1-D f"):
        vkernels.setup_filter(torch.ones(2, 2), separable=True)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_modules(device, impl):
    x = randn((2, 4, 6, 6), torch.float32, device)
    up = vkernels.nn.Upsample2d(impl=impl).to(device)
    down = vkernels.nn.Downsample2d([1, 3, 3, 1], impl=impl).to(device)
    blur = vkernels.nn.Filter2d(impl=impl).to(device)
    assert [n for n, _ in up.named_buffers()] == ["filter"] and not list(up.parameters())
    f = vkernels.setup_filter([1, 3, 3, 1], device=device)
    torch.testing.assert_close(up(x), vkernels.upsample2d(x, f, impl="reference"))
    torch.testing.assert_close(down(x), vkernels.downsample2d(x, f, impl="reference"))
    torch.testing.assert_close(blur(x), vkernels.filter2d(x, vkernels.setup_filter([1, 2, 1], device=device),
                                                          impl="reference"))
    assert up(x).shape == (2, 4, 12, 12) and down(x).shape == (2, 4, 3, 3) and blur(x).shape == x.shape
    xg = x.clone().requires_grad_()
    down(up(xg)).sum().backward()
    assert xg.grad.shape == x.shape
    m = vkernels.nn.Upsample2d(impl=impl).to(device)
    m.load_state_dict(up.state_dict())
    assert "up=2" in repr(m) and "filter=(4, 4)" in repr(m)


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device):
    x = randn((2, 3, 6, 6), torch.float32, device)
    f = torch.ones(3, 3, device=device)
    cases = [
        (dict(x=x[0], f=f), ValueError, "x must be 4-D"),
        (dict(x=x.int(), f=f), TypeError, "x must be float16"),
        (dict(x=x.numpy() if device == "cpu" else x.cpu().numpy(), f=f), TypeError, "x must be a torch.Tensor"),
        (dict(x=x, f=torch.ones(2, 2, 2, device=device)), ValueError, "f must be a 1-D or 2-D"),
        (dict(x=x, f=f.double()), TypeError, "f must be float32"),
        (dict(x=x, f=[1.0, 2.0]), TypeError, "f must be a torch.Tensor or None"),
        (dict(x=x, f=torch.ones(0, device=device)), ValueError, "f must not be empty"),
        (dict(x=x, f=f.clone().requires_grad_()), ValueError, "f must not require grad"),
        (dict(x=x, f=f, up=0), ValueError, "up must be >= 1"),
        (dict(x=x, f=f, down=(1, 0)), ValueError, "down must be >= 1"),
        (dict(x=x, f=f, up=1.5), ValueError, "up must be an int"),
        (dict(x=x, f=f, down=(1, 2, 3)), ValueError, "down must be an int or a pair"),
        (dict(x=x, f=f, padding=(1, 2, 3)), ValueError, "padding must be an int, "),
        (dict(x=x, f=f, padding=1.0), ValueError, "padding must be"),
        (dict(x=x, f=f, padding=-3), ValueError, "output size must be >= 1"),
        (dict(x=x, f=f, padding=(0, 0, -2, -2)), ValueError, "output size must be >= 1"),
        (dict(x=x, f=f, gain=float("inf")), ValueError, "gain must be a finite"),
        (dict(x=x, f=f, impl="tpu"), ValueError, "impl must be"),
    ]
    if device == "cpu":
        cases.append((dict(x=x, f=f, impl="cuda"), RuntimeError, "impl='cuda' is not available"))
    if torch.cuda.is_available():
        other = "cpu" if device == "cuda" else "cuda"
        cases.append((dict(x=x, f=f.to(other)), ValueError, "f is on"))
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            vkernels.upfirdn2d(**kwargs)


def test_cpp_op_checks_its_own_arguments():
    """Direct torch.ops calls (bypassing the Python checks) still get named errors, never a crash."""
    x = torch.randn(2, 3, 6, 6)
    f = torch.ones(3, 3)
    op = torch.ops.vkernels.upfirdn2d

    def call(x=x, f=f, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0)):
        return op(x, f, *up, *down, *pad, False, 1.0)

    for kwargs, msg in [
        (dict(x=x[0]), "x must be 4-D"),
        (dict(x=x.long()), "x must be float16"),
        (dict(f=torch.ones(2, 2, 2)), "f must be 1-D .separable. or 2-D"),
        (dict(f=f.double()), "f must be float32"),
        (dict(up=(0, 1)), "up must be >= 1"),
        (dict(down=(1, -1)), "down must be >= 1"),
        (dict(pad=(-3, -2, 0, 0)), "output size must be >= 1"),
    ]:
        with pytest.raises(RuntimeError, match=msg):
            call(**kwargs)


def test_auto_picks_the_cpu_kernel():
    x = torch.randn(1, 2, 4, 4)
    assert vkernels.resolve_impl("upfirdn2d", x) == "cpu"


def test_gain_is_stylegans():
    """A 1-D filter is applied twice, each pass scaled by sqrt(gain): the same result as its 2-D outer product."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    f = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8
    a = vkernels.upfirdn2d(x, f, up=2, padding=2, gain=3.0)
    b = vkernels.upfirdn2d(x, f.outer(f), up=2, padding=2, gain=3.0)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, reference(x, f, up=2, padding=2, gain=3.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("f", [None, torch.ones(4), torch.ones(3, 2)])
def test_zero_channels_every_impl_including_reference(f):
    """C = 0 is a valid (empty) batch: conv2d rejects groups=0, so the reference used to raise here."""
    x = torch.randn(2, 0, 5, 7)
    sizes = {impl: vkernels.upfirdn2d(x, f, up=2, down=(1, 3), padding=(0, 2, 1, -1), impl=impl).shape
             for impl in ["reference"] + vkernels.available_impls("upfirdn2d", "cpu")}
    assert len(set(sizes.values())) == 1, sizes
    assert vkernels.filtered_lrelu(x, f, f, up=2, down=2, padding=3, impl="reference").shape == \
        vkernels.filtered_lrelu(x, f, f, up=2, down=2, padding=3, impl="cpu").shape


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_modules_survive_dtype_casts(dtype):
    """model.double() / .half() used to cast the filter buffers too, and the ops take float32 filters only (the next
    call raised). The filters stay float32 and exact; the state dict round-trips."""
    f = vkernels.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    for m in (vkernels.nn.Upsample2d(f), vkernels.nn.Downsample2d(f), vkernels.nn.Filter2d(f),
              vkernels.nn.FilteredLReLU(4, fu=f, fd=f, up=2, down=2, padding=3)):
        y = m(x.float())
        m.to(dtype)
        assert all(b.dtype == torch.float32 for b in m.buffers())
        out = m(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), y, rtol=1e-2, atol=1e-2)
        m.load_state_dict(m.state_dict())


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: StyleGAN's filters (separable 4 and 12 taps, 2-D 4x4) at up 2,
    down 2 and both, contiguous and channels_last, forward + backward + double backward per dtype. The narrow
    shape takes the launcher's 32x16 tiles; the wide one (outputs over 32 columns, over 32 channels) its 8x64 tiles.
    Full: also up 4 with an odd-length filter and asymmetric 2-D filters (phases with unequal tap counts)."""
    from _common import static_grads

    narrow, wide = (2, 3, 9, 8), (1, 40, 6, 20)
    geoms = [(narrow, (4,), 2, 1, 2), (narrow, (4,), 1, 2, 1), (narrow, (12,), 2, 2, 5), (narrow, (4, 4), 2, 1, 1),
             (wide, (4, 4), 2, 1, 1), (wide, (5,), 4, 2, 3)]
    if full:
        geoms += [(narrow, (6,), 4, 2, 3), (narrow, (3, 5), 1, 1, (1, -1, 2, 0)), (wide, (12,), 2, 2, 5),
                  (narrow, (5, 3), (3, 4), (1, 2), (2, 1, 3, 0))]

    def case(dtype, shape, fshape, up, down, pad, layout):
        def run():
            x = make_x(shape, layout, dtype, "cpu").requires_grad_()
            f = torch.rand(fshape) + 0.5
            y = vkernels.upfirdn2d(x, f, up=up, down=down, padding=pad, impl="triton")
            static_grads(y, (x,), order=2)
        return f"x={shape} f={fshape} up={up} down={down} pad={pad} {layout} {dtype}", run

    return [case(dtype, *g, layout) for dtype in DTYPES for g in geoms for layout in ("contiguous", "channels_last")]
