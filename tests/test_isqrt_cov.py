"""isqrt_cov: every implementation against an fp64 reference (MPNCOV's iteration, autograd through every iterate),
against an eigendecomposition square root at high iteration counts, dtypes, odd shapes, layouts, empty batch;
gradcheck; what the backward keeps; opcheck; torch.compile; bad input."""
import pytest
import torch

import vkernels
from vkernels.reference.isqrt_cov import covariance, isqrt_cov as reference, triu_vec
from _common import check_close, impl_params, randn, raw_ops

OP = "isqrt_cov"
IMPLS = impl_params(OP)
SIZES = {"cpu": (3, 7, 5, 4), "triton": (2, 5, 3, 3)}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def features(B, C, H, W, device, dtype, layout="contiguous"):
    # ReLU-like features with a non-zero mean (the centering matters) and channels of different scales.
    x = randn((B, C, H, W), torch.float64, "cpu") * torch.linspace(0.5, 2.0, C).view(1, C, 1, 1) + 0.7
    x = x.to(device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.cat([x, x], 3)[..., ::2]
        assert not x.is_contiguous()
    return x


def run_case(device, impl, dtype, iters, triu, sizes=None, layout="contiguous"):
    B, C, H, W = sizes or SIZES[impl]
    x = features(B, C, H, W, device, dtype, layout)
    leaf = x.detach().clone().requires_grad_()
    out = vkernels.isqrt_cov(leaf, iters, triu, impl=impl)
    assert out.shape == ((B, C * (C + 1) // 2) if triu else (B, C, C)) and out.dtype == dtype
    g = torch.randn(out.shape, dtype=torch.float64)
    grad, = torch.autograd.grad((out.double().cpu() * g).sum(), leaf) if B else (torch.zeros_like(leaf),)

    def ref_run(prec):
        lx = x.detach().to(device="cpu", dtype=prec).requires_grad_()
        o = reference(lx, iters, triu)
        gx, = torch.autograd.grad((o.double() * g).sum(), lx) if B else (torch.zeros_like(lx),)
        return o, gx

    o64, g64 = ref_run(torch.float64)
    ol, gl = ref_run(dtype)
    check_close(out, ol, o64, dtype, "out")
    check_close(grad, gl, g64, dtype, "dx")


@pytest.mark.ci_cover("dtype", "iters,triu")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("iters,triu", [(5, True), (1, False), (2, True), (3, False)])
def test_matches_reference(device, impl, dtype, iters, triu):
    run_case(device, impl, dtype, iters, triu)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("sizes", [(1, 1, 1, 2), (2, 33, 3, 5), (1, 4, 1, 1), (3, 2, 7, 1)], ids=str)
def test_odd_sizes(device, impl, sizes):
    run_case(device, impl, torch.float32, 4, True, sizes=sizes)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(device, impl, layout):
    run_case(device, impl, torch.float32, 5, True, layout=layout)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_empty_batch(device, impl):
    run_case(device, impl, torch.float32, 5, True, sizes=(0, 4, 3, 3))


# The CPU kernel computes products known to be symmetric as their upper triangle in 64-row blocks and mirrors them:
# C = 130 has three row blocks, the last one partial (and an odd C). B = 1 runs images in turn with MKL's threads
# inside the GEMMs, B = 3 spreads images over threads (when torch has >= 2 threads; otherwise both run in turn).
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("iters,triu", [(5, True), (2, False)])
def test_triangle_blocks_cpu(B, dtype, iters, triu):
    run_case("cpu", "cpu", dtype, iters, triu, sizes=(B, 130, 5, 6))


def test_gradcheck_triangle_blocks_cpu():
    x = features(1, 67, 2, 2, "cpu", torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda x: vkernels.isqrt_cov(x, 3, True, impl="cpu"), (x,), fast_mode=True)


def test_inference_mode_cpu():
    """The per-image workers run their GEMMs under the caller's dispatch state (inference mode here)."""
    x = features(3, 70, 4, 4, "cpu", torch.float32)
    want = vkernels.isqrt_cov(x, 5, impl="cpu")
    with torch.inference_mode():
        got = vkernels.isqrt_cov(x, 5, impl="cpu")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("device,impl", IMPLS + [pytest.param("cpu", "reference", id="cpu-reference")])
def test_converges_to_eigh_sqrt(device, impl):
    """Well-conditioned SPD covariance (HW >> C): 30 iterations give the principal square root to fp64 precision,
    5 do not (the test can tell the two apart)."""
    x = features(2, 6, 8, 8, device, torch.float64)
    sigma = covariance(x.cpu())
    w, V = torch.linalg.eigh(sigma)
    assert (w.min(1).values / w.max(1).values > 0.01).all()  # well conditioned
    want = V @ torch.diag_embed(w.sqrt()) @ V.transpose(1, 2)
    got = vkernels.isqrt_cov(x, 30, triu=False, impl=impl).cpu()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(vkernels.isqrt_cov(x, 30, impl=impl).cpu(), triu_vec(want), rtol=1e-9, atol=1e-10)
    assert (vkernels.isqrt_cov(x, 2, triu=False, impl=impl).cpu() - want).abs().max() > 1e-4


def _mpncov_sqrtm(x, iterN):
    """MPNCOV's Sqrtm forward, transcribed (its own loop structure: iterN - 2 middle steps, a final Y-only step)."""
    bs, dim = x.shape[0], x.shape[1]
    I3 = 3.0 * torch.eye(dim, dtype=x.dtype).view(1, dim, dim).repeat(bs, 1, 1)
    normA = (1.0 / 3.0) * x.mul(I3).sum(dim=1).sum(dim=1)
    A = x.div(normA.view(bs, 1, 1).expand_as(x))
    if iterN < 2:
        ZY = 0.5 * (I3 - A)
        YZY = A.bmm(ZY)
    else:
        ZY = 0.5 * (I3 - A)
        Y = A.bmm(ZY)
        Z = ZY
        for _ in range(1, iterN - 1):
            ZY = 0.5 * (I3 - Z.bmm(Y))
            Y, Z = Y.bmm(ZY), ZY.bmm(Z)
        YZY = 0.5 * Y.bmm(I3 - Z.bmm(Y))
    return YZY * torch.sqrt(normA).view(bs, 1, 1).expand_as(x)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("iters", [1, 2, 5])
def test_matches_mpncov_iteration(device, impl, iters):
    """Plain Newton-Schulz at the same count, as the authors' code writes it (not only our reference)."""
    x = features(2, 5, 4, 3, device, torch.float64)
    want = _mpncov_sqrtm(covariance(x.cpu()), iters)
    torch.testing.assert_close(vkernels.isqrt_cov(x, iters, triu=False, impl=impl).cpu(), want)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("iters,triu", [(1, True), (3, False), (5, True)])
def test_gradcheck(device, impl, iters, triu):
    x = features(2, 3, 3, 2, device, torch.float64).requires_grad_()
    torch.autograd.gradcheck(lambda x: vkernels.isqrt_cov(x, iters, triu, impl=impl), (x,),
                             fast_mode=impl == "triton")


@pytest.mark.parametrize("device,impl", IMPLS)
def test_zero_covariance_gives_zero(device, impl):
    x = torch.ones(2, 3, 2, 2, device=device)
    x[1] = torch.randn(3, 2, 2)
    out = vkernels.isqrt_cov(x, 5, impl=impl)
    assert (out[0] == 0).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("device,impl", IMPLS)
def test_backward_keeps_one_matrix_per_image(device, impl):
    """Autograd keeps x, A (B C^2) and t (B): not the 2 iters iterates the reference (and MPNCOV) keep."""
    B, C, iters = 2, 6, 5
    x = features(B, C, 4, 4, device, torch.float32).requires_grad_()

    def saved_numel(fn):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn().sum().backward()
        return sum(sizes)

    ours = saved_numel(lambda: vkernels.isqrt_cov(x, iters, impl=impl))
    ref = saved_numel(lambda: reference(x, iters))
    assert ours <= x.numel() + B * C * C + B
    assert ref >= 2 * iters * B * C * C


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    fwd, bwd = raw_ops("isqrt_cov", impl)
    for iters, triu in [(1, True), (3, False)]:
        x = features(2, 4, 3, 2, device, torch.float32)
        torch.library.opcheck(fwd.default, (x.clone().requires_grad_(), iters, triu))
        out, A, t = fwd(x, iters, triu)
        torch.library.opcheck(bwd.default, (torch.randn_like(out), x, A, t, iters, triu))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl):
    torch._dynamo.reset()
    x = features(2, 5, 3, 3, device, torch.float32)

    def f(x):
        return vkernels.isqrt_cov(torch.relu(x), 3, impl=impl).square().sum(1)

    leaf = x.clone().requires_grad_()
    got = torch.compile(f, fullgraph=True, dynamic=False)(leaf)
    want = f(leaf)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.sum(), leaf)[0], torch.autograd.grad(want.sum(), leaf)[0])


