"""filtered_lrelu: every implementation against the reference (the composition of upfirdn2d, bias, leaky ReLU and
clamp in plain PyTorch); gradients of first/second/third order; the 2-bit saved state; module; opcheck;
torch.compile; bad input."""

import math

import pytest
import torch

import vkernels
from vkernels.ops.filtered_lrelu import _geometry, _parse
from vkernels.ops._checks import parse_padding
from vkernels.reference.filtered_lrelu import filtered_lrelu as _ref
from conftest import DEVICES
from _common import check_close, impl_params, randn

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
IMPLS = impl_params("filtered_lrelu")


def reference(x, fu=None, fd=None, b=None, up=1, down=1, padding=0, gain=math.sqrt(2), slope=0.2, clamp=None,
              flip_filter=False):
    """The reference with the public function's argument forms."""
    fu, fd, up, down, pad, gain, slope, clamp = _parse(x, fu, fd, b, up, down, padding, gain, slope, clamp)
    return _ref(x, fu, fd, b, up, down, pad, gain, slope, clamp, flip_filter)


def make_x(shape, layout, dtype, device, scale=1.0):
    if layout == "sliced":  # non-dense: every other column of a larger tensor
        return randn(shape[:-1] + (shape[-1] * 2,), dtype, device, scale)[..., ::2]
    x = randn(shape, dtype, device, scale)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def make_f(spec, device="cpu"):
    """None identity, 'k' a random 1-D (separable) filter of k taps, 'h,w' a random 2-D one, 'lp:k' a normalised
    low-pass (StyleGAN3-like: positive taps summing to 1)."""
    if spec is None:
        return None
    if spec.startswith("lp:"):
        k = int(spec[3:])
        f = torch.rand(k) + 0.5
        return (f / f.sum()).to(device)
    dims = tuple(int(s) for s in spec.split(","))
    return (torch.randn(dims) * 0.7).to(device)


# (shape, fu, fd, up, down, padding, flip, gain, slope, clamp, layout)
CASES = [
    ((2, 3, 8, 8), "lp:12", "lp:12", 2, 2, (11, 10, 11, 10), False, math.sqrt(2), 0.2, None, "contiguous"),  # SG3
    ((2, 3, 7, 9), "lp:6", "lp:6", 2, 2, 5, False, math.sqrt(2), 0.2, 0.4, "channels_last"),
    ((1, 4, 5, 6), "3,4", "5", 2, 1, (1, -1, 2, 0), True, 1.3, 0.1, 0.5, "contiguous"),          # 2-D fu, crop
    ((2, 2, 6, 5), "7", "3,3", 4, 2, (3, 2, 1, 4), False, 1.0, 0.3, 1.0, "sliced"),
    ((1, 3, 13, 15), "5", "9", 1, 4, (-1, 3, 2, -2), True, 2.0, 0.2, None, "contiguous"),          # pure down
    ((2, 3, 6, 7), "2,5", "4,1", 4, 4, (2, 2, 3, 1), False, 0.7, 0.0, 0.3, "channels_last"),     # relu
    ((1, 2, 4, 5), "3", None, 2, 1, 1, False, 1.0, 0.2, None, "contiguous"),                       # no fd
    ((2, 3, 5, 4), None, None, 1, 1, 0, False, math.sqrt(2), 0.2, 0.6, "contiguous"),             # bias_act-like
    ((1, 2, 5, 11), "3,3", "3", 1, 2, (0, 1, -1, 2), True, 1.5, 0.5, None, "sliced"),
    ((0, 3, 6, 6), "lp:6", "lp:6", 2, 2, 5, False, math.sqrt(2), 0.2, None, "contiguous"),        # empty batch
    ((2, 3, 0, 6), "3", "3", 2, 2, (4, 4, 4, 4), False, 1.0, 0.2, None, "contiguous"),             # H = 0: pad only
]


def case_id(c):
    shape, fu, fd, up, down, pad, flip, gain, slope, clamp, layout = c
    return (f"{'x'.join(map(str, shape))}-fu{fu}-fd{fd}-u{up}d{down}-p{pad}-{'flip' if flip else 'conv'}"
            f"-c{clamp}-{layout}")


