"""pixel_norm: every implementation against the fp64 reference (forward and gradient), dims, layouts, dtypes,
empty tensors; gradcheck; opcheck; torch.compile; module; bad input."""
import os

import pytest
import torch

import vkernels
from vkernels.reference.pixel_norm import pixel_norm as reference
from _common import check_close, impl_params, randn

OP = "pixel_norm"
IMPLS = impl_params(OP)
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def run_case(device, impl, x, dim, eps=1e-8):
    dtype = x.dtype
    xl = x.detach().clone().requires_grad_()
    y = vkernels.pixel_norm(xl, dim, eps, impl=impl)
    g = randn(y.shape, torch.float64, "cpu")
    (dx,) = torch.autograd.grad(y, xl, g.to(device=device, dtype=dtype))
    x64 = x.detach().double().cpu().requires_grad_()
    y64 = reference(x64, dim, eps)
    (dx64,) = torch.autograd.grad(y64, x64, g)
    xlp = x.detach().cpu().requires_grad_()
    ylp = reference(xlp, dim, eps)
    (dxlp,) = torch.autograd.grad(ylp, xlp, g.to(dtype))
    check_close(y, ylp, y64, dtype, "y")
    check_close(dx, dxlp, dx64, dtype, "dx")
    return y


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,dim", [((5, 37), 1), ((3, 7, 5, 6), 1), ((2, 3, 300), 1), ((4, 5, 3), -1),
                                       ((6, 2, 3), 0), ((11,), 0)])
def test_matches_reference(device, impl, dtype, shape, dim):
    x = randn(shape, dtype, device, scale=3.0)
    run_case(device, impl, x, dim)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_layouts(device, impl):
    x = randn((2, 9, 5, 4), torch.float32, device).to(memory_format=torch.channels_last)
    y = run_case(device, impl, x, 1)
    xt = randn((7, 5), torch.float32, device).t()  # non-contiguous
    run_case(device, impl, xt, 1)
    run_case(device, impl, randn((3, 8, 4), torch.float32, device)[:, ::2], 1)  # strided
    assert y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last)  # read and written in place, as the fake promises


