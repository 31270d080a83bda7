"""bias_act: every implementation against the reference; gradients; opcheck; torch.compile; bad input."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vkernels
from vkernels.reference.bias_act import ACTIVATIONS
from vkernels.reference.bias_act import bias_act as reference
from conftest import DEVICES
from _common import INPLACE_ERROR, check_close, check_inplace_on_output, impl_params
from _common import randn as _randn

ACTS = list(ACTIVATIONS)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
IMPLS = impl_params("bias_act")


def randn(shape, dtype, device, scale=2.0):
    return _randn(shape, dtype, device, scale)


# (shape, dim, has_bias, memory layout)
CASES = [
    ((4, 19, 5, 7), 1, True, "contiguous"),
    ((3, 16, 8, 8), 1, True, "channels_last"),
    ((2, 5, 3, 9), 1, True, "sliced"),
    ((6, 33), -1, True, "contiguous"),
    ((6, 33), 0, True, "transposed"),
    ((5, 7, 11), 2, False, "contiguous"),
    ((1000,), 0, True, "contiguous"),
    ((2, 3, 2, 40), 3, True, "channels_last"),  # dim innermost in memory order for some layouts, not others
    ((0, 4, 3), 1, True, "contiguous"),
    ((2, 0, 3), 1, True, "contiguous"),
]


def make_x(shape, layout, dtype, device):
    if layout == "sliced":  # non-dense: every other element of a larger tensor
        big = randn(shape[:-1] + (shape[-1] * 2,), dtype, device)
        return big[..., ::2]
    x = randn(shape, dtype, device)
    if layout == "channels_last":
        return x.to(memory_format=torch.channels_last)
    if layout == "transposed":
        return x.t().contiguous().t()
    return x


def run_case(device, impl, dtype, act, shape, dim, has_bias, layout, clamp, grads=True):
    x = make_x(shape, layout, dtype, device)
    b = randn((shape[dim],), dtype, device) if has_bias else None
    alpha = 0.3 if act == "lrelu" else None
    xs = [x.detach().clone().requires_grad_(grads)]
    bs = [None if b is None else b.detach().clone().requires_grad_(grads)]
    y = vkernels.bias_act(xs[0], bs[0], dim, act, alpha, None, clamp, impl=impl)
    x64 = x.detach().double().cpu().requires_grad_(grads)
    b64 = None if b is None else b.detach().double().cpu().requires_grad_(grads)
    y64 = reference(x64, b64, dim, act, alpha, None, clamp)
    xl = x.detach().clone().requires_grad_(grads)
    bl = None if b is None else b.detach().clone().requires_grad_(grads)
    yl = reference(xl, bl, dim, act, alpha, None, clamp)
    check_close(y, yl, y64, dtype, "y")
    if x.is_contiguous(memory_format=torch.channels_last) and x.ndim == 4 and x.numel():
        assert y.stride() == x.stride(), "dense layouts are kept"
    if not grads or x.numel() == 0 and b is None:
        return
    dy = randn(shape, dtype, device)
    gx, *gb = torch.autograd.grad(y, [xs[0]] + ([bs[0]] if b is not None else []), dy)
    gx64, *gb64 = torch.autograd.grad(y64, [x64] + ([b64] if b is not None else []), dy.double().cpu())
    gxl, *gbl = torch.autograd.grad(yl, [xl] + ([bl] if b is not None else []), dy)
    check_close(gx, gxl, gx64, dtype, "dx")
    if b is not None:
        # db sums over many elements: its error scales with that count in every precision.
        check_close(gb[0], gbl[0], gb64[0], dtype, "db")


@pytest.mark.ci_cover("dtype", "act")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_matches_reference_all_acts(device, impl, dtype, act):
    for clamp in (None, 1.5):
        run_case(device, impl, dtype, act, (3, 13, 6, 5), 1, True, "contiguous", clamp)


@pytest.mark.ci_cover("dtype", "case", "act")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-d{c[1]}-{c[3]}-{'b' if c[2] else 'nob'}")
@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish"])
def test_shapes_and_layouts(device, impl, dtype, case, act):
    shape, dim, has_bias, layout = case
    run_case(device, impl, dtype, act, shape, dim, has_bias, layout, clamp=2.0)


# In the interpreter: every act with the clamp (lrelu's x-ref path included), the unclamped path through lrelu.
@pytest.mark.full_only(lambda p: p["clamp"] is None and p["act"] != "lrelu")
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_gradcheck_and_gradgradcheck(device, impl, act, clamp):
    x = randn((3, 4, 5), torch.float64, device).requires_grad_()
    b = randn((4,), torch.float64, device).requires_grad_()
    alpha = -0.3 if act == "lrelu" and clamp else None  # a negative slope takes the x-ref backward path

    def f(x, b):
        return vkernels.bias_act(x, b, 1, act, alpha, 1.7, clamp, impl=impl)

    torch.autograd.gradcheck(f, (x, b))
    torch.autograd.gradgradcheck(f, (x, b))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_third_order_is_refused(device, impl):
    x = randn((2, 3), torch.float64, device).requires_grad_()
    y = vkernels.bias_act(x, act="tanh", impl=impl)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="second order"):
        torch.autograd.grad(gg.sum(), x)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_r1_penalty_matches_reference(device, impl):
    """R1 (gradient penalty through a conv + bias_act) needs double backward through the op."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).double().to(device)
    bias = torch.randn(8, dtype=torch.float64, device=device, requires_grad=True)
    img = torch.randn(4, 3, 6, 6, dtype=torch.float64, device=device)

    def penalty(which):
        x = img.clone().requires_grad_()
        h = conv(x)
        kw = dict(act="lrelu", clamp=3.0)
        y = vkernels.bias_act(h, bias, **kw, impl=which) if which else reference(h, bias, **kw)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        r1 = gx.square().sum()
        return r1, torch.autograd.grad(r1, [bias, conv.weight])

    r1, grads = penalty(impl)
    r1_ref, grads_ref = penalty(None)
    torch.testing.assert_close(r1, r1_ref)
    for g, gr in zip(grads, grads_ref):
        torch.testing.assert_close(g, gr)


