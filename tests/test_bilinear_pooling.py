"""bilinear_pooling: every implementation against an fp64 reference (output and gradients of x and y), symmetric /
two-input / triu / signed-sqrt-L2 variants, dtypes, odd shapes, layouts, empty batch; gradcheck (incl. near-zero
entries), exact zeros; opcheck; torch.compile; bad input."""
import pytest
import torch
import torch.nn.functional as F

import vkernels
from vkernels.reference.bilinear_pooling import bilinear_pooling as reference
from _common import check_close, impl_params, randn, raw_ops

OP = "bilinear_pooling"
IMPLS = impl_params(OP)
# (B, C1, C2, H, W): sizes not multiples of anything; the Triton interpreter is slow, so its shapes are smaller.
SIZES = {"cpu": (3, 7, 5, 5, 3), "triton": (2, 5, 3, 3, 3)}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (two inputs, triu, normalize)
VARIANTS = [(False, False, None), (False, False, "signed_sqrt_l2"), (False, True, None),
            (False, True, "signed_sqrt_l2"), (True, False, None), (True, False, "signed_sqrt_l2"),
            (True, True, "signed_sqrt_l2")]


def vid(v):
    return f"{'xy' if v[0] else 'xx'}-{'triu' if v[1] else 'full'}-{v[2] or 'none'}"


def make(B, C1, C2, H, W, two, triu, device, dtype, layout="contiguous", positive=False):
    # positive: post-ReLU-like features (what B-CNN pools). With signed sqrt, a Gram entry that cancels to near 0
    # (likely with few locations and signed features) amplifies its rounding by 0.5 / sqrt(|z|) in the gradient, so
    # the max error against the oracle becomes a lottery between GEMMs that sum in different orders (seen: 3.6x the
    # fp32 reference's error at one such entry, HW = 6). Negative and near-zero entries keep their own tests
    # (gradcheck in fp64, exact zeros).
    x = randn((B, C1, H, W), dtype, device)
    y = randn((B, C1 if triu else C2, H, W), dtype, device) if two else None
    if positive:
        x = x.abs()
        y = None if y is None else y.abs()
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    elif layout == "strided":  # every other channel of a wider tensor; y transposed spatially
        x = torch.cat([x, x], 1)[:, ::2]
        if y is not None:
            y = y.transpose(2, 3).contiguous().transpose(2, 3)
        assert not x.is_contiguous()
    return x, y


def run_case(device, impl, dtype, variant, sizes=None, layout="contiguous"):
    two, triu, norm = variant
    B, C1, C2, H, W = sizes or SIZES[impl]
    x, y = make(B, C1, C2, H, W, two, triu, device, dtype, layout, positive=norm is not None)
    leaves = [x.detach().clone().requires_grad_()] + ([y.detach().clone().requires_grad_()] if two else [])
    out = vkernels.bilinear_pooling(leaves[0], leaves[1] if two else None, norm, triu, impl=impl)
    g = torch.randn(out.shape, dtype=torch.float64)
    grads = torch.autograd.grad((out.double().cpu() * g).sum(), leaves) if out.numel() else [torch.zeros_like(t)
                                                                                            for t in leaves]

    def ref_run(prec):
        ls = [t.detach().to(device="cpu", dtype=prec).requires_grad_() for t in leaves]
        o = reference(ls[0], ls[1] if two else None, norm or "none", triu)
        gs = torch.autograd.grad((o.double() * g).sum(), ls) if o.numel() else [torch.zeros_like(t) for t in ls]
        return o, gs

    o64, g64 = ref_run(torch.float64)
    ol, gl = ref_run(dtype)
    check_close(out, ol, o64, dtype, "out")
    for name, a, b, c in zip(("dx", "dy"), grads, gl, g64):
        check_close(a, b, c, dtype, name)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=vid)
def test_matches_reference(device, impl, dtype, variant):
    run_case(device, impl, dtype, variant)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("sizes", [(1, 1, 1, 1, 1), (2, 3, 9, 1, 7), (1, 70, 3, 2, 3), (4, 2, 2, 13, 11)], ids=str)
@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3], VARIANTS[5]], ids=vid)
def test_odd_sizes(device, impl, sizes, variant):
    run_case(device, impl, torch.float32, variant, sizes=sizes)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("variant", [VARIANTS[3], VARIANTS[5]], ids=vid)
def test_layouts(device, impl, layout, variant):
    run_case(device, impl, torch.float32, variant, layout=layout)