def run_case(device, impl, dtype, case, grads=True):
    shape, fus, fds, up, down, pad, flip, gain, slope, clamp, layout = case
    x = make_x(shape, layout, dtype, device)
    b = randn((shape[1],), dtype, device, 0.5)
    fu, fd = make_f(fus, device), make_f(fds, device)
    kw = dict(up=up, down=down, padding=pad, gain=gain, slope=slope, clamp=clamp, flip_filter=flip)
    xs, bs = x.detach().clone().requires_grad_(grads), b.clone().requires_grad_(grads)
    y = vkernels.filtered_lrelu(xs, fu, fd, bs, **kw, impl=impl)
    x64, b64 = (t.detach().double().cpu().requires_grad_(grads) for t in (x, b))
    cpu = lambda f: None if f is None else f.cpu()  # noqa: E731
    y64 = reference(x64, cpu(fu), cpu(fd), b64, **kw)
    xl, bl = x.detach().clone().requires_grad_(grads), b.clone().requires_grad_(grads)
    yl = reference(xl, fu, fd, bl, **kw)
    check_close(y, yl, y64, dtype, "y")
    if layout == "channels_last" and x.shape[1] > 1 and y.numel():
        assert y.is_contiguous(memory_format=torch.channels_last), "channels_last is kept"
    if not grads or y.numel() == 0:
        return
    dy = randn(y.shape, dtype, device)
    gx, gb = torch.autograd.grad(y, (xs, bs), dy)
    gx64, gb64 = torch.autograd.grad(y64, (x64, b64), dy.double().cpu())
    gxl, gbl = torch.autograd.grad(yl, (xl, bl), dy)
    check_close(gx, gxl, gx64, dtype, "dx")
    check_close(gb, gbl, gb64, dtype, "db")


@pytest.mark.ci_cover("dtype", "case")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(device, impl, dtype, case):
    if impl == "triton" and device == "cpu" and dtype in (torch.float64, torch.float16):
        pytest.skip("Triton interpreter time (~10 s a case): fp64 is covered by gradcheck, fp16 by the smoke run")
    run_case(device, impl, dtype, case)


# Rows wide enough for the CPU kernel's full vector blocks (32 fp32 lanes), many planes (whole-plane bands) and
# few tall planes (split into bands whose mask rows and overlaps must line up), 2-D filters with up != down.
WIDE_CASES = [
    ((3, 5, 21, 45), "lp:12", "lp:12", 2, 2, (11, 10, 11, 10), False, math.sqrt(2), 0.2, 0.5, "contiguous"),
    ((1, 2, 40, 37), "lp:12", "lp:12", 2, 2, (11, 10, 11, 10), False, math.sqrt(2), 0.2, None, "channels_last"),
    ((2, 3, 11, 41), "5,6", "7", 3, 2, (2, 3, 1, 4), True, 1.1, 0.1, 0.8, "sliced"),
    ((1, 2, 19, 70), "9", "4,5", 1, 3, (3, 1, 0, 2), False, 1.0, 0.3, None, "contiguous"),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", WIDE_CASES, ids=case_id)
def test_cpu_wide_rows_and_bands(dtype, case):
    run_case("cpu", "cpu", dtype, case)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_bitwise_deterministic_across_threads(layout):
    """The CPU kernel's y and mask do not depend on the thread count (bands, overlapping vector tails and the paired
    vertical-down rows recompute values in the same order), and repeated calls are bitwise equal."""
    x = make_x((2, 3, 30, 45), layout, torch.float32, "cpu")
    b = randn((3,), torch.float32, "cpu", 0.5)
    f = make_f("lp:12", "cpu")
    args = (x, f, f, b, 2, 2, 11, 10, 11, 10, math.sqrt(2), 0.2, 0.5, False, True)
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 1):
            torch.set_num_threads(t)
            outs.append(torch.ops.vkernels.filtered_lrelu(*args))
    finally:
        torch.set_num_threads(old)
    for y, m in outs[1:]:
        assert torch.equal(y, outs[0][0]) and torch.equal(m, outs[0][1])


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_random_configs(device, impl, dtype):
    """Fresh random shapes, filters (1-D/2-D/None), factors {1, 2, 4}, paddings (cropping too), flips, clamps."""
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    ri = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=g))  # noqa: E731
    done = 0
    while done < (4 if impl == "triton" else 30):
        shape = (ri(1, 2), ri(1, 4), ri(1, 9), ri(1, 9))
        fspec = lambda: [None, f"{2 * ri(0, 3) + 1}", f"{ri(1, 5)},{ri(1, 5)}", f"lp:{ri(2, 8)}"][ri(0, 3)]  # noqa
        fus, fds = fspec(), fspec()
        up, down = [1, 2, 4][ri(0, 2)], [1, 2, 4][ri(0, 2)]
        pad = tuple(ri(-2, 5) for _ in range(4))
        fu, fd = make_f(fus, device), make_f(fds, device)
        x = make_x(shape, ["contiguous", "channels_last", "sliced"][ri(0, 2)], dtype, device)
        (ow, _), (oh, _) = _geometry(shape[3], shape[2], fu if fu is not None else torch.ones(1, 1),
                                     fd if fd is not None else torch.ones(1, 1), up, down, parse_padding(pad))
        if ow < 1 or oh < 1:
            continue
        done += 1
        b = randn((shape[1],), dtype, device)
        kw = dict(up=up, down=down, padding=pad, gain=0.5 + ri(0, 4) / 2, slope=ri(0, 4) / 8,
                  clamp=[None, 0.5, 2.0][ri(0, 2)], flip_filter=bool(ri(0, 1)))
        y = vkernels.filtered_lrelu(x, fu, fd, b, **kw, impl=impl)
        cpu = lambda f: None if f is None else f.cpu()  # noqa: E731
        check_close(y, reference(x, fu, fd, b, **kw), reference(x.double().cpu(), cpu(fu), cpu(fd), b.double().cpu(),
                                                               **kw), dtype, f"{shape} {fus} {fds} {kw}")


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("fus,fds,up,down,pad,clamp", [("4", "4", 2, 2, (3, 2, 3, 2), None),
                                                      ("3,2", "3", 2, 1, (1, 0, 2, 1), 0.8),
                                                      ("3", "2,3", 1, 2, (0, 1, -1, 2), None),
                                                      (None, "5", 4, 4, (2, 1, 1, 2), 1.5)])
