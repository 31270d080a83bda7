"""spade_norm_act: every backend against F.batch_norm / F.instance_norm -> * (1 + gamma) + beta -> activation."""
import importlib

import pytest
import torch

import vkernels
from vkernels.reference.spade_norm_act import spade_norm_act as reference
from _common import check_close, cpu_peak_bytes, impl_params, randn

IMPLS = impl_params("spade_norm_act")
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def maps(shape, dtype, device):
    return randn(shape, dtype, device) * 0.5, randn(shape, dtype, device) * 0.5


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("norm", ["batch", "instance"])
@pytest.mark.parametrize("act", ["lrelu", "tanh", "linear"])
def test_forward_matches_reference(device, impl, norm, act):
    for i, dtype in enumerate(DTYPES):
        shape = (3, 5, 7, 6)
        x = randn(shape, dtype, device) + 0.7
        g, b = maps(shape, dtype, device)
        clamp = 1.5 if i == 1 else None
        rdt = torch.float64 if dtype == torch.float64 else torch.float32
        rm, rv = torch.rand(5, device=device), torch.rand(5, device=device) + 0.5
        outs, runs = [], []
        for which in ("ours", "lowp", "oracle"):
            cast = (lambda t: t.double()) if which == "oracle" else (lambda t: t)
            run = {}
            if norm == "batch":
                d = torch.float64 if which == "oracle" else rdt
                run = dict(running_mean=rm.clone().to(d), running_var=rv.clone().to(d))
            args = (cast(x), cast(g), cast(b), norm)
            kw = dict(act=act, gain=1.3, clamp=clamp, **run)
            outs.append(vkernels.spade_norm_act(*args, **kw, impl=impl) if which == "ours" else reference(*args, **kw))
            runs.append(run)
        check_close(outs[0], outs[1], outs[2], dtype, f"{norm}/{act}/{dtype}")
        if norm == "batch":
            for k in ("running_mean", "running_var"):
                torch.testing.assert_close(runs[0][k].double(), runs[2][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_layouts_eval_and_empty(device, impl, norm):
    x = torch.randn(2, 4, 5, 6, device=device)
    g, b = maps(x.shape, torch.float32, device)
    run = dict(running_mean=torch.randn(4, device=device), running_var=torch.rand(4, device=device) + 0.5) \
        if norm == "batch" else {}
    training = norm != "batch"
    ref = reference(x, g, b, norm, **{k: v.clone() for k, v in run.items()}, training=training, act="selu")
    cl = x.contiguous(memory_format=torch.channels_last)
    for xx, gg, bb in ((cl, g, b), (x, g.contiguous(memory_format=torch.channels_last), b.transpose(2, 3).contiguous()
                                    .transpose(2, 3)), (torch.stack([x, x], 4).flatten(3)[..., ::2], g, b)):
        y = vkernels.spade_norm_act(xx, gg, bb, norm, **run, training=training, act="selu", impl=impl)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert vkernels.spade_norm_act(cl, g, b, norm, **run, training=training, impl=impl).is_contiguous(
        memory_format=torch.channels_last)
    e = torch.randn(0, 4, 5, 6, device=device)
    y = vkernels.spade_norm_act(e, e, e, norm, **run, training=training, impl=impl)
    assert y.shape == e.shape


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("norm,act", [("batch", "softplus"), ("instance", "lrelu")])
def test_gradcheck_and_gradgradcheck(device, impl, norm, act):
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    g = (torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device) * 0.5).requires_grad_()
    b = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device, requires_grad=True)

    def f(x, g, b):
        return vkernels.spade_norm_act(x, g, b, norm, act=act, gain=1.2, impl=impl)

    # Triton through the interpreter: one random-projection check (slow mode runs a fused backward per output).
    torch.autograd.gradcheck(f, (x, g, b), fast_mode=device == "cpu" and impl == "triton")
    if impl != "triton" or device == "cuda":
        # Double backward is the same Python composite for every impl; gradgradcheck's ~700 forwards are too slow
        # through the Triton interpreter.
        torch.autograd.gradgradcheck(f, (x, g, b))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_opcheck(device, impl):
    op = torch.ops.vkernels.spade_norm_act_triton if impl == "triton" else torch.ops.vkernels.spade_norm_act
    x = torch.randn(2, 3, 4, 5, device=device, requires_grad=True)
    g, b = (t.requires_grad_() for t in maps(x.shape, torch.float32, device))
    m = torch.randn(2, 3, device=device, requires_grad=True)
    r = (torch.rand(2, 3, device=device) + 0.5).requires_grad_()
    torch.library.opcheck(op, (x, m, r, g, b, "lrelu", 0.2, 1.0, None))
    torch.library.opcheck(op, (x.detach().contiguous(memory_format=torch.channels_last), m, r, g, b, "tanh", 0.2,
                               2.0, 0.7))


