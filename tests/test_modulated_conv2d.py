"""modulated_conv2d: every implementation against a reference written from NVlabs' modulated_conv2d +
conv2d_resample (generic path) + bias_act, in fp64: demodulate on/off, fused/non-fused, up=2 / down=2 with a FIR
filter, 1x1 and 3x3 kernels, noise/bias/act/clamp variants, dtypes (2x rule), odd shapes, non-contiguous input;
gradients of x, weight, styles, bias, noise and noise_strength; gradcheck; opcheck of every new op;
torch.compile(fullgraph=True); the module; bad input."""
import itertools
import math

import pytest
import torch

import vkernels
from vkernels.reference.modulated_conv2d import modulated_conv2d as reference
from _common import check_close, impl_params, randn

OP = "modulated_conv2d_epilogue"
IMPLS = impl_params(OP)
F_1331 = vkernels.setup_filter([1, 3, 3, 1])


def make(device, dtype, N=2, I=3, O=4, H=5, W=6, k=3, up=1, down=1, noise=True, wdtype=None):
    wdtype = wdtype or dtype
    x = randn((N, I, H, W), dtype, device)
    weight = randn((O, I, k, k), wdtype, device)
    styles = (randn((N, I), wdtype, "cpu") * 0.5 + 1).to(device)
    oh, ow = H * up // down, W * up // down  # [1, 3, 3, 1] filter, padding k // 2: floor for down=2
    nz = randn((N, 1, oh, ow), dtype, device) if noise else None
    bias = randn((O,), dtype, device)
    ns = torch.tensor(0.7, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    return x, weight, styles, nz, ns, bias


def run(impl, x, weight, styles, noise, ns, bias, grads=True, **kw):
    ns = ns if noise is not None else None  # noise_strength only matters with noise
    leaves = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (x, weight, styles, noise, ns, bias)]
    fn = reference if impl == "reference" else vkernels.modulated_conv2d
    extra = {} if impl == "reference" else {"impl": impl}
    kw = dict(kw)
    if impl == "reference":
        kw["padding"] = kw.get("padding", weight.shape[-1] // 2)
        if kw.get("up", 1) > 1 or kw.get("down", 1) > 1:
            kw["resample_filter"] = F_1331.to(x.device)
    y = fn(leaves[0], leaves[1], leaves[2], noise=leaves[3], noise_strength=leaves[4] if noise is not None else None,
           bias=leaves[5], **kw, **extra)
    if not grads:
        return y, None
    g = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    req = [t for t in leaves if t is not None]
    gs = torch.autograd.grad((y.double().cpu() * g).sum(), req, allow_unused=True)
    return y, gs


def compare(device, impl, dtype, grads=True, inputs=None, **kw):
    inputs = inputs or make(device, dtype, up=kw.get("up", 1), down=kw.get("down", 1),
                            noise=kw.pop("noise", True))
    y, gs = run(impl, *inputs, grads=grads, **kw)
    cpu64 = [t.detach().double().cpu() if t is not None else None for t in inputs]
    y64, gs64 = run("reference", *cpu64, grads=grads, **kw)
    lp = [t.detach().cpu() if t is not None else None for t in inputs]
    ylp, gslp = run("reference", *lp, grads=grads, **kw)
    check_close(y, ylp, y64, dtype, "y")
    if grads:
        used = list(inputs[:4]) + [inputs[4] if inputs[3] is not None else None, inputs[5]]
        names = [n for n, t in zip(("x", "weight", "styles", "noise", "ns", "bias"), used) if t is not None]
        for name, a, b, c in zip(names, gs, gslp, gs64):
            dt = a.dtype
            check_close(a, b.to(dt) if b is not None else torch.zeros_like(c).to(dt), c, dt, name)


@pytest.mark.ci_cover("demodulate,fused", "up,down,k")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("demodulate,fused", list(itertools.product([True, False], [True, False])))
@pytest.mark.parametrize("up,down,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (1, 1, 1), (2, 1, 1), (1, 2, 1)])
def test_matches_reference_fp64(device, impl, demodulate, fused, up, down, k):
    inputs = make(device, torch.float64, up=up, down=down, k=k)
    compare(device, impl, torch.float64, inputs=inputs, demodulate=demodulate, fused_modconv=fused, up=up, down=down)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("act,clamp,noise", [("lrelu", None, True), ("lrelu", 0.5, True), ("linear", None, False),
                                             ("tanh", 0.8, True), ("swish", None, False), ("relu", None, True)])
def test_epilogue_variants(device, impl, act, clamp, noise):
    inputs = make(device, torch.float64, noise=noise)
    compare(device, impl, torch.float64, inputs=inputs, act=act, clamp=clamp, fused_modconv=False)
    compare(device, impl, torch.float64, inputs=inputs, act=act, clamp=clamp, fused_modconv=True)


@pytest.mark.ci_cover("dtype", "fused")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fused", [True, False])
def test_dtypes(device, impl, dtype, fused):
    # fp32 weights/styles with low-precision activations, as StyleGAN runs its fp16 layers.
    inputs = make(device, dtype, wdtype=torch.float32, N=3, I=5, O=6, H=7, W=5)
    compare(device, impl, dtype, grads=dtype == torch.float32, inputs=inputs, fused_modconv=fused, clamp=2.0)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_up2_odd_shapes_noncontiguous_const_noise(device, impl):
    x, weight, styles, _, ns, bias = make(device, torch.float64, N=3, I=5, O=2, H=3, W=7)
    x = x.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous
    noise = randn((1, 1, 6, 14), torch.float64, device)  # one noise image broadcast over the batch
    assert not x.is_contiguous()
    compare(device, impl, torch.float64, inputs=(x, weight, styles, noise, ns, bias), up=2)
    xcl = x.contiguous(memory_format=torch.channels_last)
    compare(device, impl, torch.float64, inputs=(xcl, weight, styles, noise, ns, bias), fused_modconv=False, up=2)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_fused_equals_nonfused(device, impl):
    x, weight, styles, noise, ns, bias = make(device, torch.float64, up=2, N=2, H=4, W=4)
    a = vkernels.modulated_conv2d(x, weight, styles, up=2, noise=noise, noise_strength=ns, bias=bias,
                                  fused_modconv=True, impl=impl)
    b = vkernels.modulated_conv2d(x, weight, styles, up=2, noise=noise, noise_strength=ns, bias=bias,
                                  fused_modconv=False, impl=impl)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_empty_batch(device, impl):
    x, weight, _, _, _, bias = make(device, torch.float32)
    y = vkernels.modulated_conv2d(x[:0], weight, torch.ones(0, 3, device=device), bias=bias, impl=impl)
    assert y.shape == (0, 4, 5, 6)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck(device, impl, fused):
    x, weight, styles, noise, ns, bias = make(device, torch.float64, N=2, I=2, O=3, H=3, W=3)
    ns = ns.double()

    def fn(x, weight, styles, ns, bias):
        return vkernels.modulated_conv2d(x, weight, styles, noise=noise, noise_strength=ns, bias=bias, clamp=1.5,
                                         fused_modconv=fused, impl=impl)

    args = tuple(t.detach().requires_grad_() for t in (x, weight, styles, ns, bias))
    assert torch.autograd.gradcheck(fn, args)


def _ops(impl):
    sfx = "_triton" if impl == "triton" else ""
    return [getattr(torch.ops.vkernels, n + sfx) for n in
            ("modulated_conv2d_weight", "modulated_conv2d_epilogue", "modulated_conv2d_epilogue_backward")]


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    wop, eop, ebop = _ops(impl)
    x, weight, styles, noise, ns, bias = make(device, torch.float32)
    for demod, fused in itertools.product([True, False], [True, False]):
        torch.library.opcheck(wop, (weight.requires_grad_(), styles.requires_grad_(), demod, fused))
    y = randn((2, 4, 5, 6), torch.float32, device).requires_grad_()
    d = randn((2, 4), torch.float32, device).requires_grad_()
    b = bias.detach().requires_grad_()
    for dd, nn_, bb, clamp in [(d, noise, b, None), (None, None, None, 0.5), (d, noise[:1], b, 1.0)]:
        torch.library.opcheck(eop, (y, dd, nn_, ns if nn_ is not None else None, bb, "lrelu", 0.2, math.sqrt(2),
                                    clamp))
        det = [None if t is None else t.detach() for t in (dd, nn_, bb)]
        torch.library.opcheck(ebop, (torch.randn_like(y), y.detach(), det[0], det[1],
                                     ns if nn_ is not None else None, det[2], "lrelu", 0.2, math.sqrt(2), clamp))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_compile(device, impl):
    torch._dynamo.reset()
    x, weight, styles, noise, ns, bias = make(device, torch.float32, up=2)
    weight.requires_grad_()

    def fn(x, weight, styles, noise, ns, bias):
        return vkernels.modulated_conv2d(x, weight, styles, up=2, noise=noise, noise_strength=ns, bias=bias,
                                         impl=impl).square().sum()

    loss = torch.compile(fn, fullgraph=True)(x, weight, styles, noise, ns, bias)
    (dw,) = torch.autograd.grad(loss, weight)
    w64 = weight.detach().double().requires_grad_()
    l64 = reference(x.double(), w64, styles.double(), up=2, padding=1, resample_filter=F_1331, noise=noise.double(),
                    noise_strength=ns.double(), bias=bias.double(), act="lrelu").square().sum()
    (dw64,) = torch.autograd.grad(l64, w64)
    torch.testing.assert_close(loss.double(), l64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dw.double(), dw64, rtol=1e-3, atol=1e-3)


def test_module_matches_reference():
    torch.manual_seed(0)
    m = vkernels.nn.ModulatedConv2d(3, 4, 3, w_dim=8, up=2, resolution=8).double()
    with torch.no_grad():
        m.noise_strength.fill_(0.3)
        m.bias.normal_()
    x, w = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    y = m(x, w, noise_mode="const")
    s = m.styles(w)
    yr = reference(x, m.weight, s, up=2, padding=1, resample_filter=m.resample_filter, flip_weight=False,
                   noise=m.noise_const, noise_strength=m.noise_strength, bias=m.bias, act="lrelu")
    torch.testing.assert_close(y, yr)
    assert "w_dim=8" in repr(m)
    rgb = vkernels.nn.ModulatedConv2d(4, 3, 1, w_dim=8, demodulate=False, act="linear", use_noise=False).double()
    assert rgb(y, w).shape == (2, 3, 8, 8)


def test_bad_input():
    x, weight, styles, noise, ns, bias = make("cpu", torch.float32)
    mc = vkernels.modulated_conv2d
    with pytest.raises(ValueError, match="weight must have shape"):
        mc(x, weight[0], styles)
    with pytest.raises(ValueError, match=r"weight.shape\[1\]"):
        mc(x, weight[:, :2], styles)
    with pytest.raises(ValueError, match="styles must have shape"):
        mc(x, weight, styles[:, :2])
    with pytest.raises(ValueError, match="x must have shape"):
        mc(x[0], weight, styles)
    with pytest.raises(ValueError, match="noise must have shape"):
        mc(x, weight, styles, noise=noise[:, :, :3])
    with pytest.raises(ValueError, match="noise must have shape"):
        mc(x, weight, styles, noise=noise.repeat(1, 2, 1, 1))
    with pytest.raises(ValueError, match="act must be one of"):
        mc(x, weight, styles, act="gelu2")
    with pytest.raises(TypeError, match="x must be float16"):
        mc(x.int(), weight, styles)
    with pytest.raises(TypeError, match="styles.dtype"):
        mc(x, weight, styles.double())
    with pytest.raises(ValueError, match="bias must have shape"):
        mc(x, weight, styles, bias=bias[:2])
    with pytest.raises(ValueError, match="up must be"):
        mc(x, weight, styles, up=0)
    with pytest.raises(ValueError, match="resample_filter"):
        mc(x, weight, styles, up=2, resample_filter=torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="clamp"):
        mc(x, weight, styles, clamp=-1.0)
    with pytest.raises(ValueError, match="weight is on meta"):
        mc(x, weight.to("meta"), styles)
    with pytest.raises(RuntimeError, match="noise must have shape"):
        torch.ops.vkernels.modulated_conv2d_epilogue(x, None, noise[:, :, :2], None, None, "lrelu", 0.2, 1.0, None)
    with pytest.raises(RuntimeError, match="act must be one of"):
        torch.ops.vkernels.modulated_conv2d_epilogue(x, None, None, None, None, "nope", 0.2, 1.0, None)
    with pytest.raises(RuntimeError, match="styles must have shape"):
        torch.ops.vkernels.modulated_conv2d_weight(weight, styles[:, :1], True, True)


@pytest.mark.parametrize("shape", [(2, 64, 128, 256), (2, 64, 127, 129)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_epilogue_cpu_large(shape, dtype):
    # Large planes, 32-byte aligned (128x256) or not (127x129), fp32 and the vectorised bf16 path, forward and
    # backward, against the epilogue written in torch ops (fp32 math).
    n, o, h, w = shape
    x, g = randn(shape, dtype, "cpu") * 8, randn(shape, dtype, "cpu")
    d, noise, b = randn((n, o), dtype, "cpu").abs() + 0.5, randn((n, 1, h, w), dtype, "cpu"), randn((o,), dtype, "cpu")
    ns = torch.tensor(0.3)
    args = ("lrelu", 0.2, math.sqrt(2), 20.0)
    y = torch.ops.vkernels.modulated_conv2d_epilogue(x, d, noise, ns, b, *args)
    dz = torch.ops.vkernels.modulated_conv2d_epilogue_backward(g, x, d, noise, ns, b, *args)
    z = x.float() * d.float()[:, :, None, None] + noise.float() * 0.3 + b.float()[:, None, None]
    ref = torch.nn.functional.leaky_relu(z, 0.2) * math.sqrt(2)
    kept = ref.abs() <= 20.0
    ref_dz = torch.where(kept, g.float() * math.sqrt(2) * torch.where(z > 0, 1.0, 0.2), 0.0)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y.float(), ref.clamp(-20, 20), **tol)
    # Elements within rounding of the clamp boundary may go either way in bf16: compare the rest.
    safe = (ref.abs() - 20.0).abs() > 0.5
    torch.testing.assert_close(dz.float()[safe], ref_dz[safe], **tol)


# ---- second-order gradients (helper gan-models): the epilogue's backward op is differentiable, as StyleGAN2's
# path-length penalty needs through G.
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("fused,act,up,const_noise", [(True, "lrelu", 1, False), (False, "tanh", 1, True),
                                                      (True, "swish", 2, False), (False, "lrelu", 2, False)])
def test_gradgradcheck(device, impl, fused, act, up, const_noise):
    if impl == "triton" and device == "cpu":
        pytest.skip("Triton interpreter: too slow for gradgradcheck (a GPU runs it)")
    x, weight, styles, noise, ns, bias = make(device, torch.float64, N=2, I=2, O=2, H=3, W=3, up=up)
    if const_noise:
        noise = noise[:1]
    ns = ns.double()

    def fn(x, weight, styles, noise, ns, bias):
        return vkernels.modulated_conv2d(x, weight, styles, up=up, noise=noise, noise_strength=ns, bias=bias,
                                         act=act, clamp=1.5, fused_modconv=fused, impl=impl)

    args = tuple(t.detach().requires_grad_() for t in (x, weight, styles, noise, ns, bias))
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_path_length_penalty_matches_reference(device, impl):
    """StyleGAN2's path-length term: |d<G(w), y>/dw|^2 differentiated w.r.t. the weights, kernels vs reference."""
    if impl == "triton" and device == "cpu":
        pytest.skip("Triton interpreter: too slow")
    torch.manual_seed(0)
    m = vkernels.nn.ModulatedConv2d(3, 4, 3, w_dim=6, up=2, clamp=2.0, resolution=8, impl=impl).to(device)
    with torch.no_grad():
        m.noise_strength.fill_(0.3)
        m.bias.normal_()
    x, w = torch.randn(2, 3, 4, 4, device=device), torch.randn(2, 6, device=device)
    out = []
    for i in (impl, "reference"):
        m.impl = i
        m.zero_grad()
        wl = w.clone().requires_grad_()
        img = m(x, wl, noise_mode="const")
        y = torch.randn(img.shape, generator=torch.Generator().manual_seed(3)).to(device)
        (gw,) = torch.autograd.grad((img * y).sum(), wl, create_graph=True)
        gw.square().sum().backward()
        out.append([p.grad.clone() for p in (m.weight, m.bias, m.noise_strength)])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert out[0][0].abs().sum() > 0


# ---- second order through the Triton epilogue in the interpreter (helper flrelu-roof): the GPU-only gradgradcheck
# above is skipped on CPU; at these tiny sizes the interpreter runs it in seconds, so the Triton variant's double
# backward (its backward op's own autograd, _epi_bwd_grads) is checked here too, and an R1-style penalty is compared
# with the reference's.
@pytest.mark.parametrize("fused,act,up,clamp", [(True, "lrelu", 1, 1.5), (False, "swish", 2, None)])
def test_gradgradcheck_triton_interpreter(fused, act, up, clamp):
    if "triton" not in vkernels.available_impls(OP, "cpu"):
        pytest.skip("no Triton (interpreter) variant on CPU")
    x, weight, styles, noise, ns, bias = make("cpu", torch.float64, N=1, I=2, O=2, H=4 - up, W=4 - up, up=up)
    ns = ns.double()

    def fn(x, weight, styles, noise, ns, bias):
        return vkernels.modulated_conv2d(x, weight, styles, up=up, noise=noise, noise_strength=ns, bias=bias,
                                         act=act, clamp=clamp, fused_modconv=fused, impl="triton")

    args = tuple(t.detach().requires_grad_() for t in (x, weight, styles, noise, ns, bias))
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


@pytest.mark.parametrize("fused,act", [(True, "lrelu"), (False, "lrelu"), (True, "swish")])
def test_r1_double_backward_triton_interpreter_matches_reference(fused, act):
    """R1-style: |d sum(y * r) / dx|^2 differentiated w.r.t. every parameter, impl="triton" vs the reference (fp64).
    lrelu (act'' = 0: only the linear paths) and swish (act'' != 0: the backward op's own gradient w.r.t. z)."""
    if "triton" not in vkernels.available_impls(OP, "cpu"):
        pytest.skip("no Triton (interpreter) variant on CPU")
    x, weight, styles, noise, ns, bias = make("cpu", torch.float64, N=2, I=3, O=4, H=5, W=5, up=2)
    r = torch.randn((2, 4, 10, 10), dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = []
    for impl in ("triton", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, styles, noise, ns, bias)]
        kw = {"impl": impl} if impl != "reference" else {"padding": 1}
        fn = vkernels.modulated_conv2d if impl != "reference" else reference
        y = fn(leaves[0], leaves[1], leaves[2], up=2, resample_filter=F_1331, noise=leaves[3],
               noise_strength=leaves[4], bias=leaves[5], act=act, clamp=1.0, fused_modconv=fused, **kw)
        (gx,) = torch.autograd.grad((y * r).sum(), leaves[0], create_graph=True)
        pen = gx.square().sum()
        out.append([pen.detach()] + list(torch.autograd.grad(pen, leaves[1:], allow_unused=True,
                                                             materialize_grads=True)))
    for name, a, b in zip(("penalty", "weight", "styles", "noise", "ns", "bias"), *out):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
    assert out[0][1].abs().sum() > 0
    if act != "lrelu":  # the noise only reaches d(penalty) through act''(z)
        assert out[0][3].abs().sum() > 0


@pytest.mark.parametrize("fused_modconv", [True, False])
@pytest.mark.parametrize("up", [1, 2])
def test_empty_batch_reference_matches_kernels(fused_modconv, up):
    """N = 0: the reference used to fail (reshape with -1 of 0 elements; grouped conv with groups=0)."""
    x, w, s = torch.randn(0, 3, 5, 4), torch.randn(2, 3, 3, 3), torch.randn(0, 3)
    shapes = {impl: vkernels.modulated_conv2d(x, w, s, up=up, fused_modconv=fused_modconv, bias=torch.randn(2),
                                              impl=impl).shape
              for impl in ["reference"] + vkernels.available_impls("modulated_conv2d_epilogue", "cpu")}
    assert set(shapes.values()) == {torch.Size([0, 2, 5 * up, 4 * up])}, shapes


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: the weight kernel (demodulate x fused) and the epilogue (activation,
    noise, clamp, bias), forward + backward per dtype; up / down run upfirdn2d's kernels through the same op."""
    from _common import static_grads

    def case(dtype, demod, fused, act, noise, clamp, up=1, down=1):
        def run():
            x, weight, styles, nz, ns, bias = make("cpu", dtype, up=up, down=down, noise=noise)
            leaves = [t.requires_grad_() if t is not None else None for t in (x, weight, styles, nz, ns, bias)]
            y = vkernels.modulated_conv2d(leaves[0], leaves[1], leaves[2], demodulate=demod, up=up, down=down,
                                          fused_modconv=fused, noise=leaves[3],
                                          noise_strength=leaves[4] if noise else None, bias=leaves[5], act=act,
                                          clamp=clamp, impl="triton")
            static_grads(y, leaves, order=1)
        return f"demod={demod} fused={fused} act={act} noise={noise} clamp={clamp} up={up} down={down} {dtype}", run

    out = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for demod, fused in itertools.product((True, False), (True, False)):
            out.append(case(dtype, demod, fused, "lrelu", True, None))
        acts = ("linear", "relu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish") if full else ("linear", "selu")
        out += [case(dtype, True, True, act, False, 0.5) for act in acts]
        out += [case(dtype, True, True, "lrelu", True, 256.0, up=2), case(dtype, True, False, "lrelu", False, None,
                                                                          down=2)]
    return out