def test_gradcheck_and_gradgradcheck(device, impl, fus, fds, up, down, pad, clamp):
    """First and second order w.r.t. x and b in fp64. The mask is piecewise constant: inputs are kept away from
    the kinks (|mid| and |act| - clamp of order 1e-3 or more are rare to cross with eps=1e-6)."""
    interp = impl == "triton" and device == "cpu"
    x = randn((1, 2, 3, 4) if interp else (1, 2, 4, 4), torch.float64, device).requires_grad_()
    b = randn((2,), torch.float64, device).requires_grad_()
    fu, fd = make_f(fus, device), make_f(fds, device)

    def fn(x, b):
        return vkernels.filtered_lrelu(x, fu, fd, b, up, down, pad, gain=1.3, slope=0.2, clamp=clamp, impl=impl)

    torch.autograd.gradcheck(fn, (x, b), fast_mode=interp, eps=1e-7)
    torch.autograd.gradgradcheck(fn, (x, b), fast_mode=interp, eps=1e-7)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_third_order_matches_reference(device, impl):
    """The gradient is the masked op, whose gradient is itself: order 3 equals the reference's."""
    fu, fd = make_f("3,3", device), make_f("4", device)
    x0, b0 = randn((1, 2, 4, 5), torch.float64, device), randn((2,), torch.float64, device)
    kw = dict(up=2, down=2, padding=(2, 1, 1, 2), gain=1.4, slope=0.25, clamp=1.5)

    def third(fn):
        x, b = x0.clone().requires_grad_(), b0.clone().requires_grad_()
        y = fn(x, b)
        (g1,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * x).square().sum(), x, create_graph=True)
        return torch.autograd.grad((g2 * x).sum(), (x, b), allow_unused=True)

    got = third(lambda x, b: vkernels.filtered_lrelu(x, fu, fd, b, **kw, impl=impl))
    want = third(lambda x, b: reference(x, fu, fd, b, **kw))
    torch.testing.assert_close(got[0], want[0])


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("up,down,fus,fds", [(2, 2, "lp:12", "lp:12"), (4, 1, "7,5", None), (1, 2, None, "3")])
def test_saved_state_is_two_bits_per_upsampled_sample(device, impl, up, down, fus, fds):
    """Backward keeps the filters and a uint8 mask of at most 2 bits per upsampled (mid) sample, nothing else."""
    if impl == "triton" and device == "cpu" and up != 2:
        pytest.skip("Triton interpreter time; the SG3-like case covers the Triton mask")
    x = randn((2, 3, 9, 10), torch.float32, device).requires_grad_()
    b = randn((3,), torch.float32, device).requires_grad_()
    fu, fd = make_f(fus, device), make_f(fds, device)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = vkernels.filtered_lrelu(x, fu, fd, b, up, down, padding=3, clamp=0.5, impl=impl)
    fu1 = fu if fu is not None else torch.ones(1, 1)
    fd1 = fd if fd is not None else torch.ones(1, 1)
    (_, mw), (_, mh) = _geometry(10, 9, fu1, fd1, up, down, (3, 3, 3, 3))
    mid = 2 * 3 * mh * mw  # the upsampled samples some output needs (what the reference keeps in float)
    big = [t for t in saved if t.numel() > 64]  # not the filters
    assert len(big) == 1 and big[0].dtype == torch.uint8, [(t.dtype, tuple(t.shape)) for t in saved]
    assert big[0].nbytes * 8 <= 2 * mid + 8 * 2 * 3 * mh, (big[0].nbytes, mid)  # + byte padding per row
    assert big[0].nbytes * 8 >= 2 * mid  # and it really covers every mid sample
    y.sum().backward()  # and that state suffices
    assert x.grad is not None and b.grad is not None
    # No grad wanted: no mask written.
    with torch.no_grad():
        _, mask = torch.ops.vkernels.filtered_lrelu(x, fu1.to(device), fd1.to(device), b, up, down, 3, 3, 3, 3,
                                                    1.0, 0.2, None, False, False)
    assert mask.numel() == 0