@pytest.mark.parametrize("device,impl", IMPLS)
def test_eps_and_empty(device, impl):
    x = randn((3, 5), torch.float64, device) * 1e-3
    torch.testing.assert_close(vkernels.pixel_norm(x, 1, 0.1, impl=impl), reference(x, 1, 0.1))
    e = torch.empty(0, 4, device=device)
    assert vkernels.pixel_norm(e, 1, impl=impl).shape == (0, 4)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_gradcheck(device, impl):
    x = randn((3, 6, 2), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: vkernels.pixel_norm(t, 1, 1e-8, impl=impl), (x,))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    op = torch.ops.vkernels.pixel_norm_triton if impl == "triton" else torch.ops.vkernels.pixel_norm
    bop = (torch.ops.vkernels.pixel_norm_backward_triton if impl == "triton"
           else torch.ops.vkernels.pixel_norm_backward)
    x = randn((3, 5, 2), torch.float32, device).requires_grad_()
    torch.library.opcheck(op, (x, 1, 1e-8))
    torch.library.opcheck(bop, (randn((3, 5, 2), torch.float32, device), x.detach(), 1, 1e-8))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_compile(device, impl):
    torch._dynamo.reset()
    fn = torch.compile(lambda t: vkernels.pixel_norm(t, 1, impl=impl).square().sum(), fullgraph=True)
    x = randn((4, 6), torch.float32, device).requires_grad_()
    loss = fn(x)
    (dx,) = torch.autograd.grad(loss, x)
    x64 = x.detach().double().requires_grad_()
    (dx64,) = torch.autograd.grad(reference(x64).square().sum(), x64)
    torch.testing.assert_close(dx.double(), dx64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_grad_modes(device, impl):
    """No graph without anything to differentiate (plain x, or under no_grad); a graph with x.requires_grad in grad
    mode; the same values every way and under torch.compile."""
    x = randn((4, 9, 3), torch.float32, device, scale=3.0)
    want = reference(x.double(), 1, 1e-8).float()
    y = vkernels.pixel_norm(x, 1, impl=impl)
    assert y.grad_fn is None and not y.requires_grad
    xl = x.clone().requires_grad_()
    with torch.no_grad():
        y_ng = vkernels.pixel_norm(xl, 1, impl=impl)
    assert y_ng.grad_fn is None and not y_ng.requires_grad
    y_g = vkernels.pixel_norm(xl, 1, impl=impl)
    assert y_g.requires_grad and y_g.grad_fn is not None
    for t in (y, y_ng, y_g.detach()):
        torch.testing.assert_close(t, want, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
    fn = torch.compile(lambda t: vkernels.pixel_norm(t, 1, impl=impl) * 2, fullgraph=True)
    torch.testing.assert_close(fn(x), 2 * want, rtol=1e-5, atol=1e-6)


def test_module():
    m = vkernels.nn.PixelNorm()
    x = torch.randn(4, 8)
    torch.testing.assert_close(m(x), reference(x))
    assert "dim=1" in repr(m)


def test_bad_input():
    with pytest.raises(TypeError, match="x must be float16"):
        vkernels.pixel_norm(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(IndexError, match="dim"):
        vkernels.pixel_norm(torch.ones(3, 4), dim=2)
    with pytest.raises(ValueError, match="eps"):
        vkernels.pixel_norm(torch.ones(3, 4), eps=-1.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        vkernels.pixel_norm(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="dim"):
        torch.ops.vkernels.pixel_norm(torch.ones(3, 4), 5, 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_vector_paths(dtype):
    """The C++ kernel's at::vec loops and scalar tails: rows of C values (channels_last, dim last, a latent batch)
    and NCHW columns with inner sizes around the vector step and the 256-column chunk."""
    run_case("cpu", "cpu", randn((2, 37, 3, 5), dtype, "cpu").to(memory_format=torch.channels_last), 1)
    run_case("cpu", "cpu", randn((32, 512), dtype, "cpu", scale=2.0), 1)
    run_case("cpu", "cpu", randn((3, 7, 19), dtype, "cpu"), -1)
    for inner in (1, 15, 17, 257):
        run_case("cpu", "cpu", randn((2, 6, inner), dtype, "cpu", scale=3.0), 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_nchw_chunks(dtype):
    """NCHW planes wider than one accumulator chunk (forward 16 KB, backward 8 KB of opmath per chunk), odd C (the
    sums pass folds channel pairs), and planes split between threads when outer is smaller than the thread count."""
    run_case("cpu", "cpu", randn((2, 3, 5000), dtype, "cpu", scale=3.0), 1)
    run_case("cpu", "cpu", randn((2, 4, 2048 + 24), dtype, "cpu", scale=3.0), 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        run_case("cpu", "cpu", randn((1, 5, 300), dtype, "cpu", scale=3.0), 1)
        run_case("cpu", "cpu", randn((2, 6, 7, 9), dtype, "cpu", scale=3.0), 1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["rows", "nchw"])
def test_cpu_nonfinite(dtype, layout):
    """NaN and inf inputs (forward and backward) give what the fp32 formula gives: NaN where a NaN or inf*0 is
    involved, and a NaN of either sign is never turned into a number by the bf16 rounding (which skips at::vec's NaN
    fix-up because the kernel's NaN payloads have zero low bits)."""
    shape = (3, 40) if layout == "rows" else (2, 5, 40)
    x = (torch.randn(shape) * 3.0).to(dtype)
    flat = x.view(-1)
    flat[3], flat[17], flat[50] = float("nan"), float("inf"), float("-inf")
    flat[61] = -float("nan")
    g = torch.randn(shape).to(dtype)
    g.view(-1)[9] = float("nan")
    xf, gf = x.double(), g.double()
    r = (xf.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    dx = gf * r - xf * ((gf * xf).mean(1, keepdim=True) * r ** 3)
    y = torch.ops.vkernels.pixel_norm(x, 1, 1e-8)
    dy = torch.ops.vkernels.pixel_norm_backward(g, x, 1, 1e-8)
    for got, want in ((y, xf * r), (dy, dx)):
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got, want.to(dtype), equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_streaming_stores(dtype):
    """Outputs at least half the last-level cache are written with streaming stores (x + y cannot stay cached);
    sized from the same sysconf value the kernel reads, skipped where that would need a huge tensor."""
    try:
        llc = os.sysconf("SC_LEVEL3_CACHE_SIZE")
    except (ValueError, OSError):
        llc = 0
    llc = llc if llc > 0 else 32 << 20
    inner = 1024
    c = 64
    n = -(-llc // (2 * c * inner * torch.empty((), dtype=dtype).element_size()))
    if n * c * inner > (16 << 20):
        pytest.skip(f"last-level cache of {llc} bytes needs a {n}x{c}x{inner} input")
    x = (torch.randn((n, c, inner)) * 3.0).to(dtype)  # fp32 draws: the fp64 helper is slow at this size
    g = torch.randn((n, c, inner)).to(dtype)
    # NCHW planes (aligned: streaming; the second not 32-byte aligned: ordinary stores), then rows of C contiguous
    # values (the channels_last / latent path) of the same total size, which stream too.
    xr, gr = x.view(n * c, inner), g.view(n * c, inner)  # dim=1 last: rows of 1024 contiguous values
    for xx, gg, dim in ((x, g, 1), (x[:, :, 1:], g[:, :, 1:], 1), (xr, gr, 1)):
        # Direct fp32 formulas instead of run_case's fp64 autograd: these tensors are tens of MB.
        xf, gf = xx.float(), gg.float()
        r = (xf.square().mean(dim, keepdim=True) + 1e-8).rsqrt()
        dx = gf * r - xf * ((gf * xf).mean(dim, keepdim=True) * r ** 3)
        torch.testing.assert_close(torch.ops.vkernels.pixel_norm(xx, dim, 1e-8), (xf * r).to(dtype))
        torch.testing.assert_close(torch.ops.vkernels.pixel_norm_backward(gg, xx, dim, 1e-8), dx.to(dtype))


# ---- second-order gradients (helper gan-models): the backward op is differentiable (kernel for d/dg, reference
# composite for d/dx), as StyleGAN2's path-length penalty needs through the mapping network.
def _slow_interp(device, impl):
    return impl == "triton" and device == "cpu"  # the Triton interpreter: gradgradcheck too slow; GPU runs it


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("shape,dim", [((3, 6, 2), 1), ((4, 5), -1)])
def test_gradgradcheck(device, impl, shape, dim):
    if _slow_interp(device, impl):
        pytest.skip("Triton interpreter: too slow for gradgradcheck")
    x = randn(shape, torch.float64, device).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: vkernels.pixel_norm(t, dim, 1e-8, impl=impl), (x,))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_double_backward_matches_reference(device, impl):
    """A gradient-penalty-shaped loss: |d<y, v>/dx|^2 differentiated again, kernels vs the reference."""
    if _slow_interp(device, impl):
        pytest.skip("Triton interpreter: too slow")
    x = randn((5, 16), torch.float32, device)
    v = randn((5, 16), torch.float32, device)
    out = []
    for i in (impl, "reference"):
        xl = x.clone().requires_grad_()
        y = vkernels.pixel_norm(xl, 1, 1e-8, impl=i)
        (dx,) = torch.autograd.grad((y * v).sum(), xl, create_graph=True)
        (ddx,) = torch.autograd.grad(dx.square().sum(), xl)
        out.append(ddx)
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-5)
    assert out[0].abs().sum() > 0


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: forward, backward and double backward per dtype, over the layouts
    and sizes that change the launcher's tiles (inner == 1 rows, a long inner axis, many channels)."""
    from _common import static_grads

    shapes = [((2, 8, 4, 4), 1, False), ((2, 64, 16, 16), 1, False), ((2, 600, 3, 3), 1, True), ((4, 1024), -1, False),
              ((3, 5000), 1, False)]
    if not full:
        shapes = shapes[1:4]

    def case(dtype, shape, dim, channels_last):
        def run():
            x = torch.randn(shape, dtype=dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            x.requires_grad_()
            static_grads(vkernels.pixel_norm(x, dim, impl="triton"), (x,), order=2)
        return f"{shape} dim={dim} cl={channels_last} {dtype}", run

    return [case(dtype, *s) for dtype in DTYPES for s in shapes]