# What NVlabs' bias_act (torch_utils/ops/bias_act.py, its CUDA path) keeps for backward: "y" = the output.
NVLABS_SAVES = {"linear": "", "relu": "y", "lrelu": "y", "tanh": "y", "sigmoid": "y", "elu": "y", "selu": "y",
                "softplus": "y", "swish": "x"}
# PyTorch's composite (our reference, NVlabs' impl='ref') ends in an op that keeps its result only for these
# activations, when no gain multiply and no clamp follow (then the result is the output).
TORCH_KEEPS_RESULT = {"relu", "tanh", "sigmoid"}


@pytest.mark.parametrize("device,impl", IMPLS + [pytest.param("cpu", "reference", id="cpu-reference")])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 0.9])
def test_inplace_add_on_output(device, impl, act, clamp):
    """StyleGAN's `y.add_(x)` on a bias_act output, then backward and double backward: raises autograd's error
    exactly where NVlabs' op keeps y (where PyTorch's composite does, for the reference), else matches the
    reference doing the same."""
    x = randn((2, 3, 4), torch.float64, device)
    b = randn((3,), torch.float64, device)
    if impl == "reference":
        error = act in TORCH_KEEPS_RESULT and ACTIVATIONS[act][2] == 1 and clamp is None
    else:
        error = NVLABS_SAVES[act] == "y"
    check_inplace_on_output(lambda x, b: vkernels.bias_act(x, b, 1, act, clamp=clamp, impl=impl),
                            lambda x, b: reference(x, b, 1, act, clamp=clamp), (x, b), double=True, error=error)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_clamp_keeps_y_read_only(device, impl, dtype):
    """With a clamp in fp16/bf16 backward computes from x (exact mask) but y stays read-only, as with NVlabs."""
    x = randn((2, 3, 4), dtype, device).requires_grad_()
    y = vkernels.bias_act(x * 1, None, 1, "lrelu", clamp=0.8, impl=impl)
    y.add_(1)
    with pytest.raises(RuntimeError, match=INPLACE_ERROR):
        y.sum().backward()