def _samples(device, dtype=torch.float32):
    x = randn((2, 3, 5, 6), dtype, device)
    b = randn((3,), dtype, device)
    f1, f2 = make_f("lp:6", device), make_f("3,4", device)
    one = torch.ones(1, 1, device=device)
    return [
        (x, f1, f1, b, 2, 2, 5, 5, 5, 5, math.sqrt(2), 0.2, None, False, True),
        (x.to(memory_format=torch.channels_last), f2, f1, None, 2, 1, 1, 2, 0, 3, 1.0, 0.1, 0.5, True, True),
        (x[:, :, :, ::2], one, f2, b, 1, 2, 2, 1, -1, 2, 1.5, 0.3, None, False, True),
        (randn((0, 3, 4, 4), dtype, device), f1, f1, b, 2, 2, 5, 5, 5, 5, 1.0, 0.2, None, False, False),
    ]


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    sfx = "_triton" if impl == "triton" else ""
    op = getattr(torch.ops.vkernels, "filtered_lrelu" + sfx).default
    # The Triton interpreter takes ~30 s per opcheck sample: one sample there.
    for args in _samples(device)[:1 if impl == "triton" and device == "cpu" else None]:
        x = args[0].clone().requires_grad_(args[-1])
        torch.library.opcheck(op, (x,) + args[1:])
    # The masked op (the gradient) on a mask the forward wrote.
    x, f1, _, b = _samples(device)[0][:4]
    _, mask = op(x, f1, f1, b, 2, 2, 5, 5, 5, 5, 1.0, 0.2, 0.8, False, True)
    mw = _geometry(6, 5, f1, f1, 2, 2, (5, 5, 5, 5))[0][1]
    masked = getattr(torch.ops.vkernels, "filtered_lrelu_masked" + sfx).default
    dy = randn((2, 3, 5, 6), torch.float32, device).requires_grad_()
    torch.library.opcheck(masked, (dy, f1, f1, mask, mw, -4, -4, 2, 2, 5, 5, 5, 5, 1.0, 4.0, 1.3, 0.2, True))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl):
    torch._dynamo.reset()
    fu, fd = make_f("lp:6", device), make_f("lp:6", device)

    def fn(x, b):
        h = vkernels.filtered_lrelu(x * 2, fu, fd, b, up=2, down=2, padding=5, clamp=2.0, impl=impl)
        return torch.tanh(h).sum(dim=(2, 3))

    x = randn((2, 3, 6, 5), torch.float32, device).requires_grad_()
    b = randn((3,), torch.float32, device).requires_grad_()
    y = torch.compile(fn, fullgraph=True, dynamic=False)(x, b)
    y_eager = fn(x, b)
    torch.testing.assert_close(y, y_eager)
    g, ge = torch.autograd.grad(y.sum(), (x, b)), torch.autograd.grad(y_eager.sum(), (x, b))
    torch.testing.assert_close(g, ge)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_module(device, impl):
    m = vkernels.nn.FilteredLReLU(4, fu=[1, 3, 3, 1], fd=[1, 3, 3, 1], up=2, down=2, padding=3, clamp=256,
                                  impl=impl).to(device)
    assert sorted(n for n, _ in m.named_buffers()) == ["fd", "fu"] and [n for n, _ in m.named_parameters()] == ["bias"]
    with torch.no_grad():
        m.bias.copy_(torch.randn(4))
    x = randn((2, 4, 6, 6), torch.float32, device).requires_grad_()
    y = m(x)
    torch.testing.assert_close(y, reference(x, m.fu, m.fd, m.bias, 2, 2, 3, clamp=256), rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert m.bias.grad is not None and x.grad.shape == x.shape
    m2 = vkernels.nn.FilteredLReLU(4, up=2, down=2, padding=3, impl=impl).to(device)
    m2.fu, m2.fd = m.fu.clone(), m.fd.clone()
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), y)
    assert "up=2" in repr(m) and "fu=(4, 4)" in repr(m)
    nb = vkernels.nn.FilteredLReLU(bias=False, fu=torch.ones(1, 1), impl=impl)
    assert nb.bias is None and nb(x.detach().cpu().to(device)).shape == x.shape
    with pytest.raises(ValueError, match="channels is required"):
        vkernels.nn.FilteredLReLU()