@pytest.mark.parametrize("B", [1, 3], ids=["B1-threads-in-image", "B3-threads-over-images"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3], VARIANTS[4], VARIANTS[5], VARIANTS[6]], ids=vid)
def test_row_blocks_cpu(B, dtype, variant):
    """C1 = 300 > the CPU kernel's GEMM row block (64 rows) and the backward's 256-row strips: several blocks and
    strips per image (one partial each; 300 is not a multiple of the 8 x 8 transpose tiles either), the lower triangle
    written from the upper when y is x, the low-precision staging buffer;
    B = 1 takes the path that splits (image, row block) items over threads, B = 3 the one over images (2 threads)."""
    if not any(p.values == ("cpu", "cpu") for p in IMPLS):
        pytest.skip("no compiled CPU kernel")
    run_case("cpu", "cpu", dtype, variant, sizes=(B, 300, 70, 2, 3))


def test_inference_mode_cpu():
    """The CPU kernel runs its per-image GEMMs on worker threads; they must see the caller's inference mode."""
    if not any(p.values == ("cpu", "cpu") for p in IMPLS):
        pytest.skip("no compiled CPU kernel")
    x = randn((3, 40, 3, 3), torch.float32, "cpu")
    want = vkernels.bilinear_pooling(x, normalize="signed_sqrt_l2", impl="cpu")
    with torch.inference_mode():
        got = vkernels.bilinear_pooling(x.clone(), normalize="signed_sqrt_l2", impl="cpu")
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[5]], ids=vid)
def test_empty_batch(device, impl, variant):
    run_case(device, impl, torch.float32, variant, sizes=(0, 4, 3, 2, 2))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_against_bcnn_formula(device, impl):
    """The popular B-CNN head, verbatim: bmm / HW, view, signed sqrt, F.normalize."""
    x = torch.relu(randn((3, 6, 4, 5), torch.float64, device))
    X = x.view(3, 6, 20)
    z = (torch.bmm(X, X.transpose(1, 2)) / 20).view(3, -1)
    want = F.normalize(torch.sign(z) * torch.sqrt(torch.abs(z) + 1e-10))
    torch.testing.assert_close(vkernels.bilinear_pooling(x, normalize="signed_sqrt_l2", impl=impl), want)
    iu = torch.triu_indices(6, 6)
    torch.testing.assert_close(vkernels.bilinear_pooling(x, triu=True, impl=impl),
                               (torch.bmm(X, X.transpose(1, 2)) / 20)[:, iu[0], iu[1]])


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("variant", [VARIANTS[1], VARIANTS[3], VARIANTS[5], VARIANTS[6], VARIANTS[4]], ids=vid)
def test_gradcheck(device, impl, variant):
    two, triu, norm = variant
    x, y = make(2, 3, 2, 2, 3, two, triu, device, torch.float64)
    x[:, 1] *= 1e-2  # near-zero pooled entries (|z| ~ 1e-2 .. 1e-4): the signed sqrt's steep region

    def f(*a):
        return vkernels.bilinear_pooling(a[0], a[1] if two else None, norm, triu, impl=impl)

    args = [x.clone().requires_grad_()] + ([y.clone().requires_grad_()] if two else [])
    torch.autograd.gradcheck(f, args, fast_mode=impl == "triton")


@pytest.mark.parametrize("device,impl", IMPLS)
def test_exact_zeros_finite(device, impl):
    """A dead (all-zero) channel: its pooled entries are exactly 0, their sqrt derivative is 0 (as autograd of the
    formula), every gradient finite and equal to the reference's; an all-zero image gives 0, not NaN."""
    x = torch.relu(randn((2, 4, 3, 3), torch.float64, device))
    x[0, 2] = 0
    x[1] = 0
    xs = [x.clone().requires_grad_() for _ in range(2)]
    out = vkernels.bilinear_pooling(xs[0], normalize="signed_sqrt_l2", impl=impl)
    want = reference(xs[1].cpu(), None, "signed_sqrt_l2", False)
    torch.testing.assert_close(out.cpu(), want)
    assert (out[1] == 0).all()
    g = torch.randn_like(want)
    a, = torch.autograd.grad((out.cpu() * g).sum(), xs[0])
    b, = torch.autograd.grad((want * g).sum(), xs[1])
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a.cpu(), b.cpu())


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    fwd, bwd = raw_ops("bilinear_pooling", impl)
    for two, triu, norm in [(False, True, "signed_sqrt_l2"), (True, False, "none"), (True, False, "signed_sqrt_l2")]:
        x, y = make(2, 4, 3, 3, 2, two, triu, device, torch.float32)
        args = (x.clone().requires_grad_(), None if y is None else y.clone().requires_grad_(), norm, triu, 1e-10)
        torch.library.opcheck(fwd.default, args)
        out, nrm = fwd(x, y, norm, triu, 1e-10)
        torch.library.opcheck(bwd.default, (torch.randn_like(out), x, y, out, nrm, norm, triu, 1e-10))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl):
    torch._dynamo.reset()
    x = randn((2, 5, 3, 3), torch.float32, device)
    y = randn((2, 4, 3, 3), torch.float32, device)

    def f(x, y):
        a = vkernels.bilinear_pooling(x * 2, normalize="signed_sqrt_l2", triu=True, impl=impl)
        b = vkernels.bilinear_pooling(x, y, impl=impl)
        return a.sum(1) + b.square().sum(1)

    leaves = [t.clone().requires_grad_() for t in (x, y)]
    got = torch.compile(f, fullgraph=True, dynamic=False)(*leaves)
    want = f(*leaves)
    torch.testing.assert_close(got, want)
    for a, b in zip(torch.autograd.grad(got.sum(), leaves), torch.autograd.grad(want.sum(), leaves)):
        torch.testing.assert_close(a, b)