@pytest.mark.parametrize("device,impl", IMPLS)
def test_stylegan_skip_add_then_r1(device, impl):
    """NVlabs' resnet blocks: `y = skip(x, gain=sqrt(.5))` (linear bias_act, no bias, no clamp) then `y.add_(h)`;
    the R1 penalty through it (create_graph) equals the reference's."""
    x = randn((2, 3, 4, 4), torch.float64, device)
    b = randn((3,), torch.float64, device)

    def block(impl):
        def f(x, b):
            y = vkernels.bias_act(x, None, 1, "linear", gain=math.sqrt(0.5), impl=impl) if impl else \
                reference(x, None, 1, "linear", gain=math.sqrt(0.5))
            h = vkernels.bias_act(x, b, 1, "lrelu", impl=impl) if impl else reference(x, b, 1, "lrelu")
            return y.add_(h)
        return f

    check_inplace_on_output(block(impl), block(None), (x, b), double=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize("device,impl", IMPLS)
def test_property_random_shapes_strides(device, impl, data):
    ndim = data.draw(st.integers(1, 4), label="ndim")
    shape = tuple(data.draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim), label="shape"))
    dim = data.draw(st.integers(-ndim, ndim - 1), label="dim")
    perm = data.draw(st.permutations(range(ndim)), label="perm")
    step = data.draw(st.integers(1, 2), label="step")
    act = data.draw(st.sampled_from(ACTS), label="act")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    clamp = data.draw(st.one_of(st.none(), st.floats(0.1, 4.0)), label="clamp")
    gain = data.draw(st.one_of(st.none(), st.floats(-3.0, 3.0)), label="gain")
    with_bias = data.draw(st.booleans(), label="bias")
    # Build x with a permuted storage order and, with step 2, a non-dense view.
    base_shape = [shape[p] for p in perm]
    base_shape[-1] *= step
    base = randn(tuple(base_shape), dtype, device)
    if step == 2:
        base = base[..., ::2]
    x = base.permute(*[perm.index(i) for i in range(ndim)])
    assert x.shape == shape
    b = randn((shape[dim],), dtype, device) if with_bias else None
    y = vkernels.bias_act(x, b, dim, act, None, gain, clamp, impl=impl)
    y64 = reference(x.double().cpu(), None if b is None else b.double().cpu(), dim, act, None, gain, clamp)
    yl = reference(x, b, dim, act, None, gain, clamp)
    check_close(y, yl, y64, dtype)