def test_module():
    x = features(2, 6, 4, 4, "cpu", torch.float32)
    m = vkernels.nn.ISqrtCov(iters=3)
    torch.testing.assert_close(m(x), vkernels.isqrt_cov(x, 3))
    assert m.output_dim(6) == 21
    r = vkernels.nn.ISqrtCov(in_channels=6, reduced_dim=4)
    assert r(x).shape == (2, 10) and r.output_dim(6) == 10
    with pytest.raises(ValueError, match="reduced_dim"):
        vkernels.nn.ISqrtCov(in_channels=6)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=torch.randn(2, 3, 4)), ValueError, "x must have shape"),
    (dict(iters=0), ValueError, "iters must be"),
    (dict(iters=2.5), ValueError, "iters must be"),
    (dict(x=torch.randn(2, 3, 4, 4).long()), TypeError, "x must be float"),
    (dict(x=torch.randn(2, 3, 4, 0)), ValueError, "H \\* W >= 1"),
    (dict(triu="yes"), TypeError, "triu must be"),
])
def test_bad_input(kwargs, exc, match):
    args = dict(x=torch.randn(2, 3, 4, 4), iters=5, triu=True)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        vkernels.isqrt_cov(**args)


def test_cpp_checks_name_the_argument():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="iters must be >= 1"):
        torch.ops.vkernels.isqrt_cov(x, 0, True)
    with pytest.raises(RuntimeError, match="x must have shape"):
        torch.ops.vkernels.isqrt_cov(x[0], 5, True)
    out, A, t = torch.ops.vkernels.isqrt_cov(x, 2, True)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        torch.ops.vkernels.isqrt_cov_backward(torch.randn(2, 5), x, A, t, 2, True)


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: iters 1 (no Z) and 5, triu or full output, forward + backward per
    dtype, at a small and a wide channel count."""
    from _common import static_grads

    def case(dtype, iters, triu, c):
        def run():
            x = torch.randn(2, c, 4, 5, dtype=dtype, requires_grad=True)
            static_grads(vkernels.isqrt_cov(x, iters, triu, impl="triton"), (x,), order=1)
        return f"iters={iters} triu={triu} C={c} {dtype}", run

    return [case(dtype, iters, triu, c) for dtype in DTYPES for iters in (1, 5) for triu in (False, True)
            for c in ((7, 130) if full else (130,))]