@pytest.mark.parametrize("device,impl", IMPLS)
def test_compile_fullgraph_and_module(device, impl):
    torch._dynamo.reset()
    torch.manual_seed(0)
    mod = vkernels.nn.SPADE(4, 3, hidden=8, act="lrelu", impl=impl).to(device)
    x = torch.randn(2, 4, 6, 6, device=device, requires_grad=True)
    seg = torch.randn(2, 3, 3, 3, device=device)

    def f(x, seg):
        return mod(x, seg).square().sum()

    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(x, seg)
    gx, gw = torch.autograd.grad(loss, [x, mod.mlp_gamma.weight])
    # the same layer in plain PyTorch (NVlabs/SPADE's forward)
    segr = torch.nn.functional.interpolate(seg, size=x.shape[2:], mode="nearest")
    h = mod.mlp_shared(segr)
    y = reference(x, mod.mlp_gamma(h), mod.mlp_beta(h), "batch", act="lrelu")
    rx, rw = torch.autograd.grad(y.square().sum(), [x, mod.mlp_gamma.weight])
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-4)
    assert int(mod.num_batches_tracked) == 1


@pytest.mark.parametrize("device,impl", IMPLS)
def test_bad_input(device, impl):
    x = torch.randn(2, 3, 4, 4, device=device)
    g, b = maps(x.shape, torch.float32, device)
    f = vkernels.spade_norm_act

    def raises(exc, match, *a, **k):
        with pytest.raises(exc, match=match):
            f(*a, **k, impl=impl)

    raises(ValueError, "gamma must have x's shape", x, g[:, :, :2], b)
    raises(TypeError, "beta.dtype", x, g, b.double())
    raises(ValueError, "norm must be one of", x, g, b, norm="adain")
    raises(ValueError, "act must be one of", x, g, b, act="mish")
    raises(ValueError, "training=False needs running_mean", x, g, b, training=False)
    raises(ValueError, "only used by norm='batch'", x, g, b, norm="instance", running_mean=torch.zeros(3),
           running_var=torch.ones(3))
    raises(TypeError, "x must be float16", x.int(), g, b)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_vector_paths_odd_sizes(layout):
    """The C++ kernel's at::vec loop and its scalar tail: C and H*W not multiples of the vector step."""
    for dtype in DTYPES:
        for shape in ((2, 19, 3, 7), (1, 33, 5, 5), (2, 3, 1, 1)):
            x = randn(shape, dtype, "cpu") + 0.7
            g, b = maps(shape, dtype, "cpu")
            if layout == "channels_last":
                x, g, b = (t.contiguous(memory_format=torch.channels_last) for t in (x, g, b))
            outs = []
            for which in ("ours", "lowp", "oracle"):
                cast = (lambda t: t.double()) if which == "oracle" else (lambda t: t)
                args = (cast(x), cast(g), cast(b), "instance" if shape[0] == 1 else "batch")
                kw = dict(act="swish", gain=1.1)
                outs.append(vkernels.spade_norm_act(*args, **kw, impl="cpu") if which == "ours"
                            else reference(*args, **kw))
            check_close(outs[0], outs[1], outs[2], dtype, f"{layout}/{shape}/{dtype}")


# --------------------------------------------------------------------------------------------------------------------
# fused backward op (spade_norm_act_backward) vs the differentiable composite
# --------------------------------------------------------------------------------------------------------------------
from vkernels.ops.spade_norm_act import backward_composite  # noqa: E402


def _bwd_op(impl):
    return getattr(torch.ops.vkernels, "spade_norm_act_backward" + ("_triton" if impl == "triton" else ""))


def _bwd_inputs(shape, dtype, device):
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    N, C = shape[:2]
    x = randn(shape, dtype, device) + 0.5
    g, b = maps(shape, dtype, device)
    m = randn((N, C), ct, device) * 0.3 + 0.5
    r = randn((N, C), ct, device) * 0.3 + 1
    return randn(shape, dtype, device), x, m, r, g, b