def _samples(device, dtype=torch.float32):
    x = randn((2, 5, 3, 4), dtype, device)
    b = randn((5,), dtype, device)
    return [
        ((x, b, 1, "lrelu", 0.2, math.sqrt(2), 1.0), True),
        ((x.to(memory_format=torch.channels_last), b, 1, "tanh", 0.0, 1.0, None), True),
        ((x, None, 1, "swish", 0.0, 2.0, None), True),
        ((x[:, :, :, ::2], b, 1, "elu", 0.0, 1.0, 0.5), True),
        ((randn((0, 5), dtype, device), b, 1, "relu", 0.0, 1.0, None), False),
    ]


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    fwd = torch.ops.vkernels.bias_act_triton if impl == "triton" else torch.ops.vkernels.bias_act
    grad = torch.ops.vkernels.bias_act_grad_triton if impl == "triton" else torch.ops.vkernels.bias_act_grad
    for args, req_grad in _samples(device):
        args = tuple(a.clone().requires_grad_(req_grad) if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(fwd.default, args)
        x, b, dim, act, alpha, gain, clamp = args
        y = fwd(x.detach(), b, dim, act, alpha, gain, clamp)
        g = torch.randn_like(y).requires_grad_(req_grad)
        ref_is_y = act != "swish"
        ref = (y if ref_is_y else x).detach().requires_grad_(req_grad)
        torch.library.opcheck(grad.default, (g, ref, b, dim, act, alpha, gain, clamp, ref_is_y, 1))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_torch_compile_fullgraph(device, impl):
    torch._dynamo.reset()

    def f(x, b):
        h = vkernels.bias_act(x * 2, b, act="lrelu", clamp=4.0, impl=impl)
        return vkernels.bias_act(h, None, act="sigmoid", impl=impl).sum(dim=(2, 3))

    x = randn((2, 6, 5, 5), torch.float32, device).requires_grad_()
    b = randn((6,), torch.float32, device).requires_grad_()
    y = torch.compile(f, fullgraph=True, dynamic=False)(x, b)
    y_eager = f(x, b)
    torch.testing.assert_close(y, y_eager)
    g = torch.autograd.grad(y.sum(), [x, b])
    g_eager = torch.autograd.grad(y_eager.sum(), [x, b])
    for a, e in zip(g, g_eager):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device):
    x = randn((2, 4, 3), torch.float32, device)
    b = randn((4,), torch.float32, device)
    cases = [
        (dict(x=x.to(torch.int32)), TypeError, "x must be float"),
        (dict(x=x, b=b, dim=3), IndexError, "dim must be"),
        (dict(x=x, b=b, dim=-4), IndexError, "dim must be"),
        (dict(x=x, b=b[:3]), ValueError, r"b must have shape \(4,\)"),
        (dict(x=x, b=b[None]), ValueError, "b must have shape"),
        (dict(x=x, b=b.double()), TypeError, "b.dtype"),
        (dict(x=x, b=b, act="gelu"), ValueError, "act must be one of"),
        (dict(x=x, b=b, clamp=-1.0), ValueError, "clamp must be"),
        (dict(x=x, b=b, gain=float("nan")), ValueError, "gain must be"),
        (dict(x=x, impl="tpu"), ValueError, "impl must be"),
    ]
    if device == "cpu":
        cases.append((dict(x=x, impl="cuda"), RuntimeError, "impl='cuda' is not available"))
    if torch.cuda.is_available():
        other = "cpu" if device == "cuda" else "cuda"
        cases.append((dict(x=x, b=b.to(other)), ValueError, "b is on"))
    for kwargs, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            vkernels.bias_act(**kwargs)


def test_cpp_op_checks_its_own_arguments():
    """Direct torch.ops calls (bypassing the Python checks) still get named errors, never a crash."""
    x = torch.randn(2, 4, 3)
    op = torch.ops.vkernels.bias_act
    with pytest.raises(RuntimeError, match=r"b must have shape \[4\]"):
        op(x, torch.randn(3), 1, "linear", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="dim must be in"):
        op(x, torch.randn(4), 5, "linear", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="act must be one of"):
        op(x, None, 1, "gelu", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="x must be float16"):
        op(x.long(), None, 1, "linear", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="grad has shape"):
        torch.ops.vkernels.bias_act_grad(x[:1], x, None, 1, "tanh", 0.0, 1.0, None, True, 1)
    with pytest.raises(RuntimeError, match="swish needs ref_is_y=False"):
        torch.ops.vkernels.bias_act_grad(x, x, None, 1, "swish", 0.0, 1.0, None, True, 1)