def test_module():
    x = randn((2, 6, 4, 4), torch.float32, "cpu")
    m = vkernels.nn.BilinearPooling(triu=True)
    torch.testing.assert_close(m(x), vkernels.bilinear_pooling(x, normalize="signed_sqrt_l2", triu=True))
    assert "signed_sqrt_l2" in repr(m)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=torch.randn(2, 3, 4)), ValueError, "x must have shape"),
    (dict(y=torch.randn(2, 3, 4)), ValueError, "y must have shape"),
    (dict(y=torch.randn(3, 2, 4, 4)), ValueError, "y must have x's B, H, W"),
    (dict(y=torch.randn(2, 2, 4, 5)), ValueError, "y must have x's B, H, W"),
    (dict(y=torch.randn(2, 2, 4, 4, dtype=torch.float64)), TypeError, "y.dtype"),
    (dict(normalize="sqrt"), ValueError, "normalize must be"),
    (dict(y=torch.randn(2, 2, 4, 4), triu=True), ValueError, "triu=True needs"),
    (dict(x=torch.randn(2, 3, 4, 4).int()), TypeError, "x must be float"),
    (dict(x=torch.randn(2, 3, 0, 4)), ValueError, "H \\* W >= 1"),
    (dict(eps=-1.0), ValueError, "eps must be"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(x=torch.randn(2, 3, 4, 4), y=None, normalize=None, triu=False, eps=1e-10)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        vkernels.bilinear_pooling(**args)


def test_cpp_checks_name_the_argument():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="normalize must be"):
        torch.ops.vkernels.bilinear_pooling(x, None, "l2", False, 1e-10)
    with pytest.raises(RuntimeError, match="y must have x's B, H, W"):
        torch.ops.vkernels.bilinear_pooling(x, torch.randn(2, 3, 4, 5), "none", False, 1e-10)
    with pytest.raises(RuntimeError, match="triu=True needs"):
        torch.ops.vkernels.bilinear_pooling(x, torch.randn(2, 2, 4, 4), "none", True, 1e-10)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        torch.ops.vkernels.bilinear_pooling_backward(torch.randn(2, 5), x, None, torch.empty(0), torch.empty(0),
                                                     "none", False, 1e-10)
    out, nrm = torch.ops.vkernels.bilinear_pooling(x, None, "signed_sqrt_l2", False, 1e-10)
    with pytest.raises(RuntimeError, match="out must be the forward's"):
        torch.ops.vkernels.bilinear_pooling_backward(out, x, None, out[:, :4], nrm, "signed_sqrt_l2", False, 1e-10)
    with pytest.raises(RuntimeError, match="norm must be the forward's"):
        torch.ops.vkernels.bilinear_pooling_backward(out, x, None, out, nrm.double(), "signed_sqrt_l2", False, 1e-10)


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: forward, backward and double backward per dtype over normalize x triu
    x symmetric (y None) / two inputs."""
    from _common import static_grads

    def case(dtype, y_is_x, triu, normalize):
        def run():
            x = torch.randn(2, 24, 5, 5, dtype=dtype, requires_grad=True)
            y = None if y_is_x else torch.randn(2, 24 if triu else 40, 5, 5, dtype=dtype, requires_grad=True)
            out = vkernels.bilinear_pooling(x, y, normalize, triu, impl="triton")
            static_grads(out, (x, y), order=1)
        return f"y_is_x={y_is_x} triu={triu} normalize={normalize} {dtype}", run

    return [case(dtype, yx, triu, norm) for dtype in DTYPES for yx in (True, False) for triu in (False, True)
            for norm in (None, "signed_sqrt_l2")]