@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish"])
def test_backward_op_matches_composite(device, impl, act):
    op = _bwd_op(impl)
    for i, dtype in enumerate(DTYPES):
        dy, x, m, r, g, b = _bwd_inputs((2, 3, 5, 7), dtype, device)
        cl = (lambda t: t.contiguous(memory_format=torch.channels_last)) if i % 2 else (lambda t: t)
        args = (act, 0.2, 1.3, 0.9 if i == 1 else None)
        ours = op(cl(dy), cl(x), m, r, g.transpose(2, 3).contiguous().transpose(2, 3), cl(b), *args, [True] * 5)
        lowp = backward_composite(dy, x, m, r, g, b, *args, [True] * 5)
        orac = backward_composite(*(t.double() for t in (dy, x, m, r, g, b)), *args, [True] * 5)
        for k, (o, lp, orc) in enumerate(zip(ours, lowp, orac)):
            check_close(o, lp, orc, o.dtype, f"{act}/{dtype} output {k}")


@pytest.mark.parametrize("device,impl", [p for p in IMPLS if p.values == ("cpu", "triton")])
def test_triton_backward_int64_branch_small_blocks(device, impl, monkeypatch):
    """The Triton backward with its INT64 branch forced on small tensors (otherwise only tensors past 2^31 elements
    reach it) and 16-element blocks (a block spans rows of the 5 x 7 planes), against the composite."""
    from vkernels.triton import spade_norm_act as kernels
    monkeypatch.setattr(kernels, "plane_block", lambda t, n, fp64_bilinear=False: 16)
    monkeypatch.setattr(kernels, "image_int64", lambda *tensors: True)
    op = _bwd_op(impl)
    dy, x, m, r, g, b = _bwd_inputs((1, 2, 5, 7), torch.float32, device)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    args = ("tanh", 0.2, 1.3, 0.9)
    ours = op(cl(dy), x, m, r, g, cl(b), *args, [True] * 5)
    lowp = backward_composite(dy, x, m, r, g, b, *args, [True] * 5)
    orac = backward_composite(*(t.double() for t in (dy, x, m, r, g, b)), *args, [True] * 5)
    for k, (o, lp, orc) in enumerate(zip(ours, lowp, orac)):
        check_close(o, lp, orc, o.dtype, f"output {k}")


@pytest.mark.parametrize("device,impl", IMPLS)
def test_backward_op_masks_empty_opcheck(device, impl):
    op = _bwd_op(impl)
    dy, x, m, r, g, b = _bwd_inputs((2, 3, 4, 5), torch.float32, device)
    args = ("lrelu", 0.2, 1.0, None)
    full = op(dy, x, m, r, g, b, *args, [True] * 5)
    again = op(dy, x, m, r, g, b, *args, [True] * 5)
    assert all(torch.equal(u, v) for u, v in zip(full, again))  # deterministic
    for mask in ([True, False, False, False, False], [False, True, True, False, True], [False] * 3 + [True] * 2):
        for k, (p, f) in enumerate(zip(op(dy, x, m, r, g, b, *args, mask), full)):
            assert torch.equal(p, f) if mask[k] else p.numel() == 0, (mask, k)
    e = _bwd_inputs((0, 3, 4, 5), torch.float32, device)
    dx, dm, dr, dg, db = op(*e, *args, [True] * 5)
    assert dx.shape == dg.shape == (0, 3, 4, 5) and dm.shape == dr.shape == (0, 3)
    with pytest.raises(RuntimeError, match="dy"):
        op(dy[:, :2], x, m, r, g, b, *args, [True] * 5)
    t64 = [t.requires_grad_() for t in _bwd_inputs((2, 3, 3, 4), torch.float64, device)]
    torch.library.opcheck(op, (*t64, "tanh", 0.2, 1.3, None, [True] * 5))
    if impl == "triton" and device == "cpu":
        return  # too slow through the Triton interpreter
    torch.autograd.gradcheck(lambda *t: op(*t, "tanh", 0.2, 1.3, None, [True] * 5), t64)


@pytest.mark.parametrize("device,impl", IMPLS)
def test_backward_compile_fullgraph(device, impl):
    torch._dynamo.reset()
    x = randn((2, 3, 5, 4), torch.float32, device).requires_grad_()
    g, b = (t.requires_grad_() for t in maps((2, 3, 5, 4), torch.float32, device))

    def f(x, g, b):
        return vkernels.spade_norm_act(x, g, b, "instance", act="swish", impl=impl).square().sum()

    ours = torch.autograd.grad(torch.compile(f, fullgraph=True, backend="aot_eager")(x, g, b), (x, g, b))
    ref = torch.autograd.grad(reference(x, g, b, "instance", act="swish").square().sum(), (x, g, b))
    for u, v in zip(ours, ref):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