def test_defaults_follow_stylegan():
    x = torch.randn(3, 4, 5)
    b = torch.randn(4)
    torch.testing.assert_close(vkernels.bias_act(x, b, act="lrelu"),
                               torch.nn.functional.leaky_relu(x + b[:, None], 0.2) * math.sqrt(2))
    torch.testing.assert_close(vkernels.bias_act(x, act="relu"), torch.relu(x) * math.sqrt(2))
    torch.testing.assert_close(vkernels.bias_act(x, act="tanh"), torch.tanh(x))
    torch.testing.assert_close(vkernels.bias_act(x), x)


def test_nan_propagates():
    x = torch.tensor([float("nan"), 1.0, -1.0])
    for act in ACTS:
        y = vkernels.bias_act(x, act=act, clamp=0.5)
        assert y[0].isnan(), act


@pytest.mark.parametrize("device,impl", IMPLS)
def test_module(device, impl):
    m = vkernels.nn.BiasAct(6, act="lrelu", clamp=2.0, bias_init=0.1, impl=impl).to(device)
    x = randn((2, 6, 4, 4), torch.float32, device)
    torch.testing.assert_close(m(x), reference(x, m.bias.detach(), 1, "lrelu", None, None, 2.0))
    m(x).sum().backward()
    assert m.bias.grad is not None and m.bias.grad.shape == (6,)
    m2 = vkernels.nn.BiasAct(6, act="lrelu", clamp=2.0, impl=impl).to(device)
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(m2(x), m(x))
    assert "act='lrelu'" in repr(m)


def test_forcing_an_impl(monkeypatch):
    x = torch.randn(4, 3)
    assert vkernels.resolve_impl("bias_act", x) == "cpu"
    vkernels.set_impl("reference")
    try:
        assert vkernels.resolve_impl("bias_act", x) == "reference"
        assert vkernels.resolve_impl("bias_act", x, "cpu") == "cpu"  # an explicit impl= wins
    finally:
        vkernels.set_impl("auto")
    with pytest.raises(ValueError, match="impl must be"):
        vkernels.set_impl("gpu")


@pytest.mark.large
@pytest.mark.parametrize("device", DEVICES)
def test_past_int32_elements(device):
    """2**31 + 37 elements: channel and offset arithmetic must be 64-bit."""
    C = 37
    rows = (2**31) // C + 2
    x = torch.empty((rows, C), dtype=torch.bfloat16, device=device)
    tail = randn((3, C), torch.bfloat16, device)
    x[-3:] = tail
    x[:3] = tail
    b = randn((C,), torch.bfloat16, device)
    assert x.numel() > 2**31
    impl = "cuda" if device == "cuda" else "cpu"
    y = vkernels.bias_act(x, b, dim=1, act="lrelu", impl=impl)
    expect = reference(tail.float(), b.float(), 1, "lrelu").to(torch.bfloat16)
    torch.testing.assert_close(y[-3:], expect)
    torch.testing.assert_close(y[:3], expect)
    del y
    xt = x.t()  # dim 0 of the transposed view is innermost in memory
    y = vkernels.bias_act(xt, b, dim=0, act="lrelu", impl=impl)
    torch.testing.assert_close(y.t()[-3:], expect)


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: every activation x clamp x bias branch per dtype, forward, backward
    (saving y or x) and double backward, with impl="triton"."""
    from _common import static_grads

    def case(dtype, act, clamp, bias, alpha=None):
        def run():
            x = torch.randn(2, 8, 3, 5, dtype=dtype, requires_grad=True)
            b = torch.randn(8, dtype=dtype, requires_grad=True) if bias else None
            y = vkernels.bias_act(x, b, act=act, alpha=alpha, clamp=clamp, impl="triton")
            static_grads(y, (x, b), order=2)
        return f"{act} alpha={alpha} clamp={clamp} bias={bias} {dtype}", run

    out = []
    for dtype in DTYPES:
        for act in ACTS:
            out += [case(dtype, act, None, True), case(dtype, act, 1.0, True)]
        out += [case(dtype, "lrelu", None, False), case(dtype, "lrelu", None, True, alpha=-0.2)]
    return out