# ------------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device):
    x = randn((2, 3, 6, 6), torch.float32, device)
    f = torch.ones(3, 3, device=device)
    b = torch.zeros(3, device=device)
    cases = [
        (dict(x=x[0]), ValueError, "x must be 4-D"),
        (dict(x=x.int()), TypeError, "x must be float16"),
        (dict(x=[1.0]), TypeError, "x must be a torch.Tensor"),
        (dict(fu=torch.ones(2, 2, 2, device=device)), ValueError, "fu must be 1-D .separable. or 2-D"),
        (dict(fd=torch.ones((), device=device)), ValueError, "fd must be 1-D"),
        (dict(fu=f.double()), TypeError, "fu must be float32"),
        (dict(fd=f.half()), TypeError, "fd must be float32"),
        (dict(fu=[1.0, 2.0]), TypeError, "fu must be a torch.Tensor or None"),
        (dict(fd=torch.ones(0, device=device)), ValueError, "fd must not be empty"),
        (dict(fu=f.clone().requires_grad_()), ValueError, "fu must not require grad"),
        (dict(b=torch.zeros(4, device=device)), ValueError, "b must have shape"),
        (dict(b=b.double()), TypeError, "b must have x's dtype"),
        (dict(b=[0.0]), TypeError, "b must be a torch.Tensor"),
        (dict(up=0), ValueError, "up must be >= 1"),
        (dict(down=-1), ValueError, "down must be >= 1"),
        (dict(up=1.5), ValueError, "up must be an int"),
        (dict(down=(2, 2)), ValueError, "down must be an int"),
        (dict(padding=(1, 2, 3)), ValueError, "filtered_lrelu: padding must be"),
        (dict(padding=1.0), ValueError, "filtered_lrelu: padding must be"),
        (dict(fu=f, fd=f, padding=-3), ValueError, "output size must be >= 1"),
        (dict(clamp=-1), ValueError, "clamp must be None or a number >= 0"),
        (dict(clamp="1"), ValueError, "clamp must be"),
        (dict(gain=float("nan")), ValueError, "gain must be a finite"),
        (dict(slope=float("inf")), ValueError, "slope must be a finite"),
        (dict(impl="tpu"), ValueError, "impl must be"),
    ]
    if device == "cpu":
        cases.append((dict(impl="cuda"), RuntimeError, "impl='cuda' is not available"))
    if torch.cuda.is_available():
        other = "cpu" if device == "cuda" else "cuda"
        cases.append((dict(fu=f.to(other)), ValueError, "fu is on"))
        cases.append((dict(b=b.to(other)), ValueError, "b is on"))
    for kwargs, exc, msg in cases:
        kwargs = {"x": x, **kwargs}
        with pytest.raises(exc, match=msg):
            vkernels.filtered_lrelu(**kwargs)