def test_cpu_large_output():
    # 32 MiB of fp32 output (glibc serves it with a fresh mmap each call; the size where a huge-page allocator was
    # tried and removed), spade and bilinear upsample_norm_act against their references.
    shape = (2, 64, 256, 256)
    x = randn(shape, torch.float32, "cpu") * 2 + 1
    g, b = maps(shape, torch.float32, "cpu")
    out = vkernels.spade_norm_act(x, g, b, "batch", act="lrelu", impl="cpu")
    torch.testing.assert_close(out, reference(x, g, b, "batch", act="lrelu"), rtol=1e-4, atol=1e-4)
    up = vkernels.upsample_norm_act(x[:, :, :128, :128], scale=2, mode="bilinear", norm="instance", impl="cpu")
    ref = vkernels.reference.upsample_norm_act(x[:, :, :128, :128], scale=2, mode="bilinear", norm="instance")
    torch.testing.assert_close(up, ref, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------------------------
# public function's fused first-order backward (statistics' gradient added in place) and its memory
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device,impl", IMPLS)
@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_public_backward_low_precision_shifted(device, impl, norm):
    """Gradients of the public function vs eager PyTorch in the same dtype and an fp64 oracle, on inputs whose mean
    is 4x their spread (the in-place dx += c2 * x + (c1 - c2 * mean) must not lose the small difference)."""
    dtypes = [torch.float32] if impl == "triton" and device == "cpu" else DTYPES
    for i, dtype in enumerate(dtypes):
        shape = (2, 5, 6, 7)
        x = randn(shape, dtype, device) + 4
        g, b = maps(shape, dtype, device)
        dy = randn(shape, dtype, device)
        if i % 2:
            x, g, b, dy = (t.contiguous(memory_format=torch.channels_last) for t in (x, g, b, dy))
        kw = dict(act="lrelu", gain=1.3)

        def grads(fn, cast):
            ts = [cast(t).detach().requires_grad_() for t in (x, g, b)]
            return torch.autograd.grad(fn(*ts, norm, **kw), ts, cast(dy))

        ours = grads(lambda *a, **k: vkernels.spade_norm_act(*a, **k, impl=impl), lambda t: t)
        lowp = grads(reference, lambda t: t)
        orac = grads(reference, lambda t: t.double())
        for k, (o, lp, orc) in enumerate(zip(ours, lowp, orac)):
            check_close(o, lp, orc, dtype, f"{norm}/{dtype} grad {k}")


def test_public_fwd_bwd_peak_memory_cpu():
    """Training batch norm through the public function holds one x-sized dx (torch.compile's batch-norm backward
    does too): y, dy, dx, dgamma, dbeta are the only x-sized tensors alive at the peak (two nodes held 6)."""
    x = randn((2, 16, 32, 32), torch.float32, "cpu")
    g, b = maps(x.shape, torch.float32, "cpu")
    ts = [t.requires_grad_() for t in (x, g, b)]

    def step():
        y = vkernels.spade_norm_act(*ts, "batch", impl="cpu")
        return torch.autograd.grad(y, ts, torch.ones_like(y))
    peak = cpu_peak_bytes(step)
    assert peak < 5.5 * x.nbytes, f"peak {peak / x.nbytes:.2f} x-sized buffers"


# --------------------------------------------------------------------------------------------------------------------
# the fused CPU training forward (spade_norm_act_train): statistics and apply per group in one parallel region
# --------------------------------------------------------------------------------------------------------------------
def _two_op_train(x, g, b, per_sample, eps, *args):
    v = torch.ops.vkernels
    N, C = x.shape[:2]
    mean, var = v.upsample_norm_act_stats(x, 1, "nearest", per_sample)
    rstd = torch.rsqrt(var + eps)
    return v.spade_norm_act(x, mean.expand(N, C), rstd.expand(N, C), g, b, *args), mean, var, rstd


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_fused_train_bits_equal_two_ops(dtype, threads):
    """The fused op gives the two-op path's bits (same sums in the same order, torch.rsqrt's rounding) on its fused
    path (>= 4 groups per thread, NCHW: planes applied in reverse order, odd plane sizes with vector tails) and on
    its two-pass fallbacks (channels_last, too few groups), for any thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # (shape, layout): 30 / 2x13 groups fused; 3 channels (batch) -> fallback; channels_last -> fallback
        cases = [((3, 10, 7, 9), "nchw"), ((2, 13, 17, 5), "nchw"), ((4, 3, 5, 6), "nchw"), ((3, 10, 7, 9), "cl"),
                 ((2, 9, 6, 11), "strided")]
        for shape, layout in cases:
            for per_sample in (False, True):
                x = randn(shape, dtype, "cpu") * 2 + 3
                g, b = maps(shape, dtype, "cpu")
                if layout == "cl":
                    x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
                elif layout == "strided":
                    x = randn(shape[:3] + (2 * shape[3],), dtype, "cpu")[..., ::2]
                args = ("lrelu", 0.2, 1.3, 0.9)
                got = torch.ops.vkernels.spade_norm_act_train(x, g, b, per_sample, 1e-5, *args)
                want = _two_op_train(x, g, b, per_sample, 1e-5, *args)
                for k, (u, v) in enumerate(zip(got, want)):
                    assert u.dtype == v.dtype and u.shape == v.shape and u.stride() == v.stride(), (shape, k)
                    assert torch.equal(u, v), f"{shape} {layout} per_sample={per_sample} output {k}"
    finally:
        torch.set_num_threads(old)


def test_cpu_fused_train_public_path_and_opcheck():
    """The public CPU function runs the fused op (FUSED_TRAIN) and gives the two-op path's bits and running stats."""
    mod = importlib.import_module("vkernels.ops.spade_norm_act")  # the attribute of vkernels.ops is the function
    assert mod.FUSED_TRAIN
    x = randn((4, 12, 9, 10), torch.float32, "cpu") + 2
    g, b = maps(x.shape, torch.float32, "cpu")
    outs = []
    for fused in (True, False):
        rm, rv = torch.zeros(12), torch.ones(12)
        mod.FUSED_TRAIN = fused
        try:
            outs.append((vkernels.spade_norm_act(x, g, b, "batch", rm, rv, impl="cpu"), rm, rv))
        finally:
            mod.FUSED_TRAIN = True
    for u, v in zip(*outs):
        assert torch.equal(u, v)
    torch.testing.assert_close(outs[0][0], reference(x, g, b, "batch"), rtol=1e-5, atol=1e-5)
    op = torch.ops.vkernels.spade_norm_act_train
    torch.library.opcheck(op, (x, g, b, False, 1e-5, "lrelu", 0.2, 1.0, None))
    torch.library.opcheck(op, (x.contiguous(memory_format=torch.channels_last), g, b, True, 1e-3, "tanh", 0.2, 2.0,
                               0.7))
    empty = op(x[:, :, :0], g[:, :, :0], b[:, :, :0], False, 1e-5, "lrelu", 0.2, 1.0, None)
    assert empty[0].shape == (4, 12, 0, 10) and all(t.isnan().all() for t in empty[1:])
    with pytest.raises(RuntimeError, match="eps"):
        op(x, g, b, False, -1.0, "lrelu", 0.2, 1.0, None)
    with pytest.raises(RuntimeError, match="gamma"):
        op(x, g[:1], b, False, 1e-5, "lrelu", 0.2, 1.0, None)


def gpu_static_cases(full):
    """(label, thunk) for tools/gpu_static.py: batch (training / eval) and instance norm, activations with and without
    clamp, channels_last, forward + backward + double backward per dtype."""
    from _common import static_grads

    def case(dtype, norm, training=True, act="lrelu", clamp=None, cl=False, C=6):
        def run():
            x = randn((2, C, 5, 6), dtype, "cpu") + 0.5
            gamma, beta = maps(x.shape, dtype, "cpu")
            if cl:
                x, gamma, beta = (t.to(memory_format=torch.channels_last) for t in (x, gamma, beta))
            leaves = [t.requires_grad_() for t in (x, gamma, beta)]
            kw = dict(running_mean=torch.zeros(C), running_var=torch.ones(C)) if norm == "batch" else {}
            y = vkernels.spade_norm_act(*leaves, norm, training=training, act=act, clamp=clamp, **kw, impl="triton")
            static_grads(y, leaves, order=2)
        return f"norm={norm} training={training} act={act} clamp={clamp} cl={cl} C={C} {dtype}", run

    out = []
    for dtype in DTYPES:
        out += [case(dtype, "batch"), case(dtype, "instance"), case(dtype, "batch", training=False),
                case(dtype, "instance", cl=True), case(dtype, "batch", C=300)]
        acts = ("linear", "relu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish") if full else ("selu", "swish")
        out += [case(dtype, "instance", act=act, clamp=0.5) for act in acts]
    return out
