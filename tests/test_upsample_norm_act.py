"""upsample_norm_act: every backend against the composition of PyTorch ops (vkernels.reference.upsample_norm_act)."""
import pytest
import torch

import vkernels
from vkernels.reference.upsample_norm_act import upsample_norm_act as reference
from _common import check_close, cpu_peak_bytes, impl_params, randn

IMPLS = impl_params("upsample_norm_act")
NORMS = ["batch", "instance", "adain", "none"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# x's spatial sizes per number of dims: 4-D (N, C, H, W), 5-D (N, C, D, H, W); the 5-D op runs the same tests.
SPATIAL = {4: (5, 6), 5: (2, 3, 4)}
NDIMS = [4, 5]


def interp5(where=lambda p: True):
    """full_only for the Triton interpreter's 5-D cases with where(params): the 5-D kernels run each such test in
    CI on the C++ backend and in the cases the marker keeps; VKERNELS_TEST_FULL=1 runs them all."""
    return pytest.mark.full_only(lambda p: p.get("ndim") == 5 and where(p))


def lin(ndim):
    """The linear upsampling mode of x with ndim dims ("bilinear" / "trilinear", as F.interpolate names them)."""
    return "bilinear" if ndim == 4 else "trilinear"


def as_mode(mode, ndim):
    """A test's mode for x with ndim dims: "bilinear" stands for the linear mode of either."""
    return lin(ndim) if mode == "bilinear" else mode


def cl_format(ndim):
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def up_shape(N, C, spatial, s):
    return (N, C, *(d * s for d in spatial))


def make_inputs(N, C, dtype, device, norm, *, params=True, style=None, offset=0.5, ndim=4):
    x = randn((N, C, *SPATIAL[ndim]), dtype, device) + offset  # an offset mean, so subtracting it matters
    kw = {}
    if params:
        kw["weight"] = randn((C,), torch.float32, device) * 0.5 + 1
        kw["bias"] = randn((C,), torch.float32, device) * 0.3
    if style or norm == "adain":
        kw["style_scale"] = randn((N, C), torch.float32, device) * 0.3 + 1
        kw["style_bias"] = randn((N, C), torch.float32, device) * 0.3
    return x, kw


def run_both(impl, x, kw, dtype, **opts):
    """(ours, reference in dtype, fp64 oracle), each with its own copy of the running statistics."""
    outs, stats = [], []
    for which, xx in (("ours", x), ("lowp", x), ("oracle", x.double())):
        k = {n: (v.double() if which == "oracle" else v) for n, v in kw.items()}
        rs = {}
        if opts.get("norm") == "batch" and "running" in opts:
            rm, rv = opts["running"]
            # F.batch_norm on CPU wants fp32 running statistics for fp16/bf16/fp32 x and fp64 ones for fp64 x.
            rdt = torch.float64 if xx.dtype == torch.float64 else torch.float32
            rs = dict(running_mean=rm.clone().to(rdt), running_var=rv.clone().to(rdt))
        o = {n: v for n, v in opts.items() if n != "running"}
        if which == "ours":
            y = vkernels.upsample_norm_act(xx, **k, **rs, **o, impl=impl)
        else:
            y = reference(xx, **k, **rs, **o)
        outs.append(y)
        stats.append(rs)
    return outs, stats


@pytest.mark.ci_cover("norm", "mode,scale")
@interp5(lambda p: p["scale"] == 1)
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("ndim", NDIMS)
def test_forward_matches_reference(device, impl, norm, mode, scale, ndim):
    acts = ["lrelu", "linear", "tanh", "swish"]
    mode = as_mode(mode, ndim)
    for i, dtype in enumerate(DTYPES):
        act = acts[(i + scale) % len(acts)]
        x, kw = make_inputs(3, 5, dtype, device, norm, style=(i % 2 == 0), ndim=ndim)
        opts = dict(scale=scale, mode=mode, norm=norm, act=act, gain=1.4, clamp=2.5 if i == 1 else None)
        if norm == "batch":
            opts["running"] = (torch.rand(5, device=device), torch.rand(5, device=device) + 0.5)
        (y, lowp, oracle), (rs, _, rso) = run_both(impl, x, kw, dtype, **opts)
        assert y.shape == up_shape(3, 5, SPATIAL[ndim], scale)
        check_close(y, lowp, oracle, dtype, f"{norm}/{mode}/{scale}/{act}/{dtype}")
        if rs:
            torch.testing.assert_close(rs["running_mean"].double(), rso["running_mean"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(rs["running_var"].double(), rso["running_var"], rtol=1e-5, atol=1e-6)


@interp5(lambda p: (p["norm"], p["mode"]) in (("instance", "bilinear"), ("batch", "nearest")))
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("ndim", NDIMS)
def test_eval_batch_norm_and_layouts(device, impl, norm, mode, ndim):
    mode = as_mode(mode, ndim)
    fmt = cl_format(ndim)
    x, kw = make_inputs(2, 6, torch.float32, device, norm, style=True, ndim=ndim)
    rm, rv = torch.randn(6, device=device), torch.rand(6, device=device) + 0.5
    training = norm != "batch"
    run = dict(running_mean=rm, running_var=rv) if norm == "batch" else {}
    ref = reference(x.double(), 2, mode, norm, **{k: v.double() for k, v in kw.items()},
                    **{k: v.clone().double() for k, v in run.items()}, training=training, act="elu")
    for xx in (x.contiguous(memory_format=fmt), x.transpose(-2, -1).contiguous().transpose(-2, -1),
               torch.stack([x, x], ndim).flatten(ndim - 1)[..., ::2]):
        assert torch.equal(xx, x)
        y = vkernels.upsample_norm_act(xx, 2, mode, norm, **kw, **run, training=training, act="elu", impl=impl)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
        if xx.is_contiguous(memory_format=fmt) and not xx.is_contiguous():
            assert y.is_contiguous(memory_format=fmt)
    xs = torch.randn(2, 6, *SPATIAL[ndim][:-1], 12, device=device)[..., ::2]  # non-dense strides
    y = vkernels.upsample_norm_act(xs, 2, mode, norm, **kw, **run, training=training, act="elu", impl=impl)
    ref = reference(xs.double(), 2, mode, norm, **{k: v.double() for k, v in kw.items()},
                    **{k: v.clone().double() for k, v in run.items()}, training=training, act="elu")
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


@interp5()
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("ndim", NDIMS)
def test_running_stats_match_batchnorm2d(device, impl, ndim):
    torch.manual_seed(0)
    mode = lin(ndim)
    ours = vkernels.nn.UpsampleNormAct(4, scale=2, mode=mode, act="lrelu", alpha=0.2, impl=impl).to(device)
    bn = (torch.nn.BatchNorm2d if ndim == 4 else torch.nn.BatchNorm3d)(4).to(device)
    with torch.no_grad():
        ours.weight.copy_(torch.rand(4) + 0.5)
        ours.bias.copy_(torch.randn(4))
        bn.weight.copy_(ours.weight)
        bn.bias.copy_(ours.bias)

    def ref_fwd(x):
        u = torch.nn.functional.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
        return torch.nn.functional.leaky_relu(bn(u), 0.2)

    spatial = (5, 7) if ndim == 4 else (2, 3, 4)
    for step in range(4):
        x = torch.randn(3, 4, *spatial, device=device) * (1 + step) + step
        torch.testing.assert_close(ours(x), ref_fwd(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.running_var, bn.running_var, rtol=1e-5, atol=1e-6)
    assert int(ours.num_batches_tracked) == int(bn.num_batches_tracked) == 4
    ours.eval()
    bn.eval()
    x = torch.randn(2, 4, *spatial, device=device)
    torch.testing.assert_close(ours(x), ref_fwd(x), rtol=1e-5, atol=1e-5)


# The interpreter's 4-D bilinear cases repeat one another's kernel branches: CI keeps instance (fp64 BILINEAR and STATS
# backward, per-sample statistics, the only softplus backward of the 4-D kernels); batch and none run in full mode.
@pytest.mark.full_only(lambda p: p["mode"] == "trilinear" or (p["mode"] == "bilinear" and p["norm"] != "instance"))
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("ndim,norm,mode,act", [
    (4, "batch", "nearest", "lrelu"), (4, "batch", "bilinear", "tanh"), (4, "instance", "bilinear", "softplus"),
    (4, "adain", "nearest", "swish"), (4, "none", "bilinear", "elu"),
    (5, "batch", "trilinear", "tanh"), (5, "instance", "nearest", "softplus"), (5, "adain", "trilinear", "swish")])
def test_gradcheck_and_gradgradcheck(device, impl, ndim, norm, mode, act):
    N, C, spatial = (2, 3, (3, 4)) if ndim == 4 else (1, 2, (2, 2, 2))  # 5-D: gradgradcheck's cost is per element
    x = torch.randn(N, C, *spatial, dtype=torch.float64, device=device, requires_grad=True)
    w = (torch.rand(C, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    b = torch.randn(C, dtype=torch.float64, device=device, requires_grad=True)
    ss = (torch.rand(N, C, dtype=torch.float64, device=device) + 0.5).requires_grad_()
    sb = torch.randn(N, C, dtype=torch.float64, device=device, requires_grad=True)

    def f(x, w, b, ss, sb):
        return vkernels.upsample_norm_act(x, 2, mode, norm, w, b, ss, sb, act=act, gain=1.3, impl=impl)

    # Triton through the interpreter: one random-projection check (slow mode runs a fused backward per output).
    torch.autograd.gradcheck(f, (x, w, b, ss, sb), fast_mode=device == "cpu" and impl == "triton")
    if impl != "triton" or device == "cuda":
        # Double backward is the same Python composite for every impl; gradgradcheck's ~700 forwards are too slow
        # through the Triton interpreter.
        torch.autograd.gradgradcheck(f, (x, w, b, ss, sb))


@interp5(lambda p: p["norm"] == "batch")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("norm", ["batch", "adain"])
@pytest.mark.parametrize("ndim", NDIMS)
def test_grads_match_reference_fp32(device, impl, norm, ndim):
    N, C = (2, 3) if impl == "triton" else (4, 6)  # the interpreter runs one program per (n, c): minutes at 4 x 6
    x, kw = make_inputs(N, C, torch.float32, device, norm, style=True, ndim=ndim)
    x = x.contiguous(memory_format=cl_format(ndim))
    leaves = [x] + list(kw.values())
    for t in leaves:
        t.requires_grad_()
    g = torch.randn(up_shape(N, C, SPATIAL[ndim], 3), device=device)
    y = vkernels.upsample_norm_act(x, 3, lin(ndim), norm, **kw, act="lrelu", clamp=1.5, impl=impl)
    ours = torch.autograd.grad((y * g).sum(), leaves)
    y = reference(x, 3, lin(ndim), norm, **kw, act="lrelu", clamp=1.5)
    ref = torch.autograd.grad((y * g).sum(), leaves)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_empty_and_single_sample(device, impl):
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    x = torch.randn(0, 3, 4, 4, device=device)
    y = vkernels.upsample_norm_act(x, 2, norm="batch", running_mean=rm, running_var=rv, impl=impl)
    assert y.shape == (0, 3, 8, 8)
    assert torch.equal(rm, torch.zeros(3, device=device)) and torch.equal(rv, torch.ones(3, device=device))
    x = torch.randn(1, 3, 4, 5, device=device)  # N=1 is fine for instance / adain norm
    ss, sb = torch.rand(1, 3, device=device) + 0.5, torch.randn(1, 3, device=device)
    for norm in ("instance", "adain"):
        y = vkernels.upsample_norm_act(x, 2, "bilinear", norm, style_scale=ss, style_bias=sb, impl=impl)
        torch.testing.assert_close(y, reference(x, 2, "bilinear", norm, style_scale=ss, style_bias=sb))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        vkernels.upsample_norm_act(torch.randn(1, 3, 1, 1, device=device), 1, impl=impl)
    # 5-D
    x = torch.randn(0, 3, 2, 3, 4, device=device)
    y = vkernels.upsample_norm_act(x, 2, "trilinear", norm="batch", running_mean=rm, running_var=rv, impl=impl)
    assert y.shape == (0, 3, 4, 6, 8)
    assert torch.equal(rm, torch.zeros(3, device=device)) and torch.equal(rv, torch.ones(3, device=device))
    x = torch.randn(1, 3, 2, 3, 2, device=device)
    for norm in ("instance", "adain"):
        y = vkernels.upsample_norm_act(x, 2, "trilinear", norm, style_scale=ss, style_bias=sb, impl=impl)
        torch.testing.assert_close(y, reference(x, 2, "trilinear", norm, style_scale=ss, style_bias=sb))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        vkernels.upsample_norm_act(torch.randn(1, 3, 1, 1, 1, device=device), 1, impl=impl)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        vkernels.upsample_norm_act(torch.randn(2, 3, 1, 1, 1, device=device), 1, norm="instance", impl=impl)


# The interpreter's opchecks: nearest in CI (the registrations and output layouts of both Triton ops, channels_last
# included); the bilinear kernels' values and gradients are the other tests' (opcheck's backward runs them too).
@pytest.mark.full_only(lambda p: p["ndim"] == 5 or p["mode"] == "bilinear")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("ndim", NDIMS)
def test_opcheck(device, impl, ndim, mode):
    sfx = "_triton" if impl == "triton" else ""
    stats = getattr(torch.ops.vkernels, "upsample_norm_act_stats" + sfx)
    apply = getattr(torch.ops.vkernels, "upsample_norm_act" + sfx)
    x = torch.randn(2, 3, *((4, 5) if ndim == 4 else (2, 3, 4)), device=device, requires_grad=True)
    m = torch.randn(2, 3, device=device, requires_grad=True)
    a = torch.rand(2, 3, device=device, requires_grad=True)
    b = torch.randn(2, 3, device=device, requires_grad=True)
    if mode == "bilinear":
        torch.library.opcheck(stats, (x, 2, lin(ndim), False))
        torch.library.opcheck(apply, (x, m, a, b, 2, lin(ndim), "lrelu", 0.2, 1.0, None))
    else:
        torch.library.opcheck(stats, (x, 2, "nearest", True))
        torch.library.opcheck(apply, (x.detach().contiguous(memory_format=cl_format(ndim)), m, a, b, 3, "nearest",
                                      "tanh", 0.2, 2.0, 0.5))


@interp5()
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("ndim", NDIMS)
def test_compile_fullgraph(device, impl, ndim):
    torch._dynamo.reset()
    mod = vkernels.nn.UpsampleNormAct(4, mode=lin(ndim), impl=impl).to(device)

    def f(x):
        return mod(x).square().sum()

    x = torch.randn(2, 4, *((5, 6) if ndim == 4 else (2, 3, 4)), device=device, requires_grad=True)
    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    (gx,) = torch.autograd.grad(loss, x)
    rm = mod.running_mean.clone()
    mod.running_mean.copy_(torch.zeros(4))
    mod.running_var.fill_(1)
    x2 = x.detach().requires_grad_()
    y = reference(x2, 2, lin(ndim), "batch", mod.weight, mod.bias, running_mean=torch.zeros(4, device=device),
                  running_var=torch.ones(4, device=device))
    (g2,) = torch.autograd.grad(y.square().sum(), x2)
    torch.testing.assert_close(gx, g2, rtol=1e-4, atol=1e-4)
    assert not torch.equal(rm, torch.zeros(4, device=device))  # the compiled call updated the running mean


@pytest.mark.parametrize("device,impl", IMPLS)
def test_bad_input(device, impl):
    x = torch.randn(2, 3, 4, 4, device=device)
    f = vkernels.upsample_norm_act

    def raises(exc, match, *a, **k):
        with pytest.raises(exc, match=match):
            f(*a, **k, impl=impl)

    raises(ValueError, "style_scale must have shape", x, norm="adain", style_scale=torch.ones(3, device=device),
           style_bias=torch.zeros(2, 3, device=device))
    raises(ValueError, "style_bias must have shape", x, style_bias=torch.zeros(3, 2, device=device))
    raises(ValueError, "adain.*needs style_scale", x, norm="adain")
    raises(ValueError, "norm must be one of", x, norm="group")
    raises(ValueError, "mode must be one of", x, mode="bicubic")
    raises(ValueError, "act must be one of", x, act="gelu")
    raises(ValueError, "scale must be an integer", x, scale=1.5)
    raises(ValueError, "scale must be an integer", x, scale=0)
    raises(ValueError, "training=False needs running_mean", x, training=False)
    raises(ValueError, "running_mean and running_var", x, running_mean=torch.zeros(3, device=device))
    raises(ValueError, "weight must have shape", x, weight=torch.ones(4, device=device))
    raises(TypeError, "x must be float16", x.long())
    raises(ValueError, "x must be 4-D", x[0])
    raises(ValueError, r"x must be 4-D \(N, C, H, W\) or 5-D \(N, C, D, H, W\)", x[None, None])
    raises(ValueError, "mode 'trilinear' needs 5-D x", x, mode="trilinear")
    raises(ValueError, "mode 'bilinear' needs 4-D x", x[:, :, None], mode="bilinear")
    raises(TypeError, "weight must be a floating", x, weight=torch.ones(3, dtype=torch.long, device=device))
    raises(ValueError, "clamp must be None", x, clamp=-1.0)
    if device == "cpu":
        raises(ValueError, "weight is on meta", x, weight=torch.ones(3, device="meta"))
    with pytest.raises(RuntimeError, match="a must have shape|a must be"):
        op = torch.ops.vkernels.upsample_norm_act_triton if impl == "triton" else torch.ops.vkernels.upsample_norm_act
        m = torch.zeros(2, 3, device=device)
        op(x, m, torch.zeros(3, 2, device=device), m, 2, "nearest", "lrelu", 0.2, 1.0, None)
    with pytest.raises(RuntimeError, match="mode must be 'nearest' or 'trilinear' for 5-D x"):
        op(x[:, :, None], m, m, m, 2, "bilinear", "lrelu", 0.2, 1.0, None)
    with pytest.raises(RuntimeError, match="mode must be 'nearest' or 'bilinear'"):
        op(x, m, m, m, 2, "trilinear", "lrelu", 0.2, 1.0, None)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_modules_adain_conditional_bn(device, impl):
    torch.manual_seed(1)
    ada = vkernels.nn.AdaIN(5, 7, scale=2, act="lrelu", impl=impl).to(device)
    with torch.no_grad():
        ada.style.bias.normal_()
    x, style = torch.randn(3, 5, 4, 4, device=device), torch.randn(3, 7, device=device)
    s, t = ada.style(style).chunk(2, 1)
    torch.testing.assert_close(ada(x, style), reference(x, 2, "nearest", "adain", style_scale=1 + s, style_bias=t,
                                                        act="lrelu"), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="style must have shape"):
        ada(x, torch.randn(3, 6, device=device))
    x5 = torch.randn(3, 5, 2, 3, 2, device=device)  # AdaIN on a feature volume (HoloGAN)
    torch.testing.assert_close(ada(x5, style), reference(x5, 2, "nearest", "adain", style_scale=1 + s, style_bias=t,
                                                         act="lrelu"), rtol=1e-5, atol=1e-5)
    cbn = vkernels.nn.ConditionalBatchNorm2d(5, 10, scale=2, mode="bilinear", impl=impl).to(device)
    with torch.no_grad():
        cbn.gain_embed.weight.normal_()
        cbn.bias_embed.weight.normal_()
    y = torch.tensor([1, 7, 3], device=device)
    rm, rv = torch.zeros(5, device=device), torch.ones(5, device=device)
    out = cbn(x, y)
    ref = reference(x, 2, "bilinear", "batch", style_scale=1 + cbn.gain_embed(y), style_bias=cbn.bias_embed(y),
                    running_mean=rm, running_var=rv, act="linear")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cbn.running_var, rv)
    onehot = torch.nn.functional.one_hot(y, 10).float()
    cbn.eval()
    torch.testing.assert_close(cbn(x, onehot), cbn(x, y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_cpu_vector_paths_odd_sizes(mode, layout):
    """The C++ kernel's at::vec loops: widths / channel counts that cover the vector body and its scalar tail
    (steps of 16 for fp16/bf16, 8 for fp32, 4 for fp64), the x2 interleaved stores and the bilinear row pairs
    (W >= 10), scales 1-3, and a mean far from 0 with a small spread (the one-pass statistics must not cancel)."""
    configs = [(2, 19, 21), (1, 17, 19), (3, 18, 11), (2, 3, 1), (2, 33, 12)]  # (scale, C, W)
    for i, dtype in enumerate(DTYPES):
        for j, (scale, C, W) in enumerate(configs):
            N, H = 2, 3
            x = randn((N, C, H, W), dtype, "cpu") * 0.5 + 20.0
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            norm = ["batch", "instance", "adain"][(i + j) % 3]
            act = ["lrelu", "swish", "tanh", "linear"][(i + 2 * j) % 4]
            _, kw = make_inputs(N, C, dtype, "cpu", norm, style=(j % 2 == 0))
            opts = dict(scale=scale, mode=mode, norm=norm, act=act, gain=1.2, clamp=2.0 if j == 1 else None)
            (y, lowp, oracle), _ = run_both("cpu", x, kw, dtype, **opts)
            assert y.shape == (N, C, H * scale, W * scale)
            if layout == "channels_last" and C > 1:
                assert y.is_contiguous(memory_format=torch.channels_last)
            check_close(y, lowp, oracle, dtype, f"{mode}/{layout}/{scale}/{C}x{W}/{norm}/{act}/{dtype}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("per_sample", [False, True])
def test_cpu_stats_one_pass(mode, layout, per_sample):
    """upsample_norm_act_stats on CPU against mean / var of F.interpolate's upsampled values in fp64, with a large
    common offset (a one-pass sum / sum-of-squares without a shift would lose the variance)."""
    import torch.nn.functional as F
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        for scale, C, W in ((2, 19, 21), (3, 5, 7), (1, 9, 33)):
            x = randn((3, C, 4, W), dtype, "cpu") * 0.01 + 1000.0
            if layout == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            mean, var = torch.ops.vkernels.upsample_norm_act_stats(x, scale, mode, per_sample)
            u = x.double()
            if scale > 1:
                u = F.interpolate(u, scale_factor=scale, mode=mode,
                                  **({"align_corners": False} if mode == "bilinear" else {}))
            dims = (2, 3) if per_sample else (0, 2, 3)
            rm, rv = u.mean(dims), u.var(dims, unbiased=False)
            tol = 1e-12 if dtype == torch.float64 else 1e-6
            torch.testing.assert_close(mean.double(), rm, rtol=tol, atol=0)
            # The kernel blends in its compute type (fp32 for fp32/bf16): at values ~1000 with a std of ~0.01 an fp32
            # value keeps ~7 bits below the std, and the separable blend (two roundings) then bounds the variance to
            # ~1e-3 relative (worst seen: 7e-4 over 1200 draws). torch's one-step fp32 blend is the yardstick, with
            # that rounding's share on top; a wrong weight or a lost shift is off by the variance itself.
            if dtype == torch.float64:
                vtol = 1e-10
            else:
                uf = x.float()
                if scale > 1:
                    uf = F.interpolate(uf, scale_factor=scale, mode=mode,
                                       **({"align_corners": False} if mode == "bilinear" else {}))
                ref_err = (uf.var(dims, unbiased=False).double() - rv).abs().max().item()
                vtol = 2 * ref_err + 2e-3 * rv.max().item() + 1e-9
            torch.testing.assert_close(var.double(), rv, rtol=0, atol=vtol)


# --------------------------------------------------------------------------------------------------------------------
# public function's one-node training backward (statistics of x: dx += the statistics' term in place)
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("norm,mode", [("batch", "nearest"), ("instance", "bilinear"), ("adain", "nearest")])
def test_one_node_backward_low_precision_shifted(device, impl, norm, mode):
    """Gradients of the public function vs eager PyTorch in the same dtype and an fp64 oracle, on inputs whose mean
    is 4x their spread (the in-place dx += c2 * x + (c1 - c2 * mean) must not lose the small difference)."""
    dtypes = [torch.float32] if impl == "triton" and device == "cpu" else DTYPES
    for i, dtype in enumerate(dtypes):
        x, kw = make_inputs(2, 3, dtype, device, norm, style=i % 2 == 1, offset=4.0)
        if i % 2:
            x = x.contiguous(memory_format=torch.channels_last)
        dy = randn((2, 3, 10, 12), dtype, device)
        opts = dict(act="lrelu", gain=1.3)

        def grads(fn, cast):
            ts = [cast(x).detach().requires_grad_()] + [v.detach().double().requires_grad_() if cast(x).dtype ==
                                                        torch.float64 else v.detach().requires_grad_()
                                                        for v in kw.values()]
            y = fn(ts[0], 2, mode, norm, **dict(zip(kw, ts[1:])), **opts)
            return torch.autograd.grad(y, ts, cast(dy))

        ours = grads(lambda *a, **k: vkernels.upsample_norm_act(*a, **k, impl=impl), lambda t: t)
        lowp = grads(reference, lambda t: t)
        orac = grads(reference, lambda t: t.double())
        for k, (o, lp, orc) in enumerate(zip(ours, lowp, orac)):
            check_close(o, lp.to(o.dtype), orc, dtype if k == 0 else o.dtype, f"{norm}/{mode}/{dtype} grad {k}")


def _fwd_bwd_peak(mode, norm):
    x = randn((2, 16, 16, 16), torch.float32, "cpu").requires_grad_()
    w = (torch.rand(16) + 0.5).requires_grad_()
    b = torch.randn(16).requires_grad_()

    def step():
        y = vkernels.upsample_norm_act(x, 2, mode, norm, w, b, impl="cpu")
        return torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    return cpu_peak_bytes(step) / x.nbytes


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_public_fwd_bwd_peak_memory_cpu(norm):
    """Training (statistics of x) through the public function holds one x-sized dx: y and dy (4 x-sized buffers
    each at scale 2) plus dx at the peak for nearest, where the statistics' term is added to dx in place (two nodes
    held dx twice: 10). Bilinear adds the stats backward's dx as a transient (10, as before)."""
    peak = _fwd_bwd_peak("nearest", norm)
    assert peak < 9.5, f"nearest peak {peak:.2f} x-sized buffers"
    peak = _fwd_bwd_peak("bilinear", norm)
    assert peak < 10.5, f"bilinear peak {peak:.2f} x-sized buffers"


def test_cpu_backward_nchw_vector_rows_deterministic():
    """The NCHW CPU apply backward runs its rows on at::vec vectors with per-lane fp32 block sums folded into fp64
    (rows longer than one block, a scalar tail, fp16 two-vector steps): bitwise the same for 1 thread and all
    threads, and within the usual error of the composite."""
    apply_bwd, _ = _bwd_ops("cpu")
    for dtype, (N, C, H, W, s, mode) in ((torch.float32, (2, 3, 3, 1100, 2, "nearest")),
                                         (torch.float16, (2, 3, 4, 13, 2, "bilinear")),
                                         (torch.float64, (1, 2, 3, 7, 3, "nearest"))):
        dy, x, m, a, b = _bwd_inputs(N, C, H, W, s, dtype=dtype, device="cpu")
        args = (s, mode, "swish", 0.2, 1.1, None)
        outs = []
        n = torch.get_num_threads()
        for threads in (1, n):
            try:
                torch.set_num_threads(threads)
                outs.append(apply_bwd(dy, x, m, a, b, *args, [True] * 4))
            finally:
                torch.set_num_threads(n)
        assert all(torch.equal(u, v) for u, v in zip(*outs))
        lowp = apply_backward_composite(dy, x, m, a, b, *args, [True] * 4)
        d = lambda t: t.double()  # noqa: E731
        orac = apply_backward_composite(d(dy), d(x), d(m), d(a), d(b), *args, [True] * 4)
        for k, (o, lp, orc) in enumerate(zip(outs[0], lowp, orac)):
            check_close(o, lp, orc, o.dtype, f"{mode}/{dtype} output {k}")


# --------------------------------------------------------------------------------------------------------------------
# fused backward ops (upsample_norm_act_backward, upsample_norm_act_stats_backward) vs the differentiable composites
# --------------------------------------------------------------------------------------------------------------------
from vkernels.ops.upsample_norm_act import apply_backward_composite, stats_backward_composite  # noqa: E402


def _bwd_ops(impl):
    sfx = "_triton" if impl == "triton" else ""
    return (getattr(torch.ops.vkernels, "upsample_norm_act_backward" + sfx),
            getattr(torch.ops.vkernels, "upsample_norm_act_stats_backward" + sfx))


def _bwd_inputs(N, C, *spatial_and_s, dtype, device):
    *spatial, s = spatial_and_s
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    x = randn((N, C, *spatial), dtype, device) + 0.5
    m = randn((N, C), ct, device) * 0.3 + 0.5
    a = randn((N, C), ct, device) * 0.3 + 1
    b = randn((N, C), ct, device) * 0.3
    dy = randn(up_shape(N, C, spatial, s), dtype, device)
    return dy, x, m, a, b


def _cl(t):
    return t.contiguous(memory_format=cl_format(t.ndim))


@interp5(lambda p: (p["scale"], p["mode"]) not in ((3, "bilinear"), (2, "nearest")))
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("ndim", NDIMS)
def test_backward_ops_match_composite(device, impl, mode, scale, ndim):
    apply_bwd, stats_bwd = _bwd_ops(impl)
    mode = as_mode(mode, ndim)
    acts = ["lrelu", "tanh", "swish", "elu"]
    for i, dtype in enumerate(DTYPES):
        if impl == "triton" and device == "cpu" and dtype != torch.float32:
            continue  # the interpreter is slow; one dtype per (mode, scale) there
        act, clamp = acts[(i + scale) % 4], (0.8 if i % 2 else None)
        dy, x, m, a, b = _bwd_inputs(2, 3, *((5, 7) if ndim == 4 else (2, 3, 4)), scale, dtype=dtype, device=device)
        layout = _cl if (i + scale) % 2 else (lambda t: t)
        args = (scale, mode, act, 0.2, 1.4, clamp)
        ours = apply_bwd(layout(dy), layout(x), m, a, b, *args, [True] * 4)
        lowp = apply_backward_composite(dy, x, m, a, b, *args, [True] * 4)
        orac = apply_backward_composite(dy.double(), x.double(), m.double(), a.double(), b.double(), *args, [True] * 4)
        for k, (o, lp, orc) in enumerate(zip(ours, lowp, orac)):
            check_close(o, lp, orc, o.dtype, f"apply {mode}/{scale}/{act}/{dtype} output {k}")
        assert ours[0].is_contiguous(memory_format=cl_format(ndim)) == (layout is _cl)
        for per_sample in (False, True):
            shape = (2, 3) if per_sample else (3,)
            gm, gv, mean = (randn(shape, m.dtype, device) for _ in range(3))
            o = stats_bwd(gm, gv, layout(x), mean, scale, mode, per_sample)
            lp = stats_backward_composite(gm, gv, x, mean, scale, mode, per_sample)
            orc = stats_backward_composite(gm.double(), gv.double(), x.double(), mean.double(), scale, mode,
                                           per_sample)
            check_close(o, lp, orc, dtype, f"stats {mode}/{scale}/{dtype}/{per_sample}")


@pytest.mark.parametrize("device,impl", [p for p in IMPLS if p.values == ("cpu", "triton")])
def test_triton_forward_int64_branch_equals_int32(device, impl, monkeypatch):
    """The forward kernels' INT64 branches (statistics and apply; otherwise only tensors past 2^31 elements reach
    them) forced on small tensors give the int32 launch's result bit for bit: 4-D and 5-D, both layouts, nearest /
    bilinear / trilinear, batch and instance statistics."""
    from vkernels.triton import _launch

    for shape, mode, norm, cl in (((2, 3, 5, 7), "bilinear", "batch", False), ((2, 3, 5, 7), "nearest", "instance", True),
                                  ((2, 3, 2, 3, 5), "trilinear", "batch", True),
                                  ((2, 3, 2, 3, 5), "trilinear", "instance", False),
                                  ((2, 3, 2, 3, 5), "nearest", "batch", False)):
        x = randn(shape, torch.float32, device)
        if cl:
            x = x.to(memory_format=torch.channels_last if len(shape) == 4 else torch.channels_last_3d)
        want = vkernels.upsample_norm_act(x, 2, mode, norm, act="lrelu", impl=impl)
        flags = []
        with monkeypatch.context() as m, _launch.recording(
                lambda k, g, a, kw: "INT64" in kw and flags.append(kw["INT64"])):
            m.setattr(_launch, "index64", lambda *args: True)
            got = vkernels.upsample_norm_act(x, 2, mode, norm, act="lrelu", impl=impl)
        assert len(flags) >= 2 and all(flags), (shape, mode, norm, flags)
        assert torch.equal(got, want), (shape, mode, norm, cl, (got - want).abs().max())


@pytest.mark.parametrize("device,impl", [p for p in IMPLS if p.values == ("cpu", "triton")])
def test_triton_backward_int64_branch_small_blocks(device, impl, monkeypatch):
    """The Triton backward with its INT64 branch forced on small tensors (otherwise only tensors past 2^31 elements
    reach it) and 16-element blocks (a block spans rows: the carried row / column advances across them), against
    the composite. 5-D: the volume walked as (slice, offset) with the slice carried across blocks."""
    from vkernels.triton import upsample_norm_act_backward as kernels
    monkeypatch.setattr(kernels, "plane_block", lambda t, n, fp64_bilinear=False: 16)
    monkeypatch.setattr(kernels, "image_int64", lambda *tensors: True)
    apply_bwd, stats_bwd = _bwd_ops(impl)
    for spatial, mode, scale, act, clamp in (((5, 7), "nearest", 2, "tanh", 0.8), ((5, 7), "bilinear", 1, "swish", None),
                                             ((2, 3, 5), "trilinear", 2, "tanh", 0.8)):
        dy, x, m, a, b = _bwd_inputs(1, 2, *spatial, scale, dtype=torch.float32, device=device)
        args = (scale, mode, act, 0.2, 1.4, clamp)
        ours = apply_bwd(dy, x, m, a, b, *args, [True] * 4)
        lowp = apply_backward_composite(dy, x, m, a, b, *args, [True] * 4)
        orac = apply_backward_composite(dy.double(), x.double(), m.double(), a.double(), b.double(), *args, [True] * 4)
        for k, (o, lp, orc) in enumerate(zip(ours, lowp, orac)):
            check_close(o, lp, orc, o.dtype, f"apply {mode}/{scale}/{act} output {k}")
        gm, gv, mean = (randn((2,), m.dtype, device) for _ in range(3))
        o = stats_bwd(gm, gv, x, mean, scale, mode, False)
        lp = stats_backward_composite(gm, gv, x, mean, scale, mode, False)
        orc = stats_backward_composite(gm.double(), gv.double(), x.double(), mean.double(), scale, mode, False)
        check_close(o, lp, orc, torch.float32, f"stats {mode}/{scale}")


@interp5()
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("ndim", NDIMS)
def test_backward_ops_masks_empty_determinism(device, impl, ndim):
    apply_bwd, stats_bwd = _bwd_ops(impl)
    sp = (4, 5) if ndim == 4 else (2, 3, 4)
    dy, x, m, a, b = _bwd_inputs(2, 3, *sp, 2, dtype=torch.float32, device=device)
    args = (2, lin(ndim), "lrelu", 0.2, 1.0, None)
    full = apply_bwd(dy, x, m, a, b, *args, [True] * 4)
    for mask in ([True, False, False, False], [False, True, False, True], [False, False, True, False]):
        part = apply_bwd(dy, x, m, a, b, *args, mask)
        for k, (p, f) in enumerate(zip(part, full)):
            if mask[k]:
                assert torch.equal(p, f), (mask, k)
            else:
                assert p.numel() == 0, (mask, k)
    again = apply_bwd(dy, x, m, a, b, *args, [True] * 4)
    assert all(torch.equal(u, v) for u, v in zip(full, again))  # deterministic
    if device == "cpu":
        n = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = apply_bwd(_cl(dy), _cl(x), m, a, b, *args, [True] * 4)
        finally:
            torch.set_num_threads(n)
        many = apply_bwd(_cl(dy), _cl(x), m, a, b, *args, [True] * 4)
        assert all(torch.equal(u, v) for u, v in zip(one, many))
    for shape in ((0, 3, *sp), (2, 0, *sp), (2, 3, 0, *sp[1:])):
        dy, x, m, a, b = _bwd_inputs(*shape, 2, dtype=torch.float32, device=device)
        dx, dm, da, db = apply_bwd(dy, x, m, a, b, *args, [True] * 4)
        assert dx.shape == x.shape and dm.shape == da.shape == db.shape == m.shape
        assert torch.equal(db, torch.zeros_like(db))
        z = torch.zeros(shape[1], device=device)
        assert stats_bwd(z, z, x, z, 2, lin(ndim), False).shape == x.shape
    with pytest.raises(RuntimeError, match="dy"):
        apply_bwd(torch.randn(2, 3, *sp, device=device), x, m, a, b, *args, [True] * 4)


# The interpreter's backward-op opchecks: nearest in CI (the registrations and output layouts of both Triton backward
# ops); the fp64 bilinear backward kernels run in CI in the kept bilinear gradcheck above.
@pytest.mark.full_only(lambda p: p["ndim"] == 5 or p["mode"] == "bilinear")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("ndim", NDIMS)
def test_backward_ops_opcheck_and_gradgradcheck(device, impl, ndim, mode):
    apply_bwd, stats_bwd = _bwd_ops(impl)
    mode = as_mode(mode, ndim)
    N, C, sp = (2, 3, (3, 4)) if ndim == 4 else (1, 2, (2, 2, 2))
    dy, x, m, a, b = (t.requires_grad_() for t in _bwd_inputs(N, C, *sp, 2, dtype=torch.float64, device=device))
    torch.library.opcheck(apply_bwd, (dy, x, m, a, b, 2, mode, "tanh", 0.2, 1.3, None, [True, True, False, True]))
    gm, gv, mean = (torch.randn(C, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3))
    torch.library.opcheck(stats_bwd, (gm, gv, x, mean, 2, mode, False))
    if impl == "triton" and device == "cpu":
        return  # gradcheck's hundreds of calls are too slow through the Triton interpreter
    if ndim == 5 and mode == "nearest":
        return  # the 5-D nearest composites are the 4-D ones' code
    # The fused ops' own gradients (the composites' autograd) against finite differences of the fused ops.
    f = lambda *t: apply_bwd(*t, 2, mode, "tanh", 0.2, 1.3, None, [True] * 4)  # noqa: E731
    torch.autograd.gradcheck(f, (dy, x, m, a, b))
    gm, gv, mean = (torch.randn(N, C, dtype=torch.float64, device=device, requires_grad=True) for _ in range(3))
    torch.autograd.gradcheck(lambda *t: stats_bwd(*t, 2, mode, True), (gm, gv, x, mean))
    torch.autograd.gradgradcheck(lambda *t: stats_bwd(*t, 2, mode, True), (gm, gv, x, mean))


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("ndim", NDIMS)
def test_backward_compile_fullgraph_instance(device, impl, ndim):
    torch._dynamo.reset()
    x = torch.randn(2, 4, *((5, 6) if ndim == 4 else (2, 3, 3)), device=device, requires_grad=True)
    ss = (torch.rand(2, 4, device=device) + 0.5).requires_grad_()

    def f(x, ss):
        return vkernels.upsample_norm_act(x, 3, "nearest", "instance", style_scale=ss, act="swish",
                                          impl=impl).square().sum()

    gx, gs = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(x, ss), (x, ss))
    y = reference(x, 3, "nearest", "instance", style_scale=ss, act="swish")
    rx, rs = torch.autograd.grad(y.square().sum(), (x, ss))
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gs, rs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_cpu_backward_channels_last_row_blocks(mode):
    """The channels_last CPU backward splits each sample into blocks of input rows (W * s^2 large enough for several
    blocks here): dx rows next to a block edge get the taps of the neighbouring block's output rows, the sums count
    every output row once, and the result is bitwise the same for 1 thread and all threads."""
    apply_bwd, stats_bwd = _bwd_ops("cpu")
    for dtype, (N, C, H, W, s) in ((torch.float64, (1, 3, 13, 200, 3)), (torch.float32, (2, 17, 9, 600, 2))):
        dy, x, m, a, b = _bwd_inputs(N, C, H, W, s, dtype=dtype, device="cpu")
        args = (s, mode, "swish", 0.2, 1.1, None)
        gm, gv, mean = (randn((N, C), m.dtype, "cpu") for _ in range(3))
        outs = []
        n = torch.get_num_threads()
        for threads in (1, n):
            try:
                torch.set_num_threads(threads)
                outs.append((*apply_bwd(_cl(dy), _cl(x), m, a, b, *args, [True] * 4),
                             stats_bwd(gm, gv, _cl(x), mean, s, mode, True)))
            finally:
                torch.set_num_threads(n)
        assert all(torch.equal(u, v) for u, v in zip(*outs))
        lowp = (*apply_backward_composite(dy, x, m, a, b, *args, [True] * 4),
                stats_backward_composite(gm, gv, x, mean, s, mode, True))
        d = lambda t: t.double()  # noqa: E731
        orac = (*apply_backward_composite(d(dy), d(x), d(m), d(a), d(b), *args, [True] * 4),
                stats_backward_composite(d(gm), d(gv), d(x), d(mean), s, mode, True))
        for k, (o, lp, orc) in enumerate(zip(outs[0], lowp, orac)):
            check_close(o, lp, orc, o.dtype, f"{mode}/{dtype} output {k}")


# --------------------------------------------------------------------------------------------------------------------
# bilinear CPU fast paths: statistics from the Gram form of the interpolation, fused s == 2 NCHW apply
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("per_sample", [False, True])
def test_cpu_bilinear_stats_gram_form(per_sample):
    """The bilinear statistics are computed from x (column sums and the tridiagonal Gram matrix of the interpolation),
    never from upsampled values: against mean / var of F.interpolate in fp64 over edge cases of the tables (H or W of
    1, odd sizes, W not a multiple of the vector width, scales 2-4), NCHW and channels_last. fp64 must agree to
    rounding (a wrong Gram weight or edge term is off by O(1e-2) relative); low precision to 1e-5 relative of the
    std / variance (fp32 blend in the kernel, exact in the oracle)."""
    import torch.nn.functional as F
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        for (N, C, H, W) in ((2, 3, 1, 1), (2, 3, 1, 9), (1, 2, 7, 1), (3, 4, 5, 13), (2, 2, 16, 33), (1, 2, 9, 17)):
            for s in (2, 3, 4):
                x = randn((N, C, H, W), dtype, "cpu") * 2 + 3
                for xx in (x, x.contiguous(memory_format=torch.channels_last)):
                    mean, var = torch.ops.vkernels.upsample_norm_act_stats(xx, s, "bilinear", per_sample)
                    u = F.interpolate(x.double(), scale_factor=s, mode="bilinear", align_corners=False)
                    dims = (2, 3) if per_sample else (0, 2, 3)
                    rm, rv = u.mean(dims), u.var(dims, unbiased=False)
                    tol = 1e-12 if dtype == torch.float64 else 1e-5
                    where = f"{dtype}/{(N, C, H, W)}/s={s}/{'cl' if xx is not x else 'nchw'}"
                    sd = x.double().std()  # groups of one value (1x1 planes per sample) have variance 0
                    assert ((mean.double() - rm).abs() / (rv.sqrt() + sd)).max().item() <= tol, where
                    assert ((var.double() - rv).abs() / (rv + sd ** 2)).max().item() <= tol, where


def test_cpu_bilinear_apply_s2_edges():
    """The s == 2 NCHW apply normalises x before interpolating and writes two output rows per input row pair: against
    the fp64 composition over H of 1 and 2 (edge rows only), widths below / not a multiple of the vector width (scalar
    tails, edge columns), every dtype, a large mean (cancellation) and both threads counts (planes split across
    threads give identical results)."""
    import torch.nn.functional as F
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        for (N, C, H, W) in ((2, 3, 1, 1), (1, 2, 2, 3), (2, 3, 5, 13), (1, 2, 4, 40), (2, 2, 9, 17)):
            x = randn((N, C, H, W), dtype, "cpu") * 0.5 + (100.0 if dtype in (torch.float32, torch.float64) else 1.0)
            ct = torch.float64 if dtype == torch.float64 else torch.float32
            m = x.to(ct).mean((2, 3)) + randn((N, C), ct, "cpu") * 0.1
            a, b = randn((N, C), ct, "cpu").abs() + 0.5, randn((N, C), ct, "cpu")
            outs = []
            n = torch.get_num_threads()
            for threads in (1, n):
                try:
                    torch.set_num_threads(threads)
                    outs.append(torch.ops.vkernels.upsample_norm_act(x, m, a, b, 2, "bilinear", "lrelu", 0.2, 1.4,
                                                                     None))
                finally:
                    torch.set_num_threads(n)
            assert torch.equal(*outs)
            u = F.interpolate(x.double(), scale_factor=2, mode="bilinear", align_corners=False)
            z = (u - m.double()[..., None, None]) * a.double()[..., None, None] + b.double()[..., None, None]
            oracle = torch.where(z >= 0, z, 0.2 * z) * 1.4
            uf = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            zf = (uf - m.to(dtype)[..., None, None]) * a.to(dtype)[..., None, None] + b.to(dtype)[..., None, None]
            lowp = torch.where(zf >= 0, zf, 0.2 * zf) * 1.4
            check_close(outs[0], lowp, oracle, dtype, f"{dtype}/{(N, C, H, W)}")


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: every norm x mode, batch norm in eval, scale 1, activations with clamp,
    channels_last and a wide channel count, forward + backward + double backward per dtype."""
    from _common import static_grads

    def case(dtype, norm, mode="nearest", scale=2, training=True, act="lrelu", clamp=None, cl=False, C=6, style=False,
             ndim=4):
        def run():
            x, kw = make_inputs(2, C, dtype, "cpu", norm, style=style, ndim=ndim)
            if cl:
                x = x.to(memory_format=cl_format(ndim))
            x.requires_grad_()
            kw = {n: v.requires_grad_() for n, v in kw.items()}
            if norm == "batch":
                kw.update(running_mean=torch.zeros(C), running_var=torch.ones(C))
            y = vkernels.upsample_norm_act(x, scale, mode, norm, training=training, act=act, clamp=clamp, **kw,
                                           impl="triton")
            static_grads(y, [x] + [v for v in kw.values() if v.requires_grad], order=2)
        return (f"norm={norm} mode={mode} scale={scale} training={training} act={act} clamp={clamp} cl={cl} C={C} "
                f"style={style}{' 5-D' if ndim == 5 else ''} {dtype}"), run

    out = []
    for dtype in DTYPES:
        out += [case(dtype, norm, mode) for norm in NORMS for mode in ("nearest", "bilinear")]
        out += [case(dtype, "batch", training=False), case(dtype, "instance", scale=1), case(dtype, "batch", scale=1),
                case(dtype, "batch", style=True), case(dtype, "instance", cl=True), case(dtype, "batch", C=300)]
        acts = ("linear", "relu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish") if full else ("selu", "swish")
        out += [case(dtype, "batch", act=act, clamp=0.5) for act in acts]
        # 5-D x: the 3-D kernels (stats trilinear, apply, the tiled adjoint: its window at scales 2 and 3).
        out += [case(dtype, norm, mode, ndim=5) for norm in ("batch", "instance") for mode in ("nearest", "trilinear")]
        out += [case(dtype, "adain", "trilinear", scale=3, ndim=5), case(dtype, "batch", "trilinear", cl=True, ndim=5),
                case(dtype, "none", "nearest", scale=3, act="swish", clamp=0.5, ndim=5)]
    return out