def test_cpp_op_checks_its_own_arguments():
    """Direct torch.ops calls (bypassing the Python checks) still get named errors, never a crash."""
    x = torch.randn(2, 3, 6, 6)
    f = torch.ones(3, 3)
    op = torch.ops.vkernels.filtered_lrelu

    def call(x=x, fu=f, fd=f, b=None, up=1, down=1, pad=(2, 2, 2, 2), clamp=None):
        return op(x, fu, fd, b, up, down, *pad, 1.0, 0.2, clamp, False, True)

    for kwargs, msg in [
        (dict(x=x[0]), "x must be 4-D"),
        (dict(x=x.long()), "x must be float16"),
        (dict(fu=torch.ones(2, 2, 2)), "fu must be 1-D .separable. or 2-D"),
        (dict(fd=f.double()), "fd must be float32"),
        (dict(up=0), "up must be >= 1"),
        (dict(down=-1), "down must be >= 1"),
        (dict(pad=(-3, -2, 0, 0)), "output size must be >= 1"),
        (dict(clamp=-1.0), "clamp must be None or >= 0"),
        (dict(b=torch.zeros(4)), "b must have shape"),
        (dict(b=torch.zeros(3, dtype=torch.float64)), "b must have x's dtype"),
    ]:
        with pytest.raises(RuntimeError, match=msg):
            call(**kwargs)
    masked = torch.ops.vkernels.filtered_lrelu_masked
    _, mask = call()
    with pytest.raises(RuntimeError, match="mask must be uint8"):
        masked(x, f, f, mask.int(), 10, 0, 0, 1, 1, 2, 2, 2, 2, 1.0, 1.0, 1.0, 0.2, False)
    with pytest.raises(RuntimeError, match="mask must have shape"):
        masked(x, f, f, mask, 99, 0, 0, 1, 1, 2, 2, 2, 2, 1.0, 1.0, 1.0, 0.2, False)


def test_backward_without_mask_is_an_error():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    one = torch.ones(1, 1)
    y, _ = torch.ops.vkernels.filtered_lrelu(x, one, one, None, 1, 1, 0, 0, 0, 0, 1.0, 0.2, None, False, False)
    with pytest.raises(RuntimeError, match="write_mask=False"):
        y.sum().backward()


def test_auto_picks_the_cpu_kernel():
    assert vkernels.resolve_impl("filtered_lrelu", torch.randn(1, 2, 4, 4)) == "cpu"


def test_identity_filters_are_bias_act():
    """fu = fd = None, up = down = 1: filtered_lrelu is bias_act(act='lrelu') exactly."""
    x, b = torch.randn(2, 5, 6, 7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    y = vkernels.filtered_lrelu(x, b=b, gain=1.7, slope=0.3, clamp=0.9)
    torch.testing.assert_close(y, vkernels.bias_act(x, b, act="lrelu", alpha=0.3, gain=1.7, clamp=0.9), rtol=0,
                               atol=1e-15)


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: the non-empty CASES geometries (separable / 2-D filters, up / down
    factors, clamp, bias, layouts) per dtype, forward, backward and double backward."""
    from _common import static_grads

    rows = [c for c in CASES if 0 not in c[0]]
    if not full:
        rows = [rows[i] for i in (0, 1, 3, 5, 6, 7)]

    def case(dtype, c):
        def run():
            shape, fus, fds, up, down, pad, flip, gain, slope, clamp, layout = c
            x = make_x(shape, layout, dtype, "cpu").requires_grad_()
            b = randn((shape[1],), dtype, "cpu", 0.5).requires_grad_()
            y = vkernels.filtered_lrelu(x, make_f(fus), make_f(fds), b, up=up, down=down, padding=pad, gain=gain,
                                        slope=slope, clamp=clamp, flip_filter=flip, impl="triton")
            static_grads(y, (x, b), order=2)
        return f"{case_id(c)} {dtype}", run

    return [case(dtype, c) for dtype in DTYPES for c in rows]
